"""One Python call from a checkpoint to predictions: `vit_jax.load(source)`.

    import vit_jax
    model = vit_jax.load('ViT-B_16')              # catalogue name, file, workdir, timm/HF dir, gs://...
    model.predict(['cat.jpg', 'dog.png'], k=3)    # per image: [{'label', 'probability', 'index', 'rank'}]
    model.logits(images)                          # [n, classes]; images: paths, PIL images, uint8 arrays
    model.features(images)                        # [n, d] pre-logits representations
    x = model.preprocess(['cat.jpg'])             # float32 [n, S, S, 3] in [-1, 1], what the model sees

`source` is anything the one loader reads (`vit_jax.checkpoint.loader.load_model`), with the same
stated facts as the CLIs (`model=`, `arch=`, `num_heads=`, `pool=`, `image_size=`), or a file of
`vit-export` (`.vitx`, run by `vit_jax.serving` with the preprocessing its metadata records). Images are
prepared by the one preprocessing (`vit_jax.preprocessing`): the model's own image size and eval
crop, (x - 127.5) / 127.5; files are decoded as vit-predict decodes them (same pixels, same
decompression-bomb bound). An array already of shape [n, S, S, 3] and float dtype is taken as
preprocessed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vit_jax import fewshot, images, labels, preprocessing, serving
from vit_jax.checkpoint import loader
from vit_jax.checkpoint.facts import Facts
from vit_jax.errors import CheckpointError, DataError, UserError
from vit_jax.predict import make_predict_fn, top_k
from vit_jax.tflib import tf

EXPORT_SUFFIX = '.vitx'   # vit-export's files


class Model:
    """A classifier (or feature extractor) with its preprocessing and class names: from `load`."""

    def __init__(self, *, source: str, image_size: int, crop_fraction: float | None,
                 class_names: list[str] | None, num_classes: int | None,
                 logits: Callable[[np.ndarray], np.ndarray] | None,
                 features: Callable[[np.ndarray], np.ndarray] | None, max_pixels: int = images.MAX_PIXELS):
        self.source, self.image_size, self.num_classes = source, image_size, num_classes
        self.class_names, self.max_pixels = class_names, max_pixels
        self.pp = preprocessing.for_inference(image_size, crop_fraction)
        self._logits, self._features = logits, features

    def __repr__(self) -> str:
        return (f'vit_jax.Model({self.source!r}, image_size={self.image_size}, '
                f'num_classes={self.num_classes})')

    def preprocess(self, inputs: Any) -> np.ndarray:
        """float32 [n, S, S, 3] in [-1, 1] of image files (local or gs://), PIL images or uint8
        arrays ([H, W], [H, W, 3] or [H, W, 4]); one item or a sequence of them."""
        items = [inputs] if _is_single(inputs) else list(inputs)
        if not items:
            raise DataError('no images given')
        return np.stack([self._one(item) for item in items])

    def _one(self, item: Any) -> np.ndarray:
        if isinstance(item, str | os.PathLike):
            return preprocessing.load_image(os.fspath(item), self.pp, self.max_pixels)
        array = _pixels(item)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or array.dtype != np.uint8:
            raise DataError(f'an image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], got '
                            f'{array.dtype}{list(array.shape)} (files and PIL images are read as such)')
        if array.shape[0] * array.shape[1] > self.max_pixels:
            raise DataError(f'an image array of {array.shape[1]}x{array.shape[0]} pixels is above '
                            f'max_image_pixels={self.max_pixels:,}')
        return preprocessing.eval_image(tf.constant(array), self.pp).numpy()

    def _inputs(self, inputs: Any) -> np.ndarray:
        size = self.image_size
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4 and np.issubdtype(inputs.dtype, np.floating):
            if inputs.shape[1:] != (size, size, 3):
                raise DataError(f'preprocessed images must be [n, {size}, {size}, 3], got '
                                f'{list(inputs.shape)}')
            return inputs.astype(np.float32)
        return self.preprocess(inputs)

    def logits(self, inputs: Any) -> np.ndarray:
        """[n, classes] logits of images (anything `preprocess` takes, or its output)."""
        if self._logits is None:
            raise UserError(f'{self.source}: the checkpoint has no classification head (use features)')
        return self._logits(self._inputs(inputs))

    def features(self, inputs: Any) -> np.ndarray:
        """[n, d] pre-logits representations (what few-shot probes and retrieval use)."""
        if self._features is None:
            raise UserError(f'{self.source}: an exported classifier computes logits only (export the model '
                            'without its head for features)')
        return self._features(self._inputs(inputs))

    def predict(self, inputs: Any, k: int = 5) -> list[list[dict]]:
        """Per image its k most probable classes: {'rank', 'index', 'label', 'probability'}."""
        return top_k(self.logits(inputs), k, self.class_names)


def load(source: str, *, model: str | None = None, arch: str | None = None, num_heads: int | None = None,
         pool: str | None = None, image_size: int | None = None, batch_size: int = 32,
         max_pixels: int = images.MAX_PIXELS) -> Model:
    """The model of `source` (catalogue name, .npz, workdir, timm/HF/big_vision file or directory,
    `vit-export` file; local or gs://), ready for `predict` / `logits` / `features`; `model`, `arch`,
    `num_heads`, `pool`, `image_size` state what a file does not record, as the CLIs' flags."""
    if str(source).endswith(EXPORT_SUFFIX):
        return _from_export(str(source), max_pixels)
    facts = Facts(num_heads=num_heads, pool=pool, arch=arch, image_size=image_size, model_name=model)
    loaded = loader.load_model(source, facts)
    represent = fewshot.make_representation_fn(loaded.model, batch_size)
    return Model(source=loaded.source, image_size=loaded.image_size, crop_fraction=loaded.crop_fraction,
                 class_names=loaded.class_names or labels.default_labels(loaded.num_classes),
                 num_classes=loaded.num_classes,
                 logits=make_predict_fn(loaded, batch_size) if loaded.num_classes else None,
                 features=lambda x: represent(loaded.params, x), max_pixels=max_pixels)


def _from_export(path: str, max_pixels: int) -> Model:
    """A `vit-export` file with the preprocessing and classes its metadata records."""
    served = serving.load_exported(path)
    meta = served.metadata
    crop = (meta.get('preprocessing') or {}).get('crop_fraction')
    valid = crop is None or (isinstance(crop, int | float) and not isinstance(crop, bool) and 0 < crop <= 1)
    if not valid:
        raise CheckpointError(f'{path}: {serving.METADATA} preprocessing.crop_fraction={crop!r} is not in '
                              '(0, 1]')
    headless = meta.get('output') == 'pre-logits features'
    return Model(source=path, image_size=meta['image_size'], crop_fraction=crop,
                 class_names=meta.get('class_names'),
                 num_classes=None if headless else meta.get('num_classes'),
                 logits=None if headless else served, features=served if headless else None,
                 max_pixels=max_pixels)


def _is_single(inputs: Any) -> bool:
    if isinstance(inputs, str | os.PathLike | np.ndarray):
        return not (isinstance(inputs, np.ndarray) and inputs.ndim == 4)
    return not isinstance(inputs, Sequence) and _is_pil(inputs)


def _is_pil(item: Any) -> bool:
    return type(item).__module__.startswith('PIL.')


def _pixels(item: Any) -> np.ndarray:
    if _is_pil(item):
        return np.asarray(item.convert('RGBA' if 'A' in item.getbands() else 'RGB'))
    if isinstance(item, np.ndarray):
        return item
    raise DataError(f'cannot read an image from a {type(item).__name__} (give a path, a PIL image or a '
                    'uint8 array)')


__all__ = ['Model', 'load']
