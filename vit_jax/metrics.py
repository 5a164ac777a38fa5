"""Training metrics: TensorBoard events, `metrics.jsonl` and a tqdm progress bar.

Only process 0 writes (the other processes of a multi-host job get a silent writer), so a
pod writes one copy of the logs. Each `metrics.jsonl` line is `{"step": s, "<name>": value, ...}`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import tqdm


class MetricWriter:
    """Writes scalars to TensorBoard (tensorboardX) and JSON lines; drives the progress bar."""

    def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, *,
                 enabled: bool | None = None, progress: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        self._bar = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter  # imported lazily: it pulls in protobuf
        self._tb = SummaryWriter(logdir=workdir, flush_secs=30)
        self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
        if progress:
            self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit='step',
                                  dynamic_ncols=True, smoothing=0.1)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)
        record = {k: v if math.isfinite(v) else str(v) for k, v in values.items()}  # JSON has no NaN
        self._jsonl.write(json.dumps({'step': int(step), **record}) + '\n')
        self._jsonl.flush()

    def progress(self, step: int, postfix: Mapping[str, Any] | None = None) -> None:
        """Moves the bar to `step` and shows `postfix` (e.g. loss, accuracy)."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(step - self._bar.n)

    def log(self, message: str) -> None:
        """Prints a line without breaking the progress bar (process 0 only)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _fmt(v: Any) -> str:
    v = float(np.asarray(v))
    return f'{v:.4g}'


def read_jsonl(path: str) -> list[dict]:
    """The records of a `metrics.jsonl` file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
