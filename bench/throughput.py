"""Inference and vit-train's train step beside Hugging Face transformers (PyTorch) and the original code.

One run measures, for each model / dtype / batch size, in paired, order-rotated rounds (medians):
- inference: our default forward (`attention_impl='auto'`: jax.nn.dot_product_attention), the
  original vit_jax formula (`attention_impl='einsum'`, the original's compiled HLO) and
  `transformers.ViTForImageClassification` of the same size, same threads;
- train step: vit-train's own step (`vit_jax.train.make_train_step` with `vit_jax.optim.make_optimizer`:
  SGD momentum 0.9, bfloat16 accumulator, clipping at 1, warm-up + cosine, softmax cross-entropy) and
  the same recipe in PyTorch (SGD momentum 0.9, clip_grad_norm_ 1, the same schedule);
then the FLOPs of the compiled executables (cost analysis, beside the analytic count) and the
model FLOP utilisation against a matmul peak measured in the same run. Prints a table and writes
bench/results/throughput.json.

    python -m bench.throughput                                     # B/16 @ 8; f32 + bf16
    python -m bench.throughput --models Ti_16,S_16,B_16 --batch-sizes 8 --rounds 7
"""

from __future__ import annotations

import argparse
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from bench._util import (
    matmul_peak,
    median_ratio,
    paired_rounds,
    print_table,
    vit_flops,
    vit_train_step,
    write_results,
)
from vit_jax.models import get_config, get_model

NUM_CLASSES = 1000
IMAGE_SIZE = 224


def jax_fns(name: str, dtype, batch: int):
    """(our forward, original-formula forward, our train step, forward FLOPs, train FLOPs)."""
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)), jnp.float32)
    labels = jax.nn.one_hot(np.arange(batch) % NUM_CLASSES, NUM_CLASSES)
    fused = get_model(name, num_classes=NUM_CLASSES, dtype=dtype)
    formula = get_model(name, num_classes=NUM_CLASSES, dtype=dtype, attention_impl='einsum')
    params = jax.jit(lambda: fused.init(jax.random.PRNGKey(0), x[:1], train=False))()['params']
    forwards = {}
    for key, model in (('ours', fused), ('original', formula)):
        apply = jax.jit(lambda p, x, m=model: m.apply({'params': p}, x, train=False))
        compiled = apply.lower(params, x).compile()
        forwards[key] = (lambda c=compiled: c(params, x).block_until_ready(), compiled)
    train_params = jax.tree_util.tree_map(jnp.copy, params)
    step, init_state, _ = vit_train_step(fused, train_params, batch=batch)
    state = init_state(train_params)
    batch_data = {'image': x, 'label': labels}
    train_c = step.lower(state, batch_data).compile()
    holder = {'state': state}

    def run_train():
        holder['state'], out = train_c(holder['state'], batch_data)
        out['loss'].block_until_ready()

    flops = lambda c: c.cost_analysis()['flops'] / batch  # noqa: E731
    return (forwards['ours'][0], forwards['original'][0], run_train, flops(forwards['ours'][1]),
            flops(train_c))


def torch_fns(name: str, dtype: str, batch: int, total_steps: int = 10_000, warmup: int = 100):
    """The same model in transformers (PyTorch), f32 or bf16 autocast, and the same train recipe."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    c = get_config(name)
    config = transformers.ViTConfig(
        hidden_size=c.hidden_size, num_hidden_layers=c.transformer.num_layers,
        num_attention_heads=c.transformer.num_heads, intermediate_size=c.transformer.mlp_dim,
        image_size=IMAGE_SIZE, patch_size=c.patches.size[0], num_labels=NUM_CLASSES,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.ViTForImageClassification(config)
    x = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    labels = torch.arange(batch) % NUM_CLASSES
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def lr_factor(step):   # the original vit_jax schedule: linear warm-up, cosine decay
        progress = min(max((step - warmup) / (total_steps - warmup), 0.0), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress)) * min(1.0, step / warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    autocast = lambda: torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bfloat16')  # noqa: E731

    def run_forward():
        model.eval()
        with torch.inference_mode(), autocast():
            model(pixel_values=x).logits.float().sum().item()

    def run_train():
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()

    return run_forward, run_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', default='B_16')
    parser.add_argument('--batch-sizes', default='8')
    parser.add_argument('--dtypes', default='float32,bfloat16')
    parser.add_argument('--rounds', type=int, default=5, help='paired rounds (order rotated each round)')
    parser.add_argument('--calls', type=int, default=3, help='calls per function per round (median)')
    parser.add_argument('--no-train', action='store_true')
    parser.add_argument('--no-torch', action='store_true')
    args = parser.parse_args()

    # The peak drifts on a shared machine: measured before and after the models, the best counts.
    peaks = {dt: matmul_peak(getattr(jnp, dt)) for dt in args.dtypes.split(',')}
    rows = []
    for short in args.models.split(','):
        name = f'ViT-{short}'
        c = get_config(name)
        analytic = vit_flops(IMAGE_SIZE, c.patches.size[0], c.hidden_size, c.transformer.mlp_dim,
                             c.transformer.num_layers, NUM_CLASSES)
        for dt in args.dtypes.split(','):
            for batch in map(int, args.batch_sizes.split(',')):
                fwd, original, train, fwd_flops, train_flops = jax_fns(name, getattr(jnp, dt), batch)
                inference = {'ours': fwd, 'original': original}
                training = {'ours': train}
                if not args.no_torch:
                    t_fwd, t_train = torch_fns(name, dt, batch)
                    inference['torch'], training['torch'] = t_fwd, t_train
                modes = [('inference', inference, fwd_flops)]
                if not args.no_train:
                    modes.append(('train', training, train_flops))
                for mode, fns, flops in modes:
                    seconds = paired_rounds(fns, rounds=args.rounds, calls=args.calls)
                    ours = float(np.median(seconds['ours']))
                    row = {'model': name, 'dtype': dt, 'batch': batch, 'mode': mode, 'img/s': batch / ours,
                           'GFLOP/img': flops / 1e9,
                           'analytic GFLOP/img': analytic / 1e9 * (3 if mode == 'train' else 1),
                           '_flops': flops * batch / ours, 'rounds': args.rounds}
                    if 'torch' in seconds:
                        row['torch img/s'] = batch / float(np.median(seconds['torch']))
                        row['ours/torch'] = median_ratio(seconds['torch'], seconds['ours'])
                    if 'original' in seconds:
                        row['ours/original'] = median_ratio(seconds['original'], seconds['ours'])
                    rows.append(row)
                    print_table([row], [k for k in row if not k.startswith('_')], )
    peaks = {dt: max(peak, matmul_peak(getattr(jnp, dt))) for dt, peak in peaks.items()}
    print('matmul peak (GFLOP/s), best of before/after:', {k: round(v / 1e9, 1) for k, v in peaks.items()})
    for row in rows:
        row['MFU'] = row.pop('_flops') / peaks[row['dtype']]
    print()
    columns = ['model', 'dtype', 'batch', 'mode', 'img/s', 'torch img/s', 'ours/torch', 'ours/original',
               'GFLOP/img', 'analytic GFLOP/img', 'MFU']
    print_table(rows, columns)
    path = write_results('throughput', rows, matmul_peak_flops=peaks, rounds=args.rounds, calls=args.calls)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
