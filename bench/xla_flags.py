"""Sweeps XLA CPU flags: throughput of the ViT forward pass and of vit-train's step under each.

XLA_FLAGS must be set before JAX starts, so each candidate runs in a child process (compile, warm
up, then time). The candidates run in rounds whose order rotates every round, and each reports its
median ratio to the default over the rounds, so a slow phase of the shared machine falls on every
candidate alike. vit_jax sets no XLA flags of its own unless one wins clearly here.
Writes bench/results/xla_flags.json.

    python -m bench.xla_flags                       # ViT-S/16, batch 8, float32, 3 rounds
    python -m bench.xla_flags --model B_16 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CANDIDATES = {
    'xla default': '',
    'ynnpack off': '--xla_cpu_experimental_ynn_fusion_type=',
    'onednn': '--xla_cpu_use_onednn=true',
    'xnnpack': '--xla_cpu_use_xnnpack=true',
    'memory-aware scheduler': '--xla_cpu_enable_concurrency_optimized_scheduler=false',
    'no eigen threads': '--xla_cpu_multi_thread_eigen=false',
}


def child(model: str, batch: int, dtype: str, min_time: float) -> None:
    import jax.numpy as jnp

    from bench._util import time_call
    from bench.throughput import jax_fns

    forwards, trains, _, _ = jax_fns(f'ViT-{model}', getattr(jnp, dtype), batch)
    print(json.dumps({'inference': batch / time_call(forwards['ours'], min_time=min_time),
                      'train': batch / time_call(trains['ours'], min_time=min_time)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='S_16')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--dtype', default='float32')
    parser.add_argument('--rounds', type=int, default=3, help='rounds (order rotated each round)')
    parser.add_argument('--min-time', type=float, default=3.0)
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.model, args.batch, args.dtype, args.min_time)

    from bench._util import print_table, write_results

    names = list(CANDIDATES)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    errors: dict[str, str] = {}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name in errors:
                continue
            env = {**os.environ, 'XLA_FLAGS': CANDIDATES[name]}
            cmd = [sys.executable, '-m', 'bench.xla_flags', '--child', '--model', args.model,
                   '--batch', str(args.batch), '--dtype', args.dtype, '--min-time', str(args.min_time)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:
                lines = out.stderr.strip().splitlines() or [f'exit status {out.returncode}']
                errors[name] = lines[-1][:80]
            else:
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f'round {r + 1}: {name}: {errors.get(name) or runs[name][-1]}', flush=True)
    rows = []
    base = runs[names[0]]
    for name in names:
        row = {'flags': name, 'XLA_FLAGS': CANDIDATES[name]}
        if name in errors:
            row['error'] = errors[name]
        else:
            for k in ('inference', 'train'):
                row[f'{k} img/s'] = float(np.median([run[k] for run in runs[name]]))
                row[f'{k} vs default'] = float(np.median([run[k] / b[k] for run, b in zip(runs[name], base,
                                                                                              strict=True)]))
        rows.append(row)
    print()
    print_table(rows, ['flags', 'inference img/s', 'inference vs default', 'train img/s', 'train vs default',
                       'error'])
    path = write_results('xla_flags', rows, model=args.model, batch=args.batch, dtype=args.dtype,
                         rounds=args.rounds)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
