"""Inference and vit-train's train step beside Hugging Face transformers (PyTorch) and the original code.

One run measures, for each model / dtype / batch size, in paired, order-rotated rounds (medians):
- inference: our default forward (`attention_impl='auto'`: jax.nn.dot_product_attention), the
  original vit_jax formula (`attention_impl='einsum'`, the original's compiled HLO) and
  `transformers.ViTForImageClassification` of the same size, same threads;
- train step: vit-train's own step (`vit_jax.train.make_train_step` with `vit_jax.optim.make_optimizer`:
  SGD momentum 0.9, bfloat16 accumulator, clipping at 1, warm-up + cosine, softmax cross-entropy) and
  the same recipe in PyTorch (SGD momentum 0.9, clip_grad_norm_ 1, the same schedule);
then the FLOPs of the compiled executables (cost analysis, beside the analytic count), and the
GEMM rates of XLA and PyTorch on this machine, paired, for a 2048² matmul and the model's own three
largest matmuls (q/k/v projection, MLP in, MLP out, at batch x tokens rows): the ceiling each
framework's GEMMs set. MFU is each framework's model FLOP/s over its best GEMM rate.
`--variant FIELD=VALUE` also times our model with one model field changed (a lever, e.g.
remat=True), in the same paired rounds. Prints tables and writes bench/results/throughput.json.

    python -m bench.throughput                                     # B/16 @ 8; f32 + bf16
    python -m bench.throughput --models Ti_16,S_16,B_16 --batch-sizes 8 --rounds 7
    python -m bench.throughput --variant remat=True --no-torch
"""

from __future__ import annotations

import argparse
import ast
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from bench._util import (
    gemm_rates,
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


def jax_fns(name: str, dtype, batch: int, variant: dict | None = None):
    """({'ours', 'original'[, 'variant']} forwards, {'ours'[, 'variant']} train steps, forward FLOPs,
    train FLOPs): our default model, the original formula (`attention_impl='einsum'`), and our
    model with the `variant` fields changed."""
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)), jnp.float32)
    labels = jax.nn.one_hot(np.arange(batch) % NUM_CLASSES, NUM_CLASSES)
    models = {'ours': get_model(name, num_classes=NUM_CLASSES, dtype=dtype),
              'original': get_model(name, num_classes=NUM_CLASSES, dtype=dtype, attention_impl='einsum')}
    if variant:
        models['variant'] = get_model(name, num_classes=NUM_CLASSES, dtype=dtype, **variant)
    params = jax.jit(lambda: models['ours'].init(jax.random.PRNGKey(0), x[:1], train=False))()['params']
    forwards, compiled = {}, {}
    for key, model in models.items():
        apply = jax.jit(lambda p, x, m=model: m.apply({'params': p}, x, train=False))
        compiled[key] = apply.lower(params, x).compile()
        forwards[key] = lambda c=compiled[key]: c(params, x).block_until_ready()
    batch_data = {'image': x, 'label': labels}
    trains = {}
    for key in ('ours', 'variant') if variant else ('ours',):
        train_params = jax.tree_util.tree_map(jnp.copy, params)
        step, init_state, _ = vit_train_step(models[key], train_params, batch=batch)
        holder = {'state': init_state(train_params)}
        compiled[f'{key} train'] = step.lower(holder['state'], batch_data).compile()

        def run_train(c=compiled[f'{key} train'], holder=holder):
            holder['state'], out = c(holder['state'], batch_data)
            out['loss'].block_until_ready()
        trains[key] = run_train

    flops = lambda c: c.cost_analysis()['flops'] / batch  # noqa: E731
    return forwards, trains, flops(compiled['ours']), flops(compiled['ours train'])


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


def tokens(config) -> int:
    """Tokens per image of a ViT config at IMAGE_SIZE: the patches and the class token."""
    return (IMAGE_SIZE // config.patches.size[0]) ** 2 + 1


def gemms_of(name: str, dtype: str, batch: int, torch: bool) -> tuple[list[dict], float, float | None]:
    """(rows, best XLA FLOP/s, best PyTorch FLOP/s or None): the GEMM rates of a 2048² matmul and of
    the model's q/k/v projection, MLP in and MLP out at batch x tokens rows."""
    c = get_config(name)
    m, d, mlp = batch * tokens(c), c.hidden_size, c.transformer.mlp_dim
    rates = gemm_rates([(2048, 2048, 2048), (m, d, 3 * d), (m, d, mlp), (m, mlp, d)], dtype, torch=torch)
    rows = [{'model': name, 'dtype': dtype, 'batch': batch, 'GEMM m x k x n': 'x'.join(map(str, shape)),
             'XLA GFLOP/s': rate['xla'] / 1e9, 'torch GFLOP/s': rate['torch'] / 1e9 if torch else None,
             'XLA/torch': rate['xla'] / rate['torch'] if torch else None} for shape, rate in rates.items()]
    torch_peak = max(r['torch'] for r in rates.values()) if torch else None
    return rows, max(r['xla'] for r in rates.values()), torch_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', default='B_16')
    parser.add_argument('--batch-sizes', default='8')
    parser.add_argument('--dtypes', default='float32,bfloat16')
    parser.add_argument('--rounds', type=int, default=5, help='paired rounds (order rotated each round)')
    parser.add_argument('--calls', type=int, default=3, help='calls per function per round (median)')
    parser.add_argument('--no-train', action='store_true')
    parser.add_argument('--no-torch', action='store_true')
    parser.add_argument('--variant', action='append', default=[], metavar='FIELD=VALUE',
                        help='also time our model with this model field changed (Python literal values)')
    args = parser.parse_args()
    variant = {k: ast.literal_eval(v) for k, v in (item.split('=', 1) for item in args.variant)}

    rows, gemms = [], []
    for short in args.models.split(','):
        name = f'ViT-{short}'
        c = get_config(name)
        analytic = vit_flops(IMAGE_SIZE, c.patches.size[0], c.hidden_size, c.transformer.mlp_dim,
                             c.transformer.num_layers, NUM_CLASSES)
        for dt in args.dtypes.split(','):
            for batch in map(int, args.batch_sizes.split(',')):
                inference, training, fwd_flops, train_flops = jax_fns(name, getattr(jnp, dt), batch, variant)
                if not args.no_torch:
                    t_fwd, t_train = torch_fns(name, dt, batch)
                    inference['torch'], training['torch'] = t_fwd, t_train
                modes = [('inference', inference, fwd_flops)]
                if not args.no_train:
                    modes.append(('train', training, train_flops))
                here = []   # this model / dtype / batch's rows
                for mode, fns, flops in modes:
                    seconds = paired_rounds(fns, rounds=args.rounds, calls=args.calls)
                    ours = float(np.median(seconds['ours']))
                    row = {'model': name, 'dtype': dt, 'batch': batch, 'mode': mode, 'img/s': batch / ours,
                           'GFLOP/img': flops / 1e9,
                           'analytic GFLOP/img': analytic / 1e9 * (3 if mode == 'train' else 1),
                           '_flops': flops * batch / ours, 'rounds': args.rounds}
                    if 'torch' in seconds:
                        row['torch img/s'] = batch / float(np.median(seconds['torch']))
                        row['_torch_flops'] = flops * row['torch img/s']   # the same model FLOPs
                        row['ours/torch'] = median_ratio(seconds['torch'], seconds['ours'])
                    if 'original' in seconds:
                        row['ours/original'] = median_ratio(seconds['original'], seconds['ours'])
                    if 'variant' in seconds:
                        row['variant/ours'] = median_ratio(seconds['ours'], seconds['variant'])
                    here.append(row)
                    print_table([row], [k for k in row if not k.startswith('_')], )
                found, peak, torch_peak = gemms_of(name, dt, batch, torch=not args.no_torch)
                gemms += found
                rows += here
                for row in here:   # each framework's model FLOP/s over its own best GEMM rate
                    row['MFU'] = row.pop('_flops') / peak
                    if '_torch_flops' in row:
                        row['torch MFU'] = row.pop('_torch_flops') / torch_peak
    print()
    print_table(gemms, list(gemms[0]))
    print()
    columns = ['model', 'dtype', 'batch', 'mode', 'img/s', 'torch img/s', 'ours/torch', 'ours/original',
               'variant/ours', 'GFLOP/img', 'analytic GFLOP/img', 'MFU', 'torch MFU']
    print_table(rows, columns)
    path = write_results('throughput', rows, gemms=gemms, variant=args.variant, rounds=args.rounds,
                         calls=args.calls)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
