"""Serving an exported ViT: `load_exported(path)` reads what `vit-export` wrote, no model code.

The file is a zip of `model.stablehlo` (`jax.export.Exported.serialize()`: the inference
function, images [batch, H, W, 3] in [-1, 1] -> logits, the batch size symbolic), `metadata.json`
(image size, classes, class names, preprocessing, platforms) and, when the parameters are an
argument rather than constants, `params.npz`. Only jax, numpy and vit_jax's file layer are
imported (no Flax, no model code), local or gs:// alike:

    from vit_jax.serving import load_exported
    served = load_exported('vit_b16.vitx')
    logits = served(images)                 # float32 [n, 224, 224, 3] in [-1, 1] -> [n, classes]
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import archives, paths, trees
from vit_jax.errors import CheckpointError, UserError

FORMAT_VERSION = 1
MODULE, PARAMS, METADATA = 'model.stablehlo', 'params.npz', 'metadata.json'


class Served:
    """A loaded export: `served(images) -> logits` (numpy in, numpy out); `.metadata`."""

    def __init__(self, exported: jax.export.Exported, metadata: dict, params: Any | None):
        self.exported, self.metadata, self.params = exported, metadata, params

    def __call__(self, images: Any) -> np.ndarray:
        images = jnp.asarray(images, jnp.float32)
        size = self.metadata.get('image_size')
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise UserError(f'images must be [n, {size}, {size}, 3], got {tuple(images.shape)}')
        args = (images,) if self.params is None else (self.params, images)
        return np.asarray(self.exported.call(*args))


def load_exported(path: str) -> Served:
    """Loads a file written by `vit_jax.export` (no model code needed).

    The archive's sizes are checked before anything is inflated (`vit_jax.archives`), the
    metadata is validated and checked against the module (input size, number of classes, class
    names), params.npz against the module's parameter argument (every name, shape and dtype) and
    for finite values; every failure is one CheckpointError naming the file and the field.
    """
    try:
        with paths.open_read(path) as f, zipfile.ZipFile(f) as z:
            names = set(z.namelist())
            if MODULE not in names or METADATA not in names:
                raise CheckpointError(f'{path}: not a vit_jax export (no {MODULE} / {METADATA})')
            archives.check_zip(z, path)
            metadata = _metadata(z.read(METADATA), path)
            try:
                exported = jax.export.deserialize(bytearray(z.read(MODULE)))
            except Exception as e:  # noqa: BLE001 - flatbuffer/MLIR errors have no common type
                raise CheckpointError(f'{path}: {MODULE} is not a serialized jax.export module '
                                      f'({type(e).__name__}: {e})') from None
            flat = _params(z.read(PARAMS), path) if PARAMS in names else None
    except zipfile.BadZipFile as e:
        raise CheckpointError(f'{path}: not a vit_jax export (not a valid zip file: {e})') from None
    params = _check_consistent(exported, metadata, flat, path)
    return Served(exported, metadata, params)


def _check_consistent(exported: jax.export.Exported, metadata: dict, flat: dict | None, path: str) -> Any:
    """The parameter tree of `flat` once the module, the metadata and the parameters agree."""
    images, *rest = reversed(exported.in_avals)
    size = metadata['image_size']
    if len(images.shape) != 4 or tuple(images.shape[1:]) != (size, size, 3):
        raise CheckpointError(f'{path}: {METADATA} image_size={size}, but {MODULE} takes images '
                              f'{_shape(images.shape)}')
    outputs = exported.out_avals
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise CheckpointError(f'{path}: {MODULE} returns {", ".join(_shape(o.shape) for o in outputs)}, '
                              'not logits [batch, classes]')
    classes = outputs[0].shape[1]
    stated = metadata.get('num_classes')
    if stated is not None and stated != classes:
        raise CheckpointError(f'{path}: {METADATA} num_classes={stated!r}, but {MODULE} gives {classes} '
                              'logits')
    names = metadata.get('class_names')
    if names is not None and len(names) != classes:
        raise CheckpointError(f'{path}: {METADATA} class_names has {len(names)} names for {classes} logits')
    if flat is None:
        if rest:
            raise CheckpointError(f'{path}: {MODULE} takes its parameters as an argument, but the file has '
                                  f'no {PARAMS}')
        return None
    source = f'{path}:{PARAMS}'
    params = trees.unflatten(flat, source=source)
    try:
        tree = jax.tree_util.tree_structure(((params, images), {}))
    except Exception as e:  # noqa: BLE001 - an unflattenable tree
        raise CheckpointError(f'{source}: not a parameter tree ({e})') from None
    if tree != exported.in_tree:
        expected = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)[0]
        wanted = set(trees.flatten(expected[0])) if len(expected) == 2 else set()
        missing, extra = sorted(wanted - set(flat)), sorted(set(flat) - wanted)
        detail = f'missing {missing[0]}' if missing else f'unexpected {extra[0]}' if extra else 'another tree'
        raise CheckpointError(f"{source}: does not match {MODULE}'s parameters ({detail})")
    for (keys, value), aval in zip(jax.tree_util.tree_leaves_with_path(params), exported.in_avals[:-1],
                                   strict=True):
        name = '/'.join(k.key for k in keys)
        if tuple(value.shape) != tuple(aval.shape) or value.dtype != aval.dtype:
            raise CheckpointError(f'{source}: {name} is {value.dtype}{list(value.shape)}, but {MODULE} '
                                  f'takes {aval.dtype}{list(aval.shape)}')
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise CheckpointError(f'{source}: {name} has non-finite values (NaN or inf)')
    return jax.tree_util.tree_map(jnp.asarray, params)


def _shape(shape: tuple) -> str:
    return '[' + ', '.join(str(d) for d in shape) + ']'



def _metadata(data: bytes, path: str) -> dict:
    try:
        metadata = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f'{path}: {METADATA} is not valid JSON ({e})') from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f'{path}: {METADATA} is not a JSON object')
    version = metadata.get('format_version')
    if version != FORMAT_VERSION:
        raise CheckpointError(f'{path}: {METADATA} format_version={version!r}; this vit_jax reads '
                              f'{FORMAT_VERSION}')
    size = metadata.get('image_size')
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CheckpointError(f'{path}: {METADATA} image_size={size!r} is not a positive integer')
    names = metadata.get('class_names')
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise CheckpointError(f'{path}: {METADATA} class_names is not a list of strings')
    classes = metadata.get('num_classes')
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise CheckpointError(f'{path}: {METADATA} num_classes={classes!r} is not a positive integer')
    return metadata


def _params(data: bytes, path: str) -> dict[str, np.ndarray]:
    source = f'{path}:{PARAMS}'
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            archives.check_npz(f.zip, source)   # sizes and headers, before anything is inflated
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        raise CheckpointError(f'{source}: corrupt ({e})') from None
