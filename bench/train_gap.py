"""Where the train step loses to PyTorch on this CPU: one ViT layer's pieces, XLA beside PyTorch.

Times, in paired, order-rotated rounds (medians), for one ViT block's shapes (batch x tokens rows):
- the three GEMMs of a dense layer's training, alone: forward X @ W, input gradient dY @ W^T and
  weight gradient X^T @ dY (the MLP-in shape), jitted XLA beside torch;
- the forward + backward of the MLP (dense, tanh-GELU, dense) and of self-attention (q/k/v
  projection and `jax.nn.dot_product_attention` / `F.scaled_dot_product_attention`), jitted
  `jax.grad` beside `backward()`; and the same with vit_jax's CPU formulation (the models'
  defaults: `dense_dot_general` for every projection, `head_major_attention`).
If XLA's GEMMs keep up with PyTorch's alone but the layers' backward does not, the gap is in what
XLA's CPU backend compiles around the GEMMs, not in the GEMM library. Writes
bench/results/train_gap.json.

    python -m bench.train_gap                       # ViT-B/16 shapes, batch 8
    python -m bench.train_gap --model S_16 --rounds 7
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from bench._util import paired_rounds, print_table, write_results
from bench.throughput import tokens
from bench.xla_dot_layout import lowered_ops
from vit_jax.models import get_config
from vit_jax.models.vit import dense_dot_general, head_major_attention


def main() -> None:
    import torch
    import torch.nn.functional as F  # noqa: N812

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='B_16')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=5, help='paired rounds (order rotated each round)')
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    c = get_config(f'ViT-{args.model}')
    b, t = args.batch, tokens(c)
    d, m, h = c.hidden_size, c.transformer.mlp_dim, c.transformer.num_heads
    rs = np.random.RandomState(0)
    x = rs.normal(size=(b, t, d)).astype(np.float32)
    w1, w2 = rs.normal(0, .02, (d, m)).astype(np.float32), rs.normal(0, .02, (m, d)).astype(np.float32)
    wqkv = rs.normal(0, .02, (d, 3 * d)).astype(np.float32)
    rows_x = rs.normal(size=(b * t, d)).astype(np.float32)     # a dense layer's input and output gradient
    rows_dy = rs.normal(size=(b * t, m)).astype(np.float32)

    def heads(y):
        return y.reshape(b, t, h, d // h)

    def matmul(x, w):
        return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))

    def vit_matmul(x, w):
        return dense_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))

    def mlp(p, x, matmul=matmul):
        return matmul(jax.nn.gelu(matmul(x, p[0])), p[1])

    def attention(p, x, matmul=matmul, core=jax.nn.dot_product_attention):
        q, k, v = jnp.split(matmul(x, p[0]), 3, axis=-1)
        return core(heads(q), heads(k), heads(v)).reshape(b, t, d)

    tx, t1, t2, tq = (torch.tensor(a) for a in (x, w1.T.copy(), w2.T.copy(), wqkv.T.copy()))
    for p in (tx, t1, t2, tq):
        p.requires_grad_(True)

    def torch_mlp():
        (F.linear(F.gelu(F.linear(tx, t1), approximate='tanh'), t2) ** 2).sum().backward()

    def torch_attention():
        q, k, v = F.linear(tx, tq).split(d, dim=-1)
        th = lambda y: y.reshape(b, t, h, d // h).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(th(q), th(k), th(v)).transpose(1, 2).reshape(b, t, d)
        (y ** 2).sum().backward()

    gemms = {'forward X @ W': (lambda a, w: a @ w, lambda a, w: a @ w, rows_x, w1),
             'input grad dY @ W^T': (lambda g, w: g @ w.T, lambda g, w: g @ w.t(), rows_dy, w1),
             'weight grad X^T @ dY': (lambda a, g: a.T @ g, lambda a, g: a.t() @ g, rows_x, rows_dy)}
    fns, flops = {}, {}
    for name, (jf, tf, a1, a2) in gemms.items():
        j1, j2, t1_, t2_ = jnp.asarray(a1), jnp.asarray(a2), torch.tensor(a1), torch.tensor(a2)
        jitted = jax.jit(jf)
        fns[('xla', name)] = lambda f=jitted, j1=j1, j2=j2: f(j1, j2).block_until_ready()
        fns[('torch', name)] = lambda tf=tf, t1_=t1_, t2_=t2_: tf(t1_, t2_)
        flops[name] = 2 * b * t * d * m
    jx, compiled = jnp.asarray(x), {}
    attention_flops = 3 * (2 * b * t * d * 3 * d + 2 * 2 * b * t * t * d)
    for name, f, params, torch_fn, n_flops in (
            ('MLP forward + backward', mlp, (w1, w2), torch_mlp, 3 * 2 * 2 * b * t * d * m),
            ('attention forward + backward', attention, (wqkv,), torch_attention, attention_flops),
            ('MLP forward + backward, vit_jax CPU', lambda p, x: mlp(p, x, vit_matmul), (w1, w2), torch_mlp,
             3 * 2 * 2 * b * t * d * m),
            ('attention forward + backward, vit_jax CPU',
             lambda p, x: attention(p, x, vit_matmul, head_major_attention), (wqkv,), torch_attention,
             attention_flops)):
        params = tuple(map(jnp.asarray, params))
        compiled[name] = jax.jit(jax.grad(lambda p, x, f=f: jnp.sum(f(p, x) ** 2), argnums=(0, 1))).lower(
            params, jx).compile()
        fns[('xla', name)] = lambda g=compiled[name], p=params: jax.block_until_ready(g(p, jx))
        fns[('torch', name)] = torch_fn
        flops[name] = n_flops
    lowered = {name: lowered_ops(compiled[name])
               for name in ('MLP forward + backward', 'MLP forward + backward, vit_jax CPU')}
    print('compiled:', lowered)
    seconds = paired_rounds(fns, rounds=args.rounds, calls=3)
    rows = []
    for name in flops:
        xla, pt = seconds[('xla', name)], seconds[('torch', name)]
        rows.append({'model': f'ViT-{args.model}', 'batch': b, 'op': name,
                     'XLA ms': 1e3 * float(np.median(xla)), 'torch ms': 1e3 * float(np.median(pt)),
                     'XLA GFLOP/s': flops[name] / float(np.median(xla)) / 1e9,
                     'torch GFLOP/s': flops[name] / float(np.median(pt)) / 1e9,
                     'XLA/torch': float(np.median(np.asarray(pt) / np.asarray(xla)))})
    print_table(rows, list(rows[0]))
    print(f"wrote {write_results('train_gap', rows, rounds=args.rounds, compiled_mlp_backward=lowered)}")


if __name__ == '__main__':
    main()
