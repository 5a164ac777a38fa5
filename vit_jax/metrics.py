"""Training metrics: `metrics.jsonl`, TensorBoard events and a tqdm progress bar, local or gs://.

Only process 0 writes (the other processes of a multi-host job get a silent writer), so a pod
writes one copy of the logs. Each `metrics.jsonl` line is `{"step": s, "<name>": value, ...}`.
New rows and events are appended through `vit_jax.paths.append` (at most every `flush_secs`,
and on `flush()`; in a bucket by server-side compose), so a flush costs what it adds, however long
the run. A writer resumed at step s drops the rows past s (they belong to the run that was cut
short; the file is rewritten once) and tells TensorBoard to hide its events past s (`purge_step`).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import tqdm

from vit_jax import paths

METRICS_FILE = 'metrics.jsonl'


class _RecordFile:
    """A TensorBoard event file in a bucket: buffered, the new records appended on flush."""

    def __init__(self, path: str):
        self.path = path
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        if self.buffer.tell():
            paths.append(self.path, self.buffer.getvalue())
            self.buffer = io.BytesIO()

    def close(self) -> None:
        self.flush()


class _RecordFileFactory:
    def open(self, path: str) -> _RecordFile:
        return _RecordFile(path)

    def directory_check(self, path: str) -> None:
        del path   # buckets have no directories to create


def _register_remote_event_files() -> None:
    """tensorboardX writes gs:// event files through vit_jax.paths (so emulators and gcsfs work)."""
    from tensorboardX import record_writer
    record_writer.register_writer_factory('gs', _RecordFileFactory())


def read_jsonl(path: str) -> list[dict]:
    """The records of a `metrics.jsonl` file, in order (a torn last line is dropped)."""
    rows = []
    for line in paths.read_text(path).splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    return rows


class MetricWriter:
    """Writes scalars to `metrics.jsonl` and TensorBoard (tensorboardX); drives the progress bar."""

    def __init__(self, directory: str, total_steps: int, initial_step: int = 0, *,
                 enabled: bool | None = None, progress: bool = True, flush_secs: float = 10.0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = paths.join(directory, METRICS_FILE)
        self._pending: list[dict] = []   # rows not yet in the file
        self._tb = None
        self._bar = None
        self._flush_secs = flush_secs
        self._written = time.monotonic()
        if not self.enabled:
            return
        if paths.exists(self.path):
            rows = read_jsonl(self.path)
            kept = [r for r in rows if int(r.get('step', 0)) <= initial_step]
            if len(kept) != len(rows) or not paths.read_text(self.path).endswith('\n'):
                paths.write_atomic(self.path, ''.join(json.dumps(r) + '\n' for r in kept))
        _register_remote_event_files()
        from tensorboardX import SummaryWriter  # imported lazily: it pulls in protobuf
        self._tb = SummaryWriter(logdir=directory, flush_secs=30,
                                 purge_step=initial_step + 1 if initial_step else None)
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
        self._pending.append({'step': int(step), **record})
        if time.monotonic() - self._written >= self._flush_secs:
            self.flush()

    def flush(self) -> None:
        """Appends the rows written since the last flush (metrics.jsonl) and the pending TensorBoard
        events."""
        if not self.enabled:
            return
        if self._pending:
            paths.append(self.path, ''.join(json.dumps(r) + '\n' for r in self._pending))
            self._pending = []
        self._written = time.monotonic()
        if self._tb is not None:
            self._tb.flush()

    def progress(self, step: int, postfix: Mapping[str, Any] | None = None) -> None:
        """Moves the bar to `step` and shows `postfix` (e.g. loss, accuracy)."""
        if self._bar is None:
            return
        if postfix:
            shown = {k: f'{float(np.asarray(v)):.4g}' for k, v in postfix.items()}
            self._bar.set_postfix(shown, refresh=False)
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
        if self.enabled:
            self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
