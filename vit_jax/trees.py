"""Parameter trees as flat '/'-joined dicts and back (numpy and the standard library only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vit_jax.errors import CheckpointError


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


def shape(x: Any) -> tuple[int, ...]:
    """Shape of an array, jax array or `jax.ShapeDtypeStruct` (from `jax.eval_shape`)."""
    return tuple(x.shape) if hasattr(x, 'shape') else tuple(np.shape(x))


def unflatten(flat: Mapping[str, Any], sep: str = '/', source: str = 'checkpoint') -> dict[str, Any]:
    """{'a/b': x} -> {'a': {'b': x}} (the original `recover_tree`).

    A key that is both an array and a prefix of other keys is a CheckpointError naming it and `source`.
    """
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(sep)
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f'{source}: key {key!r} nests below the array '
                                      f'{sep.join(parents[:i + 1])!r}')
        if isinstance(node.get(leaf), dict):
            raise CheckpointError(f'{source}: key {key!r} is an array and also a prefix of other keys')
        node[leaf] = value
    return tree
