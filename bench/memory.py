"""vit-train's train-step peak memory with/without remat and scan_layers; compile time with/without
scan.

The step is vit-train's own (`bench._util.vit_train_step`). Peak memory comes from the compiled
executable's memory analysis (arguments + outputs + temporaries − aliased donations), so nothing has
to run; compile time is wall time of `jit(...).lower(...).compile()`. Prints a table and writes
bench/results/memory.json.

    python -m bench.memory                                  # B/16 @ batch 32 memory; L/16 compile time
    python -m bench.memory --memory-model B_16 --batch 32 --compile-model L_16
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from bench._util import print_table, vit_train_step, write_results
from vit_jax.models import get_model

IMAGE_SIZE = 224


def compile_train_step(name: str, batch: int, **model_kwargs):
    """Lowers and compiles vit-train's step on abstract inputs; returns (compiled, seconds)."""
    model = get_model(name, num_classes=1000, **model_kwargs)
    x = jax.ShapeDtypeStruct((batch, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch, 1000), jnp.float32)
    image = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), image, train=False))['params']
    step, init_state, _ = vit_train_step(model, params, batch=batch)
    state = jax.eval_shape(init_state, params)

    start = time.perf_counter()
    compiled = step.lower(state, {'image': x, 'label': labels}).compile()
    return compiled, time.perf_counter() - start


def peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--memory-model', default='B_16')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--compile-model', default='L_16')
    parser.add_argument('--compile-batch', type=int, default=8)
    args = parser.parse_args()

    rows = []
    for remat in (False, True):
        for scan in (False, True):
            compiled, seconds = compile_train_step(f'ViT-{args.memory_model}', args.batch, remat=remat,
                                                   scan_layers=scan)
            rows.append({'what': 'memory', 'model': f'ViT-{args.memory_model}', 'batch': args.batch,
                         'remat': remat, 'scan_layers': scan, 'peak GiB': peak_bytes(compiled) / 2**30,
                         'compile s': seconds})
            print_table(rows[-1:], list(rows[-1]))
    for scan in (False, True):
        compiled, seconds = compile_train_step(f'ViT-{args.compile_model}', args.compile_batch,
                                               scan_layers=scan)
        rows.append({'what': 'compile', 'model': f'ViT-{args.compile_model}', 'batch': args.compile_batch,
                     'remat': False, 'scan_layers': scan, 'peak GiB': peak_bytes(compiled) / 2**30,
                     'compile s': seconds})
        print_table(rows[-1:], list(rows[-1]))

    mem = {(r['remat'], r['scan_layers']): r['peak GiB'] for r in rows if r['what'] == 'memory'}
    comp = {r['scan_layers']: r['compile s'] for r in rows if r['what'] == 'compile'}
    summary = {
        'remat memory reduction (no scan)': 1 - mem[(True, False)] / mem[(False, False)],
        'remat memory reduction (scan)': 1 - mem[(True, True)] / mem[(False, True)],
        'scan compile speed-up': comp[False] / comp[True],
    }
    print()
    print_table(rows, list(rows[0]))
    for k, v in summary.items():
        print(f'{k}: {v:.2f}')
    print(f"wrote {write_results('memory', rows, summary=summary)}")


if __name__ == '__main__':
    main()
