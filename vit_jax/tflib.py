"""TensorFlow, for tf.data and image decoding only: imported on first use, quietly, off the GPU.

Importing TensorFlow takes seconds, so no module imports it at load time: `tf` below is a module
object that imports it on first attribute access (a command's `--help` never pays for it). Where
TensorFlow turns oneDNN on (Intel CPUs with AVX-512, or TF_ENABLE_ONEDNN_OPTS=1 anywhere), its C++
start-up writes absl and oneDNN banners straight to file descriptor 2, which TF_CPP_MIN_LOG_LEVEL
does not silence; GPU builds add CUDA factory notices. `load` captures what an import writes to
stderr, drops those known banners (`NOISE`) and passes on anything else. TensorFlow is then kept
off every GPU, which belongs to JAX.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
import threading
import types
from collections.abc import Callable
from typing import TypeVar

from vit_jax.errors import UserError

# One line each, as TensorFlow 2.21 writes them (CPU builds on any x86 CPU; GPU builds).
NOISE = re.compile(
    r'WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$'
    r'|.* port\.cc:\d+\] oneDNN custom operations are on\. '
    r'|.* cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions'
    r'|To enable the following instructions: .*, in other operations, rebuild TensorFlow'
    r'|.* Unable to register cu(DNN|FFT|BLAS) factory: '
    r'|.* computation_placer\.cc:\d+\] computation placer already registered'
    r'|.* TF-TRT Warning: Could not find TensorRT$'
    r'|.* cuda_executor\.cc:\d+\] .*(NUMA node|SysFS)'
    r'|.* All CUDA-capable devices are busy or unavailable|.* failed call to cuInit'
    # XLA compiling for a GPU (vit-plan): a program above the memory is reported by vit-plan itself
    r'|W\d{4} [\d:. ]+\d+ hlo_rematerialization\.cc:\d+\] Can\'t reduce memory use below')

_lock = threading.Lock()
T = TypeVar('T')


def load(name: str = 'tensorflow') -> types.ModuleType:
    """`import name` (tensorflow, tensorflow_datasets, ...) with TensorFlow's start-up banners dropped."""
    if sys.modules.get(name) is not None:
        return sys.modules[name]
    with _lock:
        if name == 'tensorflow' or sys.modules.get('tensorflow') is None:
            try:
                _import_quietly('tensorflow')
            except ModuleNotFoundError as e:
                if e.name != 'tensorflow':
                    raise
                raise UserError('TensorFlow is not installed; vit_jax reads images and data sets with it: '
                                "pip install 'vit_jax[cpu]' (or [cuda12], [cuda13], [tpu]; on Colab it is "
                                'there already)') from None
            tensorflow = sys.modules['tensorflow']
            try:  # tf.data runs on the CPU; the GPU memory is JAX's
                tensorflow.config.set_visible_devices([], 'GPU')
            except RuntimeError:  # already initialised by someone else: leave it as it is
                pass
        return _import_quietly(name)


def _import_quietly(name: str) -> types.ModuleType:
    if sys.modules.get(name) is not None:
        return sys.modules[name]
    return call_quietly(lambda: importlib.import_module(name))


def call_quietly(fn: Callable[[], T]) -> T:
    """`fn()` with the known C++ lines (`NOISE`) it writes to file descriptor 2 dropped, which
    TF_CPP_MIN_LOG_LEVEL does not reach (TensorFlow's import; XLA's GPU compiler in JAX's CUDA
    plugin, which reads the variable when it loads); anything else passes on."""
    if sys.stderr is None:   # no stderr to keep clean (pythonw, a closed stream)
        return fn()
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:   # file descriptor 2 is closed: nothing reaches a terminal anyway
        return fn()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            result = fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode('utf-8', 'replace')
            kept = [line for line in text.splitlines() if line.strip() and not NOISE.match(line)]
            if kept:
                print('\n'.join(kept), file=sys.stderr, flush=True)
    return result


class _Lazy(types.ModuleType):
    """A stand-in for module `name` that imports it (`load`) on first attribute access."""

    def __getattr__(self, attr: str):
        return getattr(load(self.__name__), attr)


tf = _Lazy('tensorflow')


def graph_function(fn: Callable) -> Callable:
    """`fn`, written in TensorFlow graph ops, for `tf.data.Dataset.map` as it is: AutoGraph (which
    rewrites Python control flow, through temporary files) does not convert it or what it calls."""
    return tf.autograph.experimental.do_not_convert(fn)
