"""The README's "Planning a TPU run" tables: the paper's setups compiled for TPU slices, and for
NVIDIA GPUs (`--gpu`), by vit-plan.

For each setup and slice, `vit_jax.plan.first_fit` compiles vit-train's step (scan_layers on, to
keep compiles short) and adds remat, fsdp over every chip, then micro-batches until it fits.
Prints a Markdown table and writes bench/results/plan_table.json. Needs libtpu
(`pip install "jax[tpu]==<installed jax>"`; scripts/setup_env.sh installs it with the test extras);
`--gpu` needs JAX's CUDA plugin (setup_env.sh puts it in .venv/jax-cuda-plugin with the test extras)
and writes bench/results/plan_table_gpu.json.

    JAX_PLATFORMS=cpu python -m bench.plan_table                     # every row
    JAX_PLATFORMS=cpu python -m bench.plan_table --only B_16         # rows whose name contains B_16
    JAX_PLATFORMS=cpu PYTHONPATH=.venv/jax-cuda-plugin python -m bench.plan_table --gpu
"""

from __future__ import annotations

import argparse
import time

from bench._util import print_table, write_results
from vit_jax import main as main_lib
from vit_jax import plan as plan_lib

GiB = 2 ** 30

# (setup, vit-train config, slices): pre-training (paper §4.1: batch 4096, 224 px, ImageNet-21k)
# and fine-tuning (App. B.1.1: batch 512, 384 px, accum_steps 8 as the original, ImageNet).
# Slices: the smallest of each generation on which the setup is interesting (a v5e-16 is the
# smallest slice that holds a batch of 4096 at 224 px in 16 GiB chips; v5p chips hold 95 GiB).
SETUPS = [
    ('pre-train ViT-B_16', 'configs/pretrain.py:ViT-B_16,imagenet21k', ['v5e:4x4', 'v4:4x4x4', 'v5p:4x4x4']),
    ('pre-train ViT-L_16', 'configs/pretrain.py:ViT-L_16,imagenet21k', ['v5p:4x4x4']),
    ('pre-train ViT-H_14', 'configs/pretrain.py:ViT-H_14,imagenet21k', ['v5p:4x4x4']),
    ('fine-tune ViT-B_16 384', 'configs/finetune.py:ViT-B_16,imagenet2012', ['v5e:2x2', 'v5p:2x2x1']),
    ('fine-tune ViT-L_16 384', 'configs/finetune.py:ViT-L_16,imagenet2012', ['v5e:2x2', 'v5p:2x2x1']),
    # 384 px is not a multiple of 14: the original's H/14 ignores the last 6 pixels (partial patches)
    ('fine-tune ViT-H_14 384', 'configs/finetune.py:ViT-H_14,imagenet2012 --config.pp.partial_patches=True',
     ['v5p:2x2x1']),
    # last: the ladders that may compile several programs the compiler accepts but the chip cannot hold
    ('pre-train ViT-L_16', 'configs/pretrain.py:ViT-L_16,imagenet21k', ['v5e:4x4']),
    ('pre-train ViT-H_14', 'configs/pretrain.py:ViT-H_14,imagenet21k', ['v5e:4x4']),
]
# The same setups on NVIDIA GPUs: one host of 8 (the DGX/HGX box) and, for H/14, 4 of them.
SETUPS_GPU = [
    ('pre-train ViT-B_16', 'configs/pretrain.py:ViT-B_16,imagenet21k', ['h100:8', 'a100:8']),
    ('pre-train ViT-L_16', 'configs/pretrain.py:ViT-L_16,imagenet21k', ['h100:8']),
    ('pre-train ViT-H_14', 'configs/pretrain.py:ViT-H_14,imagenet21k', ['h100:4x8']),
    ('fine-tune ViT-B_16 384', 'configs/finetune.py:ViT-B_16,imagenet2012', ['h100:1', 'a100:1']),
    ('fine-tune ViT-L_16 384', 'configs/finetune.py:ViT-L_16,imagenet2012', ['h100:8']),
    ('fine-tune ViT-H_14 384', 'configs/finetune.py:ViT-H_14,imagenet2012 --config.pp.partial_patches=True',
     ['h100:8']),
]
COLUMNS = ['setup', 'slice', 'chips', 'fits', 'settings', 'HBM/chip GiB', 'of GiB', 'compile s',
           'step >= ms', 'MFU <= %']


def plan_row(setup: str, spec: str, topology: str) -> dict:
    path, *flags = spec.split()
    config, _ = main_lib.parse(['vit-plan', f'--config={path}', *flags], require_workdir=False)
    num_classes = plan_lib.NUM_CLASSES[str(config.dataset)]
    overrides, plan, last, seconds = plan_lib.first_fit(config, topology, num_classes)
    row = dict(setup=setup, slice=topology, config=spec)
    if plan is None:
        return dict(row, fits='no', settings=f'none tried fits ({last})', **{'compile s': seconds})
    flags = {k: v for k, v in overrides.items() if k != 'model.scan_layers'}
    return dict(row, chips=plan.num_devices, fits='yes',
                settings=' '.join(f'{k}={v}' for k, v in flags.items()) or '(scan_layers only)',
                overrides=plan_lib.as_flags(overrides), **{
                    'HBM/chip GiB': plan.hbm_total / GiB, 'of GiB': plan.chip.usable_bytes / GiB,
                    'compile s': plan.compile_s, 'all compiles s': seconds,
                    'step >= ms': 1e3 * plan.step_time_bound,
                    'MFU <= %': 100 * plan.mfu_bound if plan.mfu_bound else None})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--only', default='', help='rows whose setup or slice contains this text')
    parser.add_argument('--gpu', action='store_true', help='the GPU table (SETUPS_GPU)')
    args = parser.parse_args(argv)
    name = 'plan_table_gpu' if args.gpu else 'plan_table'
    rows = []
    t0 = time.perf_counter()
    for setup, spec, slices in SETUPS_GPU if args.gpu else SETUPS:
        for topology in slices:
            if args.only and args.only not in setup and args.only not in topology:
                continue
            rows.append(plan_row(setup, spec, topology))
            print(f'{setup} on {topology}: {rows[-1]}', flush=True)
            write_results(name, rows, finished=False)   # what is done survives an interruption
    print_table(rows, COLUMNS)
    print(f'total {time.perf_counter() - t0:.0f} s')
    write_results(name, rows, finished=True, total_s=time.perf_counter() - t0)


if __name__ == '__main__':
    main()
