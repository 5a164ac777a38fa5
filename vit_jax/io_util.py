"""Files and parameter trees without Flax or JAX: flat '/'-joined dicts, atomic writes, remote paths.

Only numpy and the standard library are imported (TensorFlow lazily, for gs:// paths), so that
light readers such as `vit_jax.export.load_exported` can use it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

_REMOTE = re.compile(r'^[a-z][a-z0-9+.-]*://')


def is_remote(path: Any) -> bool:
    """True for URLs such as gs://bucket/x.npz (read and written through tf.io.gfile)."""
    return bool(_REMOTE.match(str(path)))


def flatten(tree: Mapping[str, Any], sep: str = '/') -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x} (any Mapping nests, e.g. Flax FrozenDict)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            for sub, leaf in flatten(value, sep).items():
                out[f'{key}{sep}{sub}'] = leaf
        else:
            out[key] = value
    return out


def unflatten(flat: Mapping[str, Any], sep: str = '/', source: str = 'checkpoint') -> dict[str, Any]:
    """{'a/b': x} -> {'a': {'b': x}} (the original `recover_tree`).

    A key that is both an array and a prefix of other keys is a ValueError naming it and `source`.
    """
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(sep)
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f'{source}: key {key!r} nests below the array {sep.join(parents[:i + 1])!r}')
        if isinstance(node.get(leaf), dict):
            raise ValueError(f'{source}: key {key!r} is an array and also a prefix of other keys')
        node[leaf] = value
    return tree


def read_bytes(path: str) -> bytes:
    """A local file's bytes, or a remote one's (gs://...) via tf.io.gfile or etils.epath."""
    path = os.fspath(path)
    if not is_remote(path):
        with open(path, 'rb') as f:
            return f.read()
    try:
        from tensorflow.io import gfile
        with gfile.GFile(path, 'rb') as f:
            return f.read()
    except ImportError:
        pass
    try:
        from etils import epath
        return epath.Path(path).read_bytes()
    except ImportError:
        raise OSError(f'{path}: reading remote paths needs tensorflow or etils[epath]; download the '
                      'file and pass the local path instead') from None


def write_atomic(path: str, data: bytes | str) -> str:
    """Writes `data` (str as UTF-8) so that `path` is complete or untouched, never half-written.

    Locally: a temporary file in the same directory, then `os.replace`. gs:// and other remote
    paths go through tf.io.gfile (object stores publish an object only once it is closed).
    """
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode('utf-8')
    if is_remote(path):
        from tensorflow.io import gfile
        with gfile.GFile(path, 'wb') as f:
            f.write(data)
        return path
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path), suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
