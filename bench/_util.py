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
import numpy as np

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


def vit_train_step(model, params, *, batch: int, total_steps: int = 10_000, **overrides):
    """vit-train's own step for `model`: `vit_jax.train.make_train_step` with the optimizer that
    `vit_jax.optim.make_optimizer` builds from the default config (the original recipe: SGD
    momentum 0.9 with a bfloat16 accumulator, global-norm clipping at 1, warm-up + cosine, softmax
    cross-entropy; `overrides` change config fields). Returns (jitted step, init_state, config):
    `init_state(params)` is the step's state (it works under jax.eval_shape too)."""
    from vit_jax import optim, train
    from vit_jax.configs import common

    config = common.get_config().unlock()
    config.update(dict(batch=batch, accum_steps=1, total_steps=total_steps, warmup_steps=100), **overrides)
    tx, lr_fn = optim.make_optimizer(config, params)
    step = jax.jit(train.make_train_step(model, tx, lr_fn, accum_steps=config.accum_steps, loss=config.loss),
                   donate_argnums=0)

    def init_state(params):
        return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(0))
    return step, init_state, config


def paired_rounds(fns: dict[str, Callable[[], object]], *, rounds: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each function, `rounds` times: in every round each function is timed
    (median of `calls` calls) one after the other, the order rotated by one each round, so slow
    phases of a shared machine fall on every function alike. Returns name -> per-round seconds."""
    names = list(fns)
    for fn in fns.values():   # compile and warm up
        fn()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                fns[name]()
                times.append(time.perf_counter() - t)
            out[name].append(float(np.median(times)))
    return out


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow/fast (paired per round): how many times faster `fast` is."""
    return float(np.median(np.asarray(slow) / np.asarray(fast)))


def gemm_rates(shapes: list[tuple[int, int, int]], dtype: str, *, torch: bool = True,
               rounds: int = 3) -> dict[tuple[int, int, int], dict[str, float]]:
    """FLOP/s of [m, k] @ [k, n] matmuls for each (m, k, n) in `shapes`, jitted XLA and (with
    `torch`) PyTorch's `linear` on all cores, in paired, order-rotated rounds
    (medians): the ceiling each framework's GEMMs set on this machine. Returns shape ->
    {'xla': FLOP/s[, 'torch': FLOP/s]}."""
    fns, flops = {}, {}
    matmul = jax.jit(lambda a, b: a @ b)
    if torch:
        import torch as pt
        pt.set_num_threads(os.cpu_count())
    for m, k, n in shapes:
        flops[m, k, n] = 2 * m * k * n
        a, b = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
        fns[('xla', m, k, n)] = lambda a=a, b=b: matmul(a, b).block_until_ready()
        if torch:   # as nn.Linear computes it (torch.mm in bfloat16 takes a reference kernel, ~10x slower)
            ta, tw = pt.ones((m, k), dtype=getattr(pt, dtype)), pt.ones((n, k), dtype=getattr(pt, dtype))
            fns[('torch', m, k, n)] = lambda ta=ta, tw=tw: pt.nn.functional.linear(ta, tw)
    seconds = paired_rounds(fns, rounds=rounds, calls=3)   # which compiles and warms each up first
    rates: dict[tuple[int, int, int], dict[str, float]] = {}
    for (framework, *shape), per_round in seconds.items():
        rates.setdefault(tuple(shape), {})[framework] = flops[tuple(shape)] / float(np.median(per_round))
    return rates


def vit_flops(image_size: int, patch: int, hidden: int, mlp: int, layers: int,
              num_classes: int) -> float:
    """Analytic forward FLOPs per image (2 per multiply-add; matmuls only)."""
    n = (image_size // patch) ** 2
    t = n + 1
    embed = 2 * n * patch * patch * 3 * hidden
    block = (2 * t * hidden * 3 * hidden + 2 * 2 * t * t * hidden + 2 * t * hidden * hidden
             + 2 * 2 * t * hidden * mlp)
    return embed + layers * block + 2 * hidden * num_classes


def cpu_model() -> str:
    """The CPU's model name and whether it has AVX-512 (XLA's CPU code, and so results in the last
    bits, differ by instruction set)."""
    try:
        info = Path('/proc/cpuinfo').read_text()
    except OSError:
        return platform.processor() or platform.machine()
    names = [line.split(':', 1)[1].strip() for line in info.splitlines() if line.startswith('model name')]
    name = names[0] if names else platform.machine()
    return f'{name}, {"with" if " avx512f" in info else "without"} AVX-512'


def machine() -> dict:
    devices = jax.devices()
    return {
        'date': datetime.date.today().isoformat(),
        'platform': devices[0].platform,
        'device': devices[0].device_kind,
        'num_devices': len(devices),
        'cpu': cpu_model(),
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
