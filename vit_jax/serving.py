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

from vit_jax import paths, trees
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
    """Loads a file written by `vit_jax.export` (no model code needed)."""
    try:
        with paths.open_read(path) as f, zipfile.ZipFile(f) as z:
            names = set(z.namelist())
            if MODULE not in names or METADATA not in names:
                raise CheckpointError(f'{path}: not a vit_jax export (no {MODULE} / {METADATA})')
            metadata = json.loads(z.read(METADATA))
            exported = jax.export.deserialize(bytearray(z.read(MODULE)))
            params = None
            if PARAMS in names:
                with np.load(io.BytesIO(z.read(PARAMS)), allow_pickle=False) as f:
                    flat = {k: f[k] for k in f.files}
                    params = jax.tree_util.tree_map(jnp.asarray, trees.unflatten(flat, source=path))
    except zipfile.BadZipFile:
        raise CheckpointError(f'{path}: not a vit_jax export (not a zip file)') from None
    return Served(exported, metadata, params)
