"""Shared pieces of the benchmark scripts: timing, the measured matmul peak, result files.

Every script measures everything it reports in one run, so ratios are meaningful on a noisy,
shared machine even when absolute numbers drift.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

RESULTS = Path(__file__).parent / 'results'


def time_call(fn: Callable[[], object], *, min_time: float = 2.0, min_iters: int = 3,
              warmup: int = 1) -> float:
    """Median seconds per call of `fn` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def sgd_train_step(model, tx: optax.GradientTransformation):
    """A plain train step (softmax cross-entropy, `tx` update) as the benchmarks time it."""

    def train_step(params, opt_state, x, labels):
        def loss_fn(p):
            logits = model.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.PRNGKey(0)})
            return optax.softmax_cross_entropy(logits, labels).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def matmul_peak(dtype=jnp.float32, n: int = 2048) -> float:
    """FLOP/s of a square jitted matmul: the practical peak that MFU is measured against."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    seconds = time_call(lambda: f(a, a).block_until_ready(), min_time=1.0)
    return 2 * n**3 / seconds


def vit_flops(image_size: int, patch: int, hidden: int, mlp: int, layers: int,
              num_classes: int) -> float:
    """Analytic forward FLOPs per image (2 per multiply-add; matmuls only)."""
    n = (image_size // patch) ** 2
    t = n + 1
    embed = 2 * n * patch * patch * 3 * hidden
    block = (2 * t * hidden * 3 * hidden + 2 * 2 * t * t * hidden + 2 * t * hidden * hidden
             + 2 * 2 * t * hidden * mlp)
    return embed + layers * block + 2 * hidden * num_classes


def machine() -> dict:
    devices = jax.devices()
    return {
        'date': datetime.date.today().isoformat(),
        'platform': devices[0].platform,
        'device': devices[0].device_kind,
        'num_devices': len(devices),
        'cpu': platform.processor() or platform.machine(),
        'cores': os.cpu_count(),
        'jax': jax.__version__,
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
    }


def write_results(name: str, rows: list[dict], **extra) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f'{name}.json'
    path.write_text(json.dumps({'machine': machine(), **extra, 'rows': rows}, indent=1))
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print('| ' + ' | '.join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + ' |')
    print('|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    for r in rows:
        print('| ' + ' | '.join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True))
              + ' |')


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.3g}' if abs(v) < 100 else f'{v:,.0f}'
    return '' if v is None else str(v)
