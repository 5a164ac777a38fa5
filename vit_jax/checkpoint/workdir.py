"""The vit-train working directory, local or in a bucket: its layout, one writer, resume, reading.

Layout (every file written through `vit_jax.paths`, so `gs://bucket/run` works like a folder):

  config.json          the resolved config, `dataset_info` (classes, names, sizes) and, once the
                       final parameters are written, `model_npz_step`
  checkpoint_{step}/   Orbax checkpoints (train state and data-iterator position): the latest
                       `keep_checkpoints` and the best by eval accuracy (the original's names)
  model.npz            the final parameters in the public npz format
  metrics.jsonl        one JSON object per logged step; TensorBoard event files beside it
  LOCK                 who writes this workdir: host, PID, heartbeat (JSON)

One writer: `Lock` refuses a second vit-train on the same workdir (naming the holder's host and
PID) and takes over a stale lock (a dead process on this host, or no heartbeat for `STALE_S`
seconds), saying so. `Checkpoints` restores the newest intact checkpoint (a damaged one is
named, moved aside as `damaged_checkpoint_{step}` and the previous one used) and reports
failures of Orbax's background saves as one line naming the path. `load_trained` reads a
workdir for inference without the training code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from vit_jax import paths
from vit_jax.checkpoint import npz
from vit_jax.errors import CheckpointError, UserError
from vit_jax.models import scan_to_blocks

logger = logging.getLogger(__name__)

CONFIG = 'config.json'
MODEL = 'model.npz'
METRICS = 'metrics.jsonl'
LOCK = 'LOCK'
STEP_PREFIX = 'checkpoint'        # checkpoint_{step}, as the original's flax checkpoints
DAMAGED_PREFIX = 'damaged_'
HEARTBEAT_S = 30.0                # the lock holder rewrites its heartbeat this often
STALE_S = 4 * HEARTBEAT_S         # a lock from another host without a heartbeat this long is stale


def file(workdir: str, name: str) -> str:
    """The path of a workdir file (CONFIG, MODEL, METRICS, LOCK)."""
    return paths.join(workdir, name)


def is_workdir(path: str) -> bool:
    """A vit-train workdir: config.json beside model.npz or a checkpoint (an HF folder has neither)."""
    if not paths.is_dir(path) or not paths.exists(file(path, CONFIG)):
        return False
    return paths.exists(file(path, MODEL)) or any(
        n.startswith(STEP_PREFIX + '_') for n in paths.listdir(path))


def ensure_writable(workdir: str) -> None:
    """Creates the workdir; a one-line error naming it when it cannot be written."""
    probe = paths.join(workdir, f'.write_test_{uuid.uuid4().hex[:8]}')
    try:
        paths.makedirs(workdir)
        paths.write_atomic(probe, b'ok')
        paths.remove(probe)
    except OSError as e:
        raise UserError(f'workdir {workdir} is not writable: {e.strerror or e}') from None


def read_config(workdir: str) -> dict:
    """The workdir's config.json as a dict (a one-line error naming the file if unreadable)."""
    path = file(workdir, CONFIG)
    if not paths.exists(path):
        raise CheckpointError(f'{path} not found: is {workdir!r} a vit-train workdir?')
    try:
        config = json.loads(paths.read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(config, dict) or not isinstance(config.get('model'), dict):
        raise CheckpointError(f'{path}: not a vit-train config (no "model" object)')
    return config


def write_config(workdir: str, config: Mapping[str, Any]) -> None:
    paths.write_atomic(file(workdir, CONFIG), json.dumps(config, indent=2))


# --- One writer ------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """The workdir's single-writer lock (a JSON file with host, PID, a token and a heartbeat).

    `acquire()` refuses a live holder with a one-line UserError naming its host and PID, and
    takes over a stale lock (logging a warning that says whose). While held, a daemon thread
    rewrites the heartbeat every HEARTBEAT_S seconds; `lost` turns True if another process took
    the lock over meanwhile. Local locks are created with O_EXCL; in a bucket the lock is
    written, then read back to check that this process holds it.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = file(workdir, LOCK)
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        now = time.time()
        return {'host': socket.gethostname(), 'pid': os.getpid(), 'token': self.token,
                'started': getattr(self, '_started', now), 'heartbeat': now}

    def _read(self) -> dict | None:
        try:
            return json.loads(paths.read_text(self.path))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError, OSError):
            return {}   # unreadable: half-written by a crash; treated as stale

    def _holder_is_live(self, holder: dict) -> tuple[bool, str]:
        host, pid = holder.get('host'), holder.get('pid')
        age = time.time() - float(holder.get('heartbeat') or 0)
        if host == socket.gethostname() and isinstance(pid, int):
            if pid == os.getpid() and holder.get('token') != self.token:
                return False, f'an earlier run of this process (PID {pid})'
            return _pid_alive(pid), f'PID {pid} on this host ({host})'
        return age < STALE_S, f'PID {pid} on host {host} (last heartbeat {age:.0f} s ago)'

    def acquire(self) -> None:
        self._started = time.time()
        holder = self._read()
        if holder is not None:
            live, who = self._holder_is_live(holder) if holder else (False, 'an unreadable lock')
            if live:
                raise UserError(f'workdir {self.workdir} is in use by vit-train {who}: a second writer would '
                                f'corrupt its checkpoints; wait for it to end or stop it (if it is gone, '
                                f'delete {self.path})')
            logger.warning('Taking over the stale lock of %s in %s', who, self.workdir)
            paths.write_atomic(self.path, json.dumps(self._record()))
        elif paths.is_remote(self.path):
            paths.write_atomic(self.path, json.dumps(self._record()))
        else:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:   # another process won the race: report it
                return self.acquire()
            with os.fdopen(fd, 'w') as f:
                f.write(json.dumps(self._record()))
        time.sleep(0.05 if paths.is_remote(self.path) else 0)
        if (self._read() or {}).get('token') != self.token:
            holder = self._read() or {}
            raise UserError(f'workdir {self.workdir} was locked by PID {holder.get("pid")} on host '
                            f'{holder.get("host")} at the same time; only one vit-train may write it')
        self._thread = threading.Thread(target=self._beat, name='vit_jax-workdir-lock', daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = self._read()
            if current is not None and current.get('token') not in (None, self.token):
                self.lost = True
                logger.error('Lost the lock of %s to PID %s on host %s', self.workdir, current.get('pid'),
                             current.get('host'))
                return
            try:
                paths.write_atomic(self.path, json.dumps(self._record()))
            except OSError as e:
                logger.warning('Could not refresh the lock %s: %s', self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self.lost and (self._read() or {}).get('token') == self.token:
            paths.remove(self.path)


# --- Checkpoints -----------------------------------------------------------------------------

def _one_line(e: BaseException) -> str:
    text = ' '.join(str(e).split())
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


class Checkpoints:
    """Orbax checkpoints of a workdir: async saves, the latest `keep` plus the best, safe restore."""

    def __init__(self, workdir: str, keep: int, *, read_only: bool = False):
        from orbax.checkpoint import checkpoint_managers as cm
        self.workdir = workdir
        if read_only:   # save_interval_steps and create as Orbax sets them for read_only, unannounced
            options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False,
                                                   step_prefix=STEP_PREFIX)
        else:
            policy = cm.AnyPreservationPolicy([
                cm.LatestN(n=keep),
                cm.BestN(get_metric_fn=lambda m: m['accuracy'], reverse=False, n=1,
                         keep_checkpoints_without_metrics=False)])
            options = ocp.CheckpointManagerOptions(
                preservation_policy=policy, enable_async_checkpointing=True, create=True,
                step_prefix=STEP_PREFIX, cleanup_tmp_directories=True)
        directory = workdir if paths.is_remote(workdir) else os.path.abspath(workdir)
        absl_logger = logging.getLogger('absl')
        level = absl_logger.level
        if read_only:   # Orbax announces a read-only manager ("Given directory is read only") as a warning
            absl_logger.setLevel(logging.ERROR)
        try:
            self.manager = ocp.CheckpointManager(directory, options=options, item_names=('state', 'data'))
        finally:
            absl_logger.setLevel(level)

    def path(self, step: int) -> str:
        return paths.join(self.workdir, f'{STEP_PREFIX}_{step}')

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """(state, data_state, step) of the newest intact checkpoint, None if there is none.

        A checkpoint that fails to restore is moved aside (`damaged_checkpoint_{step}`) with a
        warning naming it, and the previous one is tried. If every one fails, a CheckpointError
        says why the newest failed (e.g. it does not fit this config).
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        errors: list[tuple[int, BaseException]] = []
        for step in steps:
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - damage shows up as many error types
                errors.append((step, e))
                continue
            for bad, e in errors:
                self._quarantine(bad, e)
            return restored['state'], dict(restored['data'] or {}), step
        if errors:
            step, e = errors[0]
            raise CheckpointError(f'{self.path(step)} cannot be restored ({_one_line(e)[:300]}); if it was '
                                  'written with another model or optimizer config, use a new workdir')
        return None

    def _quarantine(self, step: int, e: BaseException) -> None:
        target = paths.join(self.workdir, f'{DAMAGED_PREFIX}{STEP_PREFIX}_{step}')
        logger.warning('Checkpoint %s is damaged (%s); moved it to %s and resumed from an earlier one',
                       self.path(step), _one_line(e)[:300], target)
        if jax.process_index() == 0:
            paths.rmtree(target)
            paths.path(self.path(step)).rename(paths.path(target))
        self.manager.reload()

    def save(self, step: int, state: Any, data_state: Mapping[str, Any], accuracy: float | None) -> None:
        """Starts an async save of `state` and the data position (waits for the previous one)."""
        self.check()
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            data=ocp.args.JsonSave(dict(data_state))),
                              metrics=None if accuracy is None else {'accuracy': accuracy}, force=True)
        except Exception as e:  # noqa: BLE001 - the previous save's background failure surfaces here
            raise _save_error(self.workdir, e) from None

    def check(self) -> None:
        """Raises a one-line OSError naming the workdir if a background save failed."""
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise _save_error(self.workdir, e) from None

    def wait(self) -> None:
        """Waits for background saves; their failure is a one-line OSError naming the workdir."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise _save_error(self.workdir, e) from None

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception as e:  # noqa: BLE001
            raise _save_error(self.workdir, e) from None


def _save_error(workdir: str, e: BaseException) -> OSError:
    """A failed background save as one OSError naming the workdir and the OS's reason (e.g. a full
    disk), found in the exception chain or in tensorstore's message (`os_error_code='28'`)."""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return OSError(cause.errno, f'saving a checkpoint failed: {cause.strerror}', workdir)
    code = re.search(r"os_error_code='(\d+)'", str(e))
    if code:
        errno = int(code.group(1))
        return OSError(errno, f'saving a checkpoint failed: {os.strerror(errno)}', workdir)
    return OSError(f'{workdir}: saving a checkpoint failed ({_one_line(e)[:300]})')


# --- Reading a workdir for inference ---------------------------------------------------------

def load_trained(workdir: str) -> tuple[dict, Any]:
    """(saved config dict, per-block params) of a workdir, for inference.

    Params come from the newest of `model.npz` (end of training; its step is config.json's
    `model_npz_step`) and the latest checkpoint (a run in progress, preempted, or resumed with
    more `total_steps` after model.npz was written). A checkpoint that a run still writing rotates
    away while it is read is replaced by the then newest one.
    """
    saved = read_config(workdir)
    model_path = file(workdir, MODEL)
    has_npz = paths.exists(model_path)
    has_checkpoint = any(n.startswith(STEP_PREFIX + '_') for n in paths.listdir(workdir))
    if has_checkpoint:
        checkpoints = Checkpoints(workdir, keep=1, read_only=True)
        try:
            params = _latest_params(checkpoints, saved.get('model_npz_step', -1) if has_npz else None)
        finally:
            checkpoints.manager.close()
        if params is not None:
            return saved, _per_block(params)
    if not has_npz:
        raise CheckpointError(f'{workdir!r} has neither {MODEL} nor a {STEP_PREFIX}_<step> directory')
    return saved, _per_block(npz.load(model_path))


def _latest_params(checkpoints: Checkpoints, npz_step: int | None, tries: int = 3) -> Any | None:
    """The params of the newest checkpoint, None if there is none or model.npz (`npz_step`) is as new."""
    for _ in range(tries):
        latest = checkpoints.latest_step()
        if latest is None or (npz_step is not None and npz_step >= latest):
            return None
        try:
            restored = checkpoints.manager.restore(
                latest, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        except Exception as e:  # noqa: BLE001 - damage shows up as many error types
            if paths.exists(checkpoints.path(latest)):
                raise CheckpointError(f'{checkpoints.path(latest)} cannot be restored ({_one_line(e)[:300]})'
                                      ) from None
            checkpoints.manager.reload()   # rotated away by the run writing this workdir: take the newest
            continue
        return jax.tree_util.tree_map(np.asarray, restored['state']['params'])
    raise CheckpointError(f'{checkpoints.workdir}: the run writing it rotated {tries} checkpoints away while '
                          'they were read; try again (or wait for model.npz at the end of the run)')


def _per_block(params: Any) -> dict:
    params = jax.tree_util.tree_map(np.asarray, dict(params))
    if 'encoderblock' in params.get('Transformer', {}):
        params = jax.tree_util.tree_map(np.asarray, scan_to_blocks(params))
    return params
