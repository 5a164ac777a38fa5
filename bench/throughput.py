"""Inference and training throughput of vit_jax beside Hugging Face transformers (PyTorch).

One run measures, for each model / dtype / batch size: images/s of our jitted forward pass
and train step (SGD-momentum, softmax cross-entropy), the FLOPs of the compiled executable
(cost analysis, cross-checked with the analytic count), the model FLOP utilisation against a
matmul peak measured in the same run, and the same numbers for
`transformers.ViTForImageClassification` of the same size with the same threads. Prints a
table and writes bench/results/throughput.json.

    python -m bench.throughput                                   # Ti/16, S/16, B/16; f32 + bf16
    python -m bench.throughput --models B_16 --batch-sizes 8 --dtypes float32
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench._util import matmul_peak, print_table, sgd_train_step, time_call, vit_flops, write_results
from vit_jax.models import get_config, get_model

NUM_CLASSES = 1000
IMAGE_SIZE = 224


def jax_step_fns(name: str, dtype, attention_impl: str, batch: int):
    """Compiled forward and train step for `name` and their FLOPs per image."""
    model = get_model(name, num_classes=NUM_CLASSES, dtype=dtype, attention_impl=attention_impl)
    x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)),
                    jnp.float32)
    labels = jax.nn.one_hot(np.arange(batch) % NUM_CLASSES, NUM_CLASSES)
    params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False))()['params']
    tx = optax.sgd(0.01, momentum=0.9)
    opt_state = tx.init(params)

    forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))

    train = jax.jit(sgd_train_step(model, tx), donate_argnums=(0, 1))
    fwd_c = forward.lower(params, x).compile()
    train_c = train.lower(params, opt_state, x, labels).compile()
    state = {'params': params, 'opt': opt_state}

    def run_forward():
        fwd_c(state['params'], x).block_until_ready()

    def run_train():
        state['params'], state['opt'], loss = train_c(state['params'], state['opt'], x, labels)
        loss.block_until_ready()

    flops = lambda c: c.cost_analysis()['flops'] / batch  # noqa: E731
    return run_forward, run_train, flops(fwd_c), flops(train_c)


def torch_step_fns(name: str, dtype: str, batch: int):
    """The same model in transformers (PyTorch), f32 or bf16 autocast, same threads."""
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
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
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
        opt.step()

    return run_forward, run_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', default='Ti_16,S_16,B_16')
    parser.add_argument('--batch-sizes', default='1,8,32')
    parser.add_argument('--dtypes', default='float32,bfloat16')
    parser.add_argument('--attention', default='xla', help="attention_impl of our model")
    parser.add_argument('--no-train', action='store_true')
    parser.add_argument('--no-torch', action='store_true')
    parser.add_argument('--min-time', type=float, default=3.0, help='seconds per measurement')
    args = parser.parse_args()

    # The peak drifts on a shared machine: measured before and after the models, the best counts.
    peaks = {dt: matmul_peak(getattr(jnp, dt)) for dt in args.dtypes.split(',')}
    print('matmul peak (GFLOP/s):', {k: round(v / 1e9, 1) for k, v in peaks.items()})
    rows = []
    for short in args.models.split(','):
        name = f'ViT-{short}'
        c = get_config(name)
        analytic = vit_flops(IMAGE_SIZE, c.patches.size[0], c.hidden_size, c.transformer.mlp_dim,
                             c.transformer.num_layers, NUM_CLASSES)
        for dt in args.dtypes.split(','):
            for batch in map(int, args.batch_sizes.split(',')):
                fwd, train, fwd_flops, train_flops = jax_step_fns(name, getattr(jnp, dt), args.attention,
                                                                  batch)
                modes = [('inference', fwd, None, fwd_flops)]
                if not args.no_train and batch > 1:
                    modes.append(('train', train, None, train_flops))
                if not args.no_torch:
                    t_fwd, t_train = torch_step_fns(name, dt, batch)
                    modes = [(m, f, {'inference': t_fwd, 'train': t_train}[m], fl) for m, f, _, fl in modes]
                for mode, ours, theirs, flops in modes:
                    sec = time_call(ours, min_time=args.min_time)
                    row = {'model': name, 'dtype': dt, 'batch': batch, 'mode': mode,
                           'img/s': batch / sec, 'GFLOP/img': flops / 1e9,
                           'analytic GFLOP/img': analytic / 1e9 * (3 if mode == 'train' else 1),
                           '_flops': flops * batch / sec}
                    if theirs is not None:
                        t_sec = time_call(theirs, min_time=args.min_time)
                        row['torch img/s'] = batch / t_sec
                        row['ours/torch'] = t_sec / sec
                    rows.append(row)
                    print_table([row], [k for k in row if not k.startswith('_')])
    peaks = {dt: max(peak, matmul_peak(getattr(jnp, dt))) for dt, peak in peaks.items()}
    print('matmul peak (GFLOP/s), best of before/after:', {k: round(v / 1e9, 1) for k, v in peaks.items()})
    for row in rows:
        row['MFU'] = row.pop('_flops') / peaks[row['dtype']]
    print()
    columns = ['model', 'dtype', 'batch', 'mode', 'img/s', 'torch img/s', 'ours/torch', 'GFLOP/img',
               'analytic GFLOP/img', 'MFU']
    print_table(rows, columns)
    path = write_results('throughput', rows, matmul_peak_flops=peaks, attention_impl=args.attention)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
