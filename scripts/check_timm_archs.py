"""Compares vit_jax's table of timm architectures (`timm_archs.TIMM_ARCHS`) with timm's own source.

    python scripts/check_timm_archs.py path/to/timm/models/vision_transformer.py path/to/timm/models/deit.py

Reads each architecture's `model_args` from the @register_model function of that name (embed_dim,
depth, num_heads, patch_size, global_pool, act_layer) and prints every difference; exits 1 on any.
"""

from __future__ import annotations

import re
import sys

from vit_jax.checkpoint.timm_archs import TIMM_ARCHS


def _arg(args: str, key: str, default: str | None = None) -> str | None:
    m = re.search(rf'\b{key}=([\w.\'"]+)', args)
    return m.group(1).strip('\'"') if m else default


def main(files: list[str]) -> int:
    source = ''.join(open(f).read() for f in files)
    problems = 0
    for name, expected in TIMM_ARCHS.items():
        found = re.search(rf'def {name}\(.*?\n(.*?)return model', source, re.S)
        args = found and re.search(r'model_args = dict\((.*?)\)\n', found.group(1), re.S)
        if not args:
            print(f'{name}: no @register_model function with model_args in {files}')
            problems += 1
            continue
        got = (*(int(_arg(args.group(1), k)) for k in ('embed_dim', 'depth', 'num_heads', 'patch_size')),
               _arg(args.group(1), 'global_pool', 'token'), _arg(args.group(1), 'act_layer', 'gelu'))
        if got != expected:
            print(f'{name}: timm has {got}, the table {expected}')
            problems += 1
    print(f'{len(TIMM_ARCHS)} architectures, {problems} differences')
    return int(bool(problems))


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
