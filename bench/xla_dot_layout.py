"""XLA CPU reproducer (upstream-ready): in an MLP's backward the weight-gradient dots go to Eigen
after a transposing copy of the wider operand, which duplicates its fused producer.

`jax.grad` of a dense layer y = x @ w on [batch, tokens, k] activations computes the weight
gradient dW = x^T @ dy, a dot contracting the batch and token axes of x and dy. XLA's CPU backend
(jax 0.10.2) hands a dot to YNNPACK (`__ynn_fusion`) only in the row-major form [m, k] @ [k, n]
(or @ [n, k]). For the weight gradient alone (a) it does that itself: it copies x transposed and
calls YNNPACK, as fast as the explicit form (b). In an MLP (dense, tanh-GELU, dense) it does not
(c): both weight-gradient dots go to Eigen, layout assignment copies the wider operand (the GELU
gradient, [tokens, 4k]) transposed, and that copy is a second fusion recomputing the GELU
gradient in the other layout. Writing the transpose explicitly does not help (the algebraic
simplifier folds it back into the dot); an optimization barrier on the transposed smaller operand
keeps it (d, `vit_jax.models.vit.dense_dot_general`, which the ViT's dense layers use on CPU):
every dot goes to YNNPACK and the MLP's forward + backward is faster.

This script compiles (a)-(d), counts the Eigen dots, YNNPACK fusions and transposing copies in each
executable, checks the results agree, and times them in paired, order-rotated rounds. Writes
bench/results/xla_dot_layout.json.

    python -m bench.xla_dot_layout                       # ViT-B/16's MLP shapes, batch 8
    python -m bench.xla_dot_layout --k 192 --n 768       # ViT-Ti/16's
"""

from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp
import numpy as np

from bench._util import median_ratio, paired_rounds, print_table, write_results
from vit_jax.models.vit import dense_dot_general


def lowered_ops(compiled) -> dict[str, int]:
    """Eigen dots, YNNPACK fusions and transposing copies among the entry computation's instructions."""
    hlo = compiled.as_text()
    entry = hlo[hlo.index('\nENTRY'):]
    return {'Eigen dots': len(re.findall(r'= \S+ dot\(', entry)),
            'YNNPACK fusions': len(re.findall(r'"__ynn_fusion"', entry)),
            'transposing copies': len(re.findall(r'%[\w.]*(?:copy|transpose)[\w.]* = ', entry))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--tokens', type=int, default=197)
    parser.add_argument('--k', type=int, default=768, help='the layer input width')
    parser.add_argument('--n', type=int, default=3072, help='the layer output width')
    parser.add_argument('--rounds', type=int, default=7)
    args = parser.parse_args()
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.normal(size=(args.batch, args.tokens, args.k)), jnp.float32)
    dy = jnp.asarray(rs.normal(size=(args.batch, args.tokens, args.n)), jnp.float32)
    rows_of = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    w1 = jnp.asarray(rs.normal(0, args.k ** -0.5, size=(args.k, args.n)), jnp.float32)
    w2 = jnp.asarray(rs.normal(0, args.n ** -0.5, size=(args.n, args.k)), jnp.float32)
    dense = (((2,), (0,)), ((), ()))

    def mlp_grad(dot_general):
        def mlp(w1, w2, x):
            return dot_general(jax.nn.gelu(dot_general(x, w1, dense)), w2, dense)
        return lambda x, dy: jax.grad(lambda *a: jnp.sum(mlp(*a) ** 2), (0, 1, 2))(w1, w2, x)
    variants = {   # name: (function, its GEMMs: 1, or the MLP's 2 forward + 4 backward)
        'dW: x.T @ dy (as jax.grad)': (lambda x, dy: jnp.einsum('btk,btn->kn', x, dy), 1),
        'dW: barrier(x.T) @ dy': (lambda x, dy: jax.lax.optimization_barrier(rows_of(x).T) @ rows_of(dy), 1),
        'MLP fwd+bwd: lax.dot_general': (mlp_grad(jax.lax.dot_general), 6),
        'MLP fwd+bwd: dense_dot_general': (mlp_grad(dense_dot_general), 6)}
    compiled = {name: jax.jit(f).lower(x, dy).compile() for name, (f, _) in variants.items()}
    seconds = paired_rounds({n: lambda c=c: jax.block_until_ready(c(x, dy)) for n, c in compiled.items()},
                            rounds=args.rounds, calls=3)
    names, m = list(compiled), args.batch * args.tokens
    rows = []
    for i, (name, c) in enumerate(compiled.items()):
        base = names[i - i % 2]   # (a) for (b), (c) for (d)
        got, want = (jax.tree_util.tree_leaves(compiled[n](x, dy)) for n in (name, base))
        rows.append({'m x k x n': f'{m}x{args.k}x{args.n}', 'computes': name, **lowered_ops(c),
                     'ms': 1e3 * float(np.median(seconds[name])),
                     'GFLOP/s': variants[name][1] * 2 * m * args.k * args.n
                     / float(np.median(seconds[name])) / 1e9,
                     'speed-up': median_ratio(seconds[base], seconds[name]),
                     'max rel. diff': max(float(jnp.max(jnp.abs(g - h)) / jnp.max(jnp.abs(h)))
                                          for g, h in zip(got, want, strict=True))})
    print_table(rows, list(rows[0]))
    print(f"wrote {write_results('xla_dot_layout', rows, rounds=args.rounds)}")


if __name__ == '__main__':
    main()
