"""Start-up time of every console script (`<script> --help`), and of vit-predict's first image
(TensorFlow imported, one compile), each in a fresh process as a user runs it. With `--baseline
DIR` (another checkout of vit_jax, e.g. `git worktree add /tmp/old <ref>`) both trees are timed in
paired rounds whose order rotates every round, with this environment's packages, and the table
gives the median ratio per command. Writes bench/results/cli_startup.json.

    python -m bench.cli_startup                          # this checkout, 3 rounds
    python -m bench.cli_startup --baseline /tmp/old --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile

import numpy as np

from bench._util import median_ratio, paired_rounds, write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import sys
sys.path.insert(0, {root!r})
import vit_jax
assert vit_jax.__file__.startswith({root!r}), vit_jax.__file__
sys.argv = {argv!r}
from {module} import {func}
try:
    {func}()
except SystemExit as e:
    assert e.code in (0, None), e.code
"""


def _scripts() -> dict[str, str]:
    """Console script -> 'module:function', as setup.cfg declares them."""
    return {ep.name: ep.value for ep in importlib.metadata.distribution('vit_jax').entry_points
            if ep.group == 'console_scripts'}


def _command(root: str, script: str, target: str, args: list[str]):
    module, func = target.split(':')
    code = _CHILD.format(root=root, argv=[script, *args], module=module, func=func)
    env = dict(os.environ, JAX_PLATFORMS='cpu')

    def run() -> None:
        subprocess.run([sys.executable, '-c', code], check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return run


def _tiny_inputs(work: str) -> list[str]:
    """A one-layer ViT in the public npz format and one PNG: vit-predict's arguments."""
    import jax
    import jax.numpy as jnp
    from PIL import Image

    from vit_jax import checkpoint
    from vit_jax.models import get_model

    model = get_model('testing', num_classes=10)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
    checkpoint.save(params, os.path.join(work, 'tiny.npz'))
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(os.path.join(work, 'image.png'))
    image, weights = os.path.join(work, 'image.png'), os.path.join(work, 'tiny.npz')
    return [image, '--checkpoint', weights, '--image-size', '32']


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--baseline', default=None, metavar='DIR', help='another checkout to compare with')
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args(argv)
    trees = {'this': ROOT, **({'baseline': os.path.abspath(args.baseline)} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as work:
        commands = {f'{s} --help': (s, t, ['--help']) for s, t in sorted(_scripts().items())}
        commands['vit-predict IMAGE'] = ('vit-predict', _scripts()['vit-predict'], _tiny_inputs(work))
        fns = {(tree, name): _command(root, *spec) for name, spec in commands.items()
               for tree, root in trees.items()}
        seconds = paired_rounds(fns, rounds=args.rounds, calls=1)
    rows = []
    ratio_header = '   baseline / this' if args.baseline else ''
    print(f'{"command":<22}' + ''.join(f'{t + " s":>12}' for t in trees) + ratio_header)
    for name in commands:
        row = {'command': name, **{f'{t}_s': float(np.median(seconds[t, name])) for t in trees}}
        if args.baseline:
            row['speedup'] = median_ratio(seconds['baseline', name], seconds['this', name])
        rows.append(row)
        print(f'{name:<22}' + ''.join(f'{row[f"{t}_s"]:>12.2f}' for t in trees)
              + (f'{row["speedup"]:>18.2f}x' if args.baseline else ''))
    print(f'wrote {write_results("cli_startup", rows, rounds=args.rounds, trees=trees)}')


if __name__ == '__main__':
    main()
