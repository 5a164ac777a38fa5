"""How one image becomes a model input, for training, evaluation and inference alike.

The original vit_jax's preprocessing, in TensorFlow: train "inception" crop (a random box of
5-100 % of the area, aspect 3/4-4/3, no minimum object coverage, bilinear resize to `crop`) and
a random horizontal flip; eval: bilinear resize of the whole image to `crop`; then
(x - 127.5) / 127.5 and one-hot labels. Also a 'random' crop from a `resize`d image and a
'center' eval crop (the digits demo), RandAugment (`vit_jax.augment`) and label smoothing.

`decode` is the one image decoder of vit_jax: every entry point (tf.data pipeline, vit-predict,
vit-analyze, few-shot, zero-shot) feeds it the bytes of `vit_jax.images.encoded_bytes`, so a
file gives the same model input wherever it is read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from vit_jax import augment, config_util, images
from vit_jax.errors import ConfigError, DataError
from vit_jax.tflib import tf

TRAIN_CROPS = ('inception', 'random', 'resize')
EVAL_CROPS = ('resize', 'center')


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Everything that decides how one example becomes a model input (see `from_config`)."""

    crop: int
    train_crop: str = 'inception'
    eval_crop: str = 'resize'
    resize: int | None = None
    flip: bool = True
    num_classes: int = 1
    label_smoothing: float = 0.0
    randaugment_layers: int = 0
    randaugment_magnitude: float = 0.0

    def __post_init__(self):
        if self.train_crop not in TRAIN_CROPS:
            raise ConfigError(f'pp.train_crop={self.train_crop!r}: expected one of {", ".join(TRAIN_CROPS)}')
        if self.eval_crop not in EVAL_CROPS:
            raise ConfigError(f'pp.eval_crop={self.eval_crop!r}: expected one of {", ".join(EVAL_CROPS)}')
        if not isinstance(self.crop, int) or self.crop < 1:
            raise ConfigError(f'pp.crop={self.crop!r}: expected a positive number of pixels')
        if self.train_crop == 'random' or self.eval_crop == 'center':
            if self.resize is None:
                raise ConfigError(f"pp.resize is not set: pp.train_crop='random' and pp.eval_crop='center' "
                                  f'crop pp.crop={self.crop} pixels out of an image resized to pp.resize')
            if self.resize < self.crop:
                raise ConfigError(f'pp.resize={self.resize} is smaller than pp.crop={self.crop}')


def from_config(config: Any, num_classes: int = 1) -> Preprocessing:
    """The preprocessing of an experiment config (`pp.*`, `aug.*`); `num_classes` sets the label width."""
    get = lambda key: config_util.get(config, key)  # noqa: E731
    resize = get('pp.resize')
    return Preprocessing(
        crop=int(get('pp.crop')), train_crop=str(get('pp.train_crop')), eval_crop=str(get('pp.eval_crop')),
        resize=None if resize is None else int(resize), flip=bool(get('pp.flip')), num_classes=num_classes,
        label_smoothing=float(get('aug.label_smoothing')),
        randaugment_layers=int(get('aug.randaugment_layers')),
        randaugment_magnitude=float(get('aug.randaugment_magnitude')))


def for_inference(size: int, crop_fraction: float | None = None) -> Preprocessing:
    """Eval preprocessing at `size`: a whole-image resize, or with `crop_fraction` a resize to
    size / crop_fraction and the central `size` crop."""
    if crop_fraction is None:
        return Preprocessing(crop=size)
    if not 0 < crop_fraction <= 1:
        raise ConfigError(f'crop fraction {crop_fraction} is not in (0, 1]')
    return Preprocessing(crop=size, eval_crop='center', resize=max(size, round(size / crop_fraction)))


# ----------------------------------------------------------------------------------------------
# Decoding and crops


def decode(image: tf.Tensor) -> tf.Tensor:
    """Encoded bytes (JPEG/PNG/GIF/BMP/WebP) or a uint8 [H, W, C] array -> uint8 [H, W, 3]."""
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(image)
    if image.shape[-1] is not None:
        return image[..., :3]
    image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.image.grayscale_to_rgb(image),
                    lambda: image[..., :3])
    image.set_shape([None, None, 3])
    return image


def _inception_box(shape: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(begin, size) of a random box of 5-100 % of the area, aspect 3/4-4/3, anywhere."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), seed=seed, area_range=(0.05, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    return begin, size


def inception_crop(image: tf.Tensor, seed: tf.Tensor, crop: int) -> tf.Tensor:
    """The original's train crop: a random box (`_inception_box`) resized bilinearly to crop x crop.

    `image` is a uint8 [H, W, C] array or encoded bytes; a JPEG is decoded only inside the box
    (the same box as decoding it all first; pixels agree up to chroma-upsampling rounding at the box
    edge; much faster on large photos).
    """
    def crop_decoded(im):
        begin, size = _inception_box(tf.shape(im), seed)
        return tf.slice(im, begin, size)

    def crop_jpeg():
        begin, size = _inception_box(tf.image.extract_jpeg_shape(image), seed)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        return tf.image.decode_and_crop_jpeg(image, window, channels=3)

    if image.dtype == tf.string:
        box = tf.cond(tf.io.is_jpeg(image), crop_jpeg, lambda: crop_decoded(decode(image)))
    else:
        box = crop_decoded(decode(image))
    return tf.image.resize(box, [crop, crop], method='bilinear')


def preprocess_train(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, pp: Preprocessing
                     ) -> dict[str, tf.Tensor]:
    """Image (encoded bytes or uint8 array) + int label -> training example, deterministic in `seed`."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if pp.train_crop == 'inception':
        image = inception_crop(image, seeds[0], pp.crop)
    elif pp.train_crop == 'random':
        image = tf.image.resize(decode(image), [pp.resize, pp.resize], method='bilinear')
        image = tf.image.stateless_random_crop(image, [pp.crop, pp.crop, 3], seed=seeds[0])
    else:
        image = tf.image.resize(decode(image), [pp.crop, pp.crop], method='bilinear')
    if pp.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    if pp.randaugment_layers > 0:
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        image = augment.randaugment(image, seeds[2], pp.randaugment_layers, pp.randaugment_magnitude)
    return {'image': normalize(image), 'label': one_hot(label, pp.num_classes, pp.label_smoothing)}


def eval_image(image: tf.Tensor, pp: Preprocessing) -> tf.Tensor:
    """Image (encoded or uint8) -> float32 [crop, crop, 3] in [-1, 1]: bilinear resize, or resize +
    center crop."""
    image = decode(image)
    if pp.eval_crop == 'center':
        image = tf.image.resize(image, [pp.resize, pp.resize], method='bilinear')
        offset = (pp.resize - pp.crop) // 2
        image = image[offset:offset + pp.crop, offset:offset + pp.crop]
    else:
        image = tf.image.resize(image, [pp.crop, pp.crop], method='bilinear')
    return normalize(image)


def preprocess_eval(image: tf.Tensor, label: tf.Tensor, pp: Preprocessing) -> dict[str, tf.Tensor]:
    """Image + int label -> eval example."""
    return {'image': eval_image(image, pp), 'label': one_hot(label, pp.num_classes, 0.0)}


def normalize(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1] exactly as the original: (x - 127.5) / 127.5."""
    return (tf.cast(image, tf.float32) - 127.5) / 127.5


def one_hot(label: tf.Tensor, num_classes: int, smoothing: float = 0.0) -> tf.Tensor:
    """One-hot float32 target, optionally label-smoothed (rows still sum to 1)."""
    target = tf.one_hot(tf.cast(label, tf.int32), num_classes, dtype=tf.float32)
    if smoothing:
        target = target * (1.0 - smoothing) + smoothing / num_classes
    return target


def load_image(path: str, pp: Preprocessing | Callable[[tf.Tensor], tf.Tensor],
               max_pixels: int = images.MAX_PIXELS) -> np.ndarray:
    """An image file -> float32 model input: the eval preprocessing `pp` ([crop, crop, 3]), or `pp`
    applied to the decoded uint8 image (e.g. LiT's `vit_jax.preprocess.PreprocessImages.preprocess_tf`);
    DataError if unreadable or larger than `max_pixels` (`vit_jax.images`)."""
    data = images.encoded_bytes(path, max_pixels)
    # Checked as training checks its files, before TensorFlow, whose C++ logs a failed decode to stderr.
    problem = images.check_encoded(data, max_pixels)
    if problem:
        raise DataError(f'{path}: {problem}')
    data = tf.constant(data)
    try:
        return (pp(decode(data)) if callable(pp) else eval_image(data, pp)).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        reason = re.sub(r'^\{\{.*?\}\}\s*|\s*\[Op:.*$', '', e.message.splitlines()[0])   # no TF internals
        raise DataError(f'{path}: unreadable image ({reason})') from None


def image_batches(files: Iterable[str], size: int, batch_size: int, crop_fraction: float | None = None,
                  on_error=None, *, prepare: Callable[[tf.Tensor], tf.Tensor] | None = None,
                  max_pixels: int = images.MAX_PIXELS) -> Iterator[tuple[list[str], np.ndarray]]:
    """(files, model inputs) batches for inference (`for_inference` preprocessing, or `prepare` of
    each decoded uint8 image); unreadable files and files of more than `max_pixels` pixels go to
    `on_error(path, message)` and are skipped (without `on_error` they raise)."""
    pp = prepare or for_inference(size, crop_fraction)
    names: list[str] = []
    batch: list[np.ndarray] = []
    for path in files:
        try:
            batch.append(load_image(path, pp, max_pixels))
            names.append(path)
        except (OSError, DataError) as e:
            if on_error is None:
                raise
            on_error(path, ' '.join(str(e).removeprefix(f'{path}: ').split()))
        if len(names) == batch_size:
            yield names, np.stack(batch)
            names, batch = [], []
    if names:
        yield names, np.stack(batch)
