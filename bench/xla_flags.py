"""Sweeps XLA CPU flags: throughput of the ViT forward pass and train step under each.

XLA_FLAGS must be set before JAX starts, so each candidate runs in a child process. The
winner becomes vit_jax's CPU default (vit_jax/platform.py). Writes bench/results/xla_flags.json.

    python -m bench.xla_flags                       # ViT-S/16, batch 8, float32
    python -m bench.xla_flags --model B_16 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CANDIDATES = {
    'xla default': '',
    'onednn': '--xla_cpu_use_onednn=true',
    'xnnpack': '--xla_cpu_use_xnnpack=true',
    'memory-aware scheduler': '--xla_cpu_enable_concurrency_optimized_scheduler=false',
    'no eigen threads': '--xla_cpu_multi_thread_eigen=false',
}


def child(model: str, batch: int, dtype: str, min_time: float) -> None:
    import jax.numpy as jnp

    from bench._util import time_call
    from bench.throughput import jax_step_fns

    fwd, train, _, _ = jax_step_fns(f'ViT-{model}', getattr(jnp, dtype), 'xla', batch)
    print(json.dumps({'inference img/s': batch / time_call(fwd, min_time=min_time),
                      'train img/s': batch / time_call(train, min_time=min_time)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='S_16')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--dtype', default='float32')
    parser.add_argument('--min-time', type=float, default=3.0)
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.model, args.batch, args.dtype, args.min_time)

    from bench._util import print_table, write_results

    rows = []
    for name, flags in CANDIDATES.items():
        env = {**os.environ, 'XLA_FLAGS': flags, 'VIT_JAX_NO_CPU_DEFAULTS': '1'}
        cmd = [sys.executable, '-m', 'bench.xla_flags', '--child', '--model', args.model,
               '--batch', str(args.batch), '--dtype', args.dtype, '--min-time', str(args.min_time)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            rows.append({'flags': name, 'error': out.stderr.strip().splitlines()[-1][:80]})
        else:
            rows.append({'flags': name, **json.loads(out.stdout.strip().splitlines()[-1])})
        print_table(rows[-1:], list(rows[-1]))
    base = rows[0]
    for r in rows:
        for k in ('inference', 'train'):
            if f'{k} img/s' in r and f'{k} img/s' in base:
                r[f'{k} vs default'] = r[f'{k} img/s'] / base[f'{k} img/s']
    print()
    print_table(rows, ['flags', 'inference img/s', 'inference vs default', 'train img/s', 'train vs default',
                       'error'])
    print(f"wrote {write_results('xla_flags', rows, model=args.model, batch=args.batch, dtype=args.dtype)}")


if __name__ == '__main__':
    main()
