"""Input pipeline: tfds data sets, image folders, CSV files and the embedded digits, on tf.data.

`get_datasets(config)` returns `(train_iter, eval_ds, info)`:

- `train_iter` (`TrainIterator`): an endless stream of this process's batches
  `{'image': float32 [B, H, W, 3] in [-1, 1], 'label': float32 [B, C]}`, B = `batch // process_count`
  (with `batch_sharding`: global `jax.Array`s, prefetched `prefetch` batches ahead onto devices).
  `get_state()` / `set_state()` save and restore its position exactly (a small dict).
- `eval_ds` (`EvalDataset`): each `iter(eval_ds)` passes over the eval split once, in batches of
  `batch_eval // process_count` padded to full size, with `'mask'` float32 [B] (1 real, 0 padding).
- `info` (`DatasetInfo`): number of classes / examples, class names, image size.

Preprocessing is the original vit_jax's and lives in one place (`preprocess_train`,
`preprocess_eval`) for every source: train "inception" crop (5-100 % of the area, aspect 3/4-4/3,
no minimum object coverage, bilinear resize to `crop`) + random horizontal flip; eval bilinear
resize of the whole image to `crop`; then (x - 127.5) / 127.5 and one-hot labels. JPEGs are
decoded only inside the crop box (big_vision's fast path; same box). Augmentation, all off by
default (`vit_jax.augment`): RandAugment on the uint8 crop after the flip, label smoothing on the
target, then Mixup / CutMix on the batch. Digits (16 grey levels scaled to 0-255, replicated to
RGB) go through the same functions, so they are upsampled bilinearly (their preset: to 18, then a
16 px crop, as configs/digits.py).

Config fields read (all optional except `dataset`; defaults in brackets):
  dataset           a tfds name ('cifar10', 'cifar100', 'imagenet2012', 'imagenet21k' (must be
                    prepared in `tfds_data_dir`), 'oxford_iiit_pet', 'oxford_flowers102', any tfds
                    name with image/label features); 'digits' (scikit-learn's 1,797 real 8x8 digits,
                    no download); a directory `root/<class>/<image>` or `root/train/<class>/...` with
                    `root/val|validation|test/<class>/...`; or a CSV of `path,label[,split]` rows.
  tfds_data_dir     [None: tfds default], tfds_manual_dir [None: <data_dir>/downloads/manual]
  pp.train, pp.test split strings for tfds [DATASET_PRESETS, else 'train' / 'test']
  pp.crop           output resolution [DATASET_PRESETS, else 224]
  pp.train_crop     'inception' | 'random' (resize to pp.resize, random crop) | 'resize' ['inception';
                    'random' for digits]
  pp.eval_crop      'resize' | 'center' (resize to pp.resize, central crop) ['resize'; 'center' for digits]
  pp.resize         side before a random/central crop [round(crop * 8 / 7)]
  pp.flip           random horizontal flip in training [True; False for digits]
  pp.holdout        fraction held out for eval from folders/CSVs without an eval split [0.1]
  pp.check_images   decode every folder/CSV image once up front (Pillow, threads) and skip unreadable
                    ones with one warning [True]; False starts faster on huge trees, but then a
                    corrupt file stops training when it is reached
  batch [512], batch_eval [batch], shuffle_buffer [50_000], prefetch [2], seed [0]
  aug.randaugment_layers [0], aug.randaugment_magnitude [0], aug.mixup_alpha [0], aug.cutmix_alpha [0],
  aug.mixup_switch_prob [0.5], aug.mixup_prob [1.0], aug.label_smoothing [0]

Splits without an eval split of their own (folders/CSVs without one, digits) are split once,
stratified by class, with a fixed seed (0) that does not depend on `config.seed` or the number of
processes, so the eval set never changes. Digits: 20 % of each class for eval (359 images), the
rest (1,438) for training.

Determinism and resumption: the order of epoch `e` is a permutation seeded by (seed, process, e)
(tfds: a shuffle buffer seeded the same way); every random choice of an example is a stateless
function of (seed, process, epoch, index in epoch), of a batch of (seed, process, step). So the
position is just the number of batches yielded, and a restored iterator re-reads (without decoding)
only the part of the current epoch already consumed.

Scale: process p of P reads the disjoint shard p of P (contiguous, sizes differing by at most one;
tfds via `tfds.even_splits`); all processes yield the same number of eval batches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import importlib.resources
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import tensorflow as tf

from vit_jax import config_util, sharding

# TensorFlow is only the input pipeline: keep it off any accelerator JAX is using.
try:
    tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TensorFlow was already initialised elsewhere; leave it as it is
    pass

logger = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
# Image files every image reader of vit_jax accepts (folders, CSVs, vit-predict, few-shot): what
# TensorFlow decodes natively, plus TIFF / PPM, which Pillow decodes (re-encoded as PNG on the way in).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp', '.tif', '.tiff', '.ppm')
_TF_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP', 'MPO', 'WEBP')   # Pillow's names of what tf.io decodes
_PIL_FORMATS = ('TIFF', 'PPM')
# Label lists shipped in vit_jax/data/ (see vit_jax/data/README.md for their provenance).
LABEL_SETS = {'imagenet2012': 'imagenet2012.txt', 'imagenet1k': 'imagenet2012.txt',
              'imagenet21k': 'imagenet21k.txt'}
DIGITS_EVAL_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the train/eval split of folders, CSVs and digits never depends on config.seed
EVAL_DIR_NAMES = ('val', 'validation', 'test')

# Per data set: tfds splits, fine-tuning steps and resolution (original vit_jax; paper App. B.1.1).
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    'cifar10': dict(train='train[:98%]', test='test', crop=384, total_steps=10_000),
    'cifar100': dict(train='train[:98%]', test='test', crop=384, total_steps=10_000),
    'imagenet2012': dict(train='train[:99%]', test='validation', crop=384, total_steps=20_000),
    # big_vision's i21k splits; 90 epochs of 14.2M images at batch 4096 (paper Table 3 / App. B.1).
    'imagenet21k': dict(train='full[51200:]', test='full[:51200]', crop=224, total_steps=312_000),
    'oxford_iiit_pet': dict(train='train[:90%]', test='test', crop=384, total_steps=500),
    'oxford_flowers102': dict(train='train+validation', test='test', crop=384, total_steps=500),
    # configs/digits.py: 8x8 digits upsampled to 18x18 (round(16 * 8 / 7)); random 16x16 crop (a +-1 px
    # shift) for training, central crop for eval; no flip (digits are not mirror-symmetric).
    'digits': dict(train='train', test='test', crop=16, total_steps=500, train_crop='random',
                   eval_crop='center', flip=False),
}

# Files a manual-download tfds data set needs in its manual directory.
MANUAL_FILES = {
    'imagenet2012': 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar',
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    num_train: int          # examples in the train split (all processes)
    num_eval: int           # examples in the eval split
    class_names: tuple[str, ...]
    image_size: int         # = config.pp.crop


# ----------------------------------------------------------------------------------------------
# Config access and preprocessing settings


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Everything that decides how one example becomes a model input."""
    crop: int = 224
    train_crop: str = 'inception'
    eval_crop: str = 'resize'
    resize: int | None = None
    flip: bool = True
    num_classes: int = 1
    label_smoothing: float = 0.0
    randaugment_layers: int = 0
    randaugment_magnitude: float = 0.0

    def __post_init__(self):
        if self.train_crop not in ('inception', 'random', 'resize'):
            raise ValueError(f"pp.train_crop={self.train_crop!r}: expected 'inception', 'random' or 'resize'")
        if self.eval_crop not in ('resize', 'center'):
            raise ValueError(f"pp.eval_crop={self.eval_crop!r}: expected 'resize' or 'center'")

    @property
    def resize_to(self) -> int:
        return int(self.resize or round(self.crop * 8 / 7))


def _preset(config: Any, key: str, default: Any) -> Any:
    name = str(config_util.get(config, 'dataset', ''))
    return config_util.get(config, 'pp.' + key, DATASET_PRESETS.get(name, {}).get(key, default))


def preprocessing_from_config(config: Any, num_classes: int = 1) -> Preprocessing:
    """The preprocessing a (training) config implies, presets included: rebuild its eval exactly.

    `num_classes` only sets the width of the one-hot labels.
    """
    return Preprocessing(
        crop=int(_preset(config, 'crop', 224)),
        train_crop=str(_preset(config, 'train_crop', 'inception')),
        eval_crop=str(_preset(config, 'eval_crop', 'resize')),
        resize=config_util.get(config, 'pp.resize'),
        flip=bool(_preset(config, 'flip', True)),
        num_classes=num_classes,
        label_smoothing=float(config_util.get(config, 'aug.label_smoothing', 0.0)),
        randaugment_layers=int(config_util.get(config, 'aug.randaugment_layers', 0)),
        randaugment_magnitude=float(config_util.get(config, 'aug.randaugment_magnitude', 0.0)),
    )


# ----------------------------------------------------------------------------------------------
# Preprocessing (the one place; every source goes through these)


def decode_image(image: tf.Tensor) -> tf.Tensor:
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
        box = tf.cond(tf.io.is_jpeg(image), crop_jpeg, lambda: crop_decoded(decode_image(image)))
    else:
        box = crop_decoded(decode_image(image))
    return tf.image.resize(box, [crop, crop], method='bilinear')


def preprocess_train(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, pp: Preprocessing
                     ) -> dict[str, tf.Tensor]:
    """Image (encoded bytes or uint8 array) + int label -> training example, deterministic in `seed`."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if pp.train_crop == 'inception':
        image = inception_crop(image, seeds[0], pp.crop)
    elif pp.train_crop == 'random':
        image = tf.image.resize(decode_image(image), [pp.resize_to, pp.resize_to], method='bilinear')
        image = tf.image.stateless_random_crop(image, [pp.crop, pp.crop, 3], seed=seeds[0])
    else:
        image = tf.image.resize(decode_image(image), [pp.crop, pp.crop], method='bilinear')
    if pp.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    if pp.randaugment_layers > 0:
        from vit_jax import augment
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        image = augment.randaugment(image, seeds[2], pp.randaugment_layers, pp.randaugment_magnitude)
    return {'image': normalize(image), 'label': one_hot(label, pp.num_classes, pp.label_smoothing)}


def preprocess_eval(image: tf.Tensor, label: tf.Tensor, pp: Preprocessing) -> dict[str, tf.Tensor]:
    """Image (encoded or uint8) + int label -> eval example (bilinear resize, or resize + center crop)."""
    image = decode_image(image)
    if pp.eval_crop == 'center':
        image = tf.image.resize(image, [pp.resize_to, pp.resize_to], method='bilinear')
        offset = (pp.resize_to - pp.crop) // 2
        image = image[offset:offset + pp.crop, offset:offset + pp.crop]
    else:
        image = tf.image.resize(image, [pp.crop, pp.crop], method='bilinear')
    return {'image': normalize(image), 'label': one_hot(label, pp.num_classes, 0.0)}


def normalize(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1] exactly as the original: (x - 127.5) / 127.5."""
    return (tf.cast(image, tf.float32) - 127.5) / 127.5


def one_hot(label: tf.Tensor, num_classes: int, smoothing: float = 0.0) -> tf.Tensor:
    """One-hot float32 target, optionally label-smoothed (rows still sum to 1)."""
    target = tf.one_hot(tf.cast(label, tf.int32), num_classes, dtype=tf.float32)
    if smoothing:
        target = target * (1.0 - smoothing) + smoothing / num_classes
    return target


# ----------------------------------------------------------------------------------------------
# Sources: one process's shard of a split, readable per epoch in a seeded order


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, end) of shard `process_index` of `process_count` over n examples (sizes differ <= 1)."""
    base, extra = divmod(n, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


@dataclasses.dataclass
class _Source:
    """This process's shard of one split.

    `epoch(e, start, seed)` is a tf.data.Dataset of raw (undecoded) `(record, label)` of epoch e
    in its seeded order, from position `start`; `in_order()` is the shard once in stored order.
    """
    num_examples: int          # in this shard
    total_examples: int        # in the split, all processes
    epoch: Callable[[tf.Tensor, int, tf.Tensor], tf.data.Dataset]
    in_order: Callable[[], tf.data.Dataset]
    labels: np.ndarray | None = None   # of `in_order()`, where known without reading the data


def _indexed_source(records: np.ndarray, labels: np.ndarray, process_index: int, process_count: int,
                    read: Callable[[tf.Tensor], tf.Tensor] | None = None) -> _Source:
    """Random-access source (in-memory arrays or a file list): exact per-epoch permutations.

    The list is shuffled once with a fixed seed before it is cut into per-process shards, so that
    every shard holds every class (lists come sorted by class).
    """
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    start, end = shard_bounds(len(labels), process_index, process_count)
    records_t = tf.constant(records[order[start:end]])
    labels_t = tf.constant(labels[order[start:end]].astype(np.int64))
    n = end - start
    read = read or (lambda r: r)

    def gather(i):
        return read(tf.gather(records_t, i)), tf.gather(labels_t, i)

    def epoch(e, first, seed):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.random.experimental.stateless_fold_in(seed, e))
        return tf.data.Dataset.from_tensor_slices(perm).skip(first).map(gather)

    def in_order():
        return tf.data.Dataset.range(n).map(gather)

    return _Source(n, len(labels), epoch, in_order, labels[order[start:end]].astype(np.int64))


def _stratified_split(labels: np.ndarray, fraction: float, seed: int = SPLIT_SEED
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, eval): `fraction` of each class (rounded, at least one where possible) to eval."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


# --- digits


def digits_splits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[str, ...]]:
    """scikit-learn's digits as uint8 [N, 8, 8] (16 gray levels scaled to 0-255), fixed 80/20 split."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train, held = _stratified_split(labels, DIGITS_EVAL_FRACTION)
    names = tuple(str(c) for c in range(10))
    return (images[train], labels[train]), (images[held], labels[held]), names


# --- tfds


def _tfds_builder(config: Any, name: str):
    """The tfds builder, prepared (downloading where tfds can; manual data sets say what to fetch)."""
    import tensorflow_datasets as tfds
    data_dir = config_util.get(config, 'tfds_data_dir')
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f'config.dataset={name!r} is not a tfds data set, "digits", a folder or a CSV file'
                         + (' (imagenet21k is not in the public tfds catalog: prepare it as a tfds data set '
                            'in config.tfds_data_dir, or give a folder of class folders)'
                            if name == 'imagenet21k' else '')) from None
    manual_dir = config_util.get(config, 'tfds_manual_dir')
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception:  # noqa: BLE001 - re-raised unless the manual download is missing
        expected = manual_dir or os.path.join(builder.data_dir_root, 'downloads', 'manual')
        if (not getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
                or (os.path.isdir(expected) and os.listdir(expected))):
            raise
        what = MANUAL_FILES.get(name, f'the files described at https://www.tensorflow.org/datasets/catalog/{name}')
        raise FileNotFoundError(f'{name} needs a manual download: put {what} in {expected} '
                                '(or set config.tfds_manual_dir to where they are)') from None
    return builder


def load_labels(name_or_path: str) -> list[str]:
    """Class names, one per line (stripped, blank lines skipped): a shipped set or a text file.

    Shipped sets (vit_jax/data/): 'imagenet2012' (alias 'imagenet1k'), 'imagenet21k'.
    """
    if name_or_path in LABEL_SETS:
        text = (importlib.resources.files('vit_jax') / 'data' / LABEL_SETS[name_or_path]).read_text('utf-8')
    elif os.path.isfile(name_or_path):
        with open(name_or_path, encoding='utf-8') as f:
            text = f.read()
    else:
        raise FileNotFoundError(f'labels {name_or_path!r}: neither a file nor one of {sorted(LABEL_SETS)}')
    return [line.strip() for line in text.splitlines() if line.strip()]


def _readable_names(name: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """ImageNet's WordNet ids -> the human-readable labels shipped in vit_jax/data/ (same order)."""
    if name in ('imagenet2012', 'imagenet21k'):
        readable = tuple(load_labels(name))
        if len(readable) == len(names):
            return readable
    return names


def _tfds_source(builder, split: str, process_index: int, process_count: int, shuffle_buffer: int
                 ) -> _Source:
    """Shard `process_index` of `split` (tfds.even_splits); epochs through a seeded shuffle buffer."""
    import tensorflow_datasets as tfds

    def read(sub_split):
        ds = builder.as_dataset(split=sub_split, shuffle_files=False,
                                decoders={'image': tfds.decode.SkipDecoding()})
        return ds.map(lambda ex: (ex['image'], ex['label']))

    shard = read(tfds.even_splits(split, n=process_count)[process_index])
    n = int(shard.cardinality())
    try:
        total = builder.info.splits[split].num_examples
    except (KeyError, ValueError):  # not generated (tfds.testing.mock_data): count the shards
        total = sum(int(read(s).cardinality()) for s in tfds.even_splits(split, n=process_count))
    if n <= 0:
        raise ValueError(f'tfds split {builder.name}:{split} has no examples for process {process_index}')
    buffer = max(1, min(int(shuffle_buffer), n))

    def epoch(e, first, seed):
        key = tf.random.experimental.stateless_fold_in(seed, e)
        epoch_seed = tf.random.stateless_uniform([], seed=key, minval=0, maxval=2 ** 62, dtype=tf.int64)
        return shard.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False).skip(first)

    return _Source(n, total, epoch, lambda: shard)


# --- image folders and CSV files


def _image_files(folder: str) -> list[str]:
    """Image files under `folder` (recursive), sorted for a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')]
    return found


def _class_folders(root: str, class_names: tuple[str, ...] | None = None
                   ) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Files and labels of `root/<class>/...`; classes are the sorted sub-folder names."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'image folder {root} does not exist')
    found = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)) and not d.startswith('.'))
    if not found:
        raise ValueError(f'image folder {root} has no class sub-folders (expected {root}/<class>/<image>)')
    names = class_names or tuple(found)
    paths, labels = [], []
    for d in found:
        folder = os.path.join(root, d)
        if d not in names:
            raise ValueError(f'class folder {folder} is not a training class ({", ".join(names)})')
        files = _image_files(folder)
        if not files:
            raise ValueError(f'class folder {folder} has no images ({", ".join(IMAGE_EXTENSIONS)})')
        paths += files
        labels += [names.index(d)] * len(files)
    return paths, labels, names


def _csv_rows(path: str) -> tuple[list[str], list[str], list[str]]:
    """(paths, labels, splits) of a `path,label[,split]` CSV; relative paths are relative to it."""
    import csv
    base = os.path.dirname(os.path.abspath(path))
    paths, labels, splits = [], [], []
    with open(path, newline='') as f:
        for n, row in enumerate(csv.reader(f)):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith('#'):
                continue
            if n == 0 and row[0].lower() in ('path', 'file', 'filename', 'image'):
                continue  # header
            if len(row) < 2 or not row[1]:
                raise ValueError(f'{path}:{n + 1}: expected "path,label[,split]", got {",".join(row)!r}')
            paths.append(os.path.join(base, row[0]))
            labels.append(row[1])
            splits.append(row[2].lower() if len(row) > 2 else '')
    if not paths:
        raise ValueError(f'CSV file {path} has no rows (expected "path,label[,split]")')
    return paths, labels, splits


def _check_image(path: str) -> str | None:
    """None if TensorFlow will decode `path`, else why not (decoded once with Pillow, JPEGs at 1/8)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.format not in _TF_FORMATS + _PIL_FORMATS:
                return f'unsupported format {im.format}'
            im.draft('RGB', (im.width // 8 + 1, im.height // 8 + 1))
            im.load()
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        return f'{type(e).__name__}: {e}'
    return None


def _png_bytes(path: np.ndarray) -> bytes:
    """A file Pillow reads but TensorFlow does not (TIFF, PPM), re-encoded as PNG."""
    import io

    from PIL import Image
    with Image.open(os.fsdecode(np.asarray(path).item())) as im:
        out = io.BytesIO()
        im.convert('RGBA' if 'A' in im.getbands() else 'RGB').save(out, format='PNG')
    return out.getvalue()


def read_image_file(path: tf.Tensor) -> tf.Tensor:
    """The encoded bytes of an image file (`IMAGE_EXTENSIONS`) for `decode_image`."""
    pil_only = tf.strings.regex_full_match(tf.strings.lower(path), r'.*\.(tiff?|ppm)')

    def via_pillow():
        data = tf.numpy_function(_png_bytes, [path], tf.string, stateful=False)
        data.set_shape([])
        return data

    return tf.cond(pil_only, via_pillow, lambda: tf.io.read_file(path))


def _drop_unreadable(paths: list[str], labels: list[int], where: str) -> tuple[list[str], list[int]]:
    """Checks every file once (threads); skips unreadable ones with ONE warning that names them."""
    from tqdm import tqdm
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, 2 * (os.cpu_count() or 1))) as pool:
        problems = list(tqdm(pool.map(_check_image, paths), total=len(paths), desc=f'checking {where}',
                             disable=len(paths) < 5000, leave=False))
    bad = [(p, why) for p, why in zip(paths, problems, strict=True) if why]
    if bad:
        shown = '; '.join(f'{p} ({why})' for p, why in bad[:20])
        more = f'; and {len(bad) - 20} more' if len(bad) > 20 else ''
        logger.warning('Skipping %d unreadable image(s) of %d in %s: %s%s', len(bad), len(paths), where,
                       shown, more)
    keep = [i for i, why in enumerate(problems) if not why]
    return [paths[i] for i in keep], [labels[i] for i in keep]


def _file_sources(config: Any, process_index: int, process_count: int
                  ) -> tuple[_Source, _Source, tuple[str, ...]]:
    """Sources of a class-folder tree or a CSV file, with a fixed stratified holdout if no eval split."""
    where = str(config_util.get(config, 'dataset'))
    holdout = float(config_util.get(config, 'pp.holdout', 0.1))
    if os.path.isdir(where):
        train_root = os.path.join(where, 'train')
        eval_root = next((os.path.join(where, d) for d in EVAL_DIR_NAMES
                          if os.path.isdir(os.path.join(where, d))), None)
        if os.path.isdir(train_root):
            paths, labels, names = _class_folders(train_root)
            if eval_root is None:
                eval_paths, eval_labels = None, None
            else:
                eval_paths, eval_labels, _ = _class_folders(eval_root, names)
        else:
            paths, labels, names = _class_folders(where)
            eval_paths, eval_labels = None, None
    else:
        paths, raw_labels, splits = _csv_rows(where)
        if all(s.lstrip('-').isdigit() for s in raw_labels):
            labels = [int(s) for s in raw_labels]
            if min(labels) < 0:
                raise ValueError(f'CSV file {where}: negative label {min(labels)}')
            names = tuple(str(i) for i in range(max(labels) + 1))
        else:
            names = tuple(sorted(set(raw_labels)))
            labels = [names.index(s) for s in raw_labels]
        is_eval = [s in ('val', 'validation', 'test', 'eval') for s in splits]
        if any(is_eval):
            eval_paths = [p for p, e in zip(paths, is_eval, strict=True) if e]
            eval_labels = [y for y, e in zip(labels, is_eval, strict=True) if e]
            paths = [p for p, e in zip(paths, is_eval, strict=True) if not e]
            labels = [y for y, e in zip(labels, is_eval, strict=True) if not e]
        else:
            eval_paths, eval_labels = None, None
    if config_util.get(config, 'pp.check_images', True):
        paths, labels = _drop_unreadable(paths, labels, where)
        if eval_paths is not None:
            eval_paths, eval_labels = _drop_unreadable(eval_paths, eval_labels, where)
    if eval_paths is None:
        train_idx, eval_idx = _stratified_split(np.asarray(labels), holdout)
        eval_paths, eval_labels = [paths[i] for i in eval_idx], [labels[i] for i in eval_idx]
        paths, labels = [paths[i] for i in train_idx], [labels[i] for i in train_idx]
    for what, files in (('training', paths), ('eval', eval_paths)):
        if not files:
            raise ValueError(f'{where} has no readable {what} images')
    missing = sorted(set(range(len(names))) - set(labels))
    if missing and os.path.isdir(where):
        raise ValueError(f'class {names[missing[0]]!r} of {where} has no readable training images')

    def source(p, y):
        return _indexed_source(np.asarray(p, dtype=object).astype(bytes), np.asarray(y), process_index,
                               process_count, read=read_image_file)
    return source(paths, labels), source(eval_paths, eval_labels), names


# ----------------------------------------------------------------------------------------------
# Iterators


def _prepare(batch: dict[str, Any], batch_sharding: jax.sharding.NamedSharding | None) -> dict[str, Any]:
    """Host-local numpy batch -> global jax.Arrays split along the batch axis (when sharded)."""
    return batch if batch_sharding is None else sharding.to_global(batch, batch_sharding)


class TrainIterator(Iterator):
    """Endless, deterministic, resumable stream of training batches (see the module docstring)."""

    def __init__(self, make_dataset: Callable[[int], tf.data.Dataset], identity: dict[str, Any],
                 sharding: jax.sharding.NamedSharding | None, prefetch: int):
        self._make_dataset = make_dataset
        self._identity = identity
        self._sharding = sharding
        self._prefetch = max(int(prefetch), 0) if sharding is not None else 0
        self._start(0)

    def _start(self, step: int) -> None:
        self._step = step
        self._it = self._make_dataset(step).as_numpy_iterator()
        self._queue: collections.deque = collections.deque()

    def __next__(self) -> dict[str, Any]:
        while len(self._queue) <= self._prefetch:
            self._queue.append(_prepare(next(self._it), self._sharding))
        self._step += 1
        return self._queue.popleft()

    def get_state(self) -> dict[str, Any]:
        """Position (batches yielded) plus what it depends on; JSON-serialisable."""
        return {'step': self._step, **self._identity}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where the iterator that produced `state` was."""
        for key, value in self._identity.items():
            if key in state and state[key] != value:
                raise ValueError(f'input pipeline state has {key}={state[key]!r} but this pipeline has '
                                 f'{key}={value!r}: the restored data order would differ')
        self._start(int(state['step']))


class EvalDataset:
    """Re-iterable eval split: each pass yields every example once, padded batches with 'mask'."""

    def __init__(self, dataset: tf.data.Dataset, num_batches: int,
                 sharding: jax.sharding.NamedSharding | None):
        self._dataset = dataset
        self._num_batches = num_batches
        self._sharding = sharding

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self._dataset.as_numpy_iterator():
            yield _prepare(batch, self._sharding)


def _train_dataset(source: _Source, pp: Preprocessing, batch_size: int, seed: int, process_index: int,
                   step: int, mix: dict[str, float]) -> tf.data.Dataset:
    """Batches from `step` on; every random choice is a stateless function of its position."""
    base = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), process_index)
    epoch0, index0 = divmod(step * batch_size, source.num_examples)

    def epoch_ds(e, first):
        records = source.epoch(e, first, base)
        index = tf.data.Dataset.range(first, source.num_examples)
        return tf.data.Dataset.zip(records, index).map(lambda r, i: (r, e, i))

    ds = epoch_ds(tf.constant(epoch0, tf.int64), index0).concatenate(
        tf.data.Dataset.range(epoch0 + 1, 2 ** 62).flat_map(lambda e: epoch_ds(e, 0)))

    def example(record, e, i):
        key = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(base, e), i)
        image, label = record
        return preprocess_train(image, label, key, pp)

    ds = ds.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    if mix['mixup_alpha'] > 0 or mix['cutmix_alpha'] > 0:
        from vit_jax import augment
        batch_base = tf.random.experimental.stateless_fold_in(base, -1)
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(step, 2 ** 62)).map(
            lambda b, s: augment.mix_batch(b, tf.random.experimental.stateless_fold_in(batch_base, s), **mix),
            num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


def _eval_dataset(source: _Source, pp: Preprocessing, batch_size: int, process_count: int
                  ) -> tuple[tf.data.Dataset, int]:
    """The shard once in order + all-padding examples so every process yields `num_batches`."""
    num_batches = math.ceil(math.ceil(source.total_examples / process_count) / batch_size)
    pad = num_batches * batch_size - source.num_examples

    def example(record, label):
        ex = preprocess_eval(record, label, pp)
        return {**ex, 'mask': tf.constant(1.0, tf.float32)}

    ds = source.in_order().map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
    padding = tf.data.Dataset.from_tensors({
        'image': tf.zeros([pp.crop, pp.crop, 3], tf.float32),
        'label': tf.zeros([pp.num_classes], tf.float32),
        'mask': tf.constant(0.0, tf.float32)}).repeat(pad)
    return ds.concatenate(padding).batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE), num_batches


# ----------------------------------------------------------------------------------------------
# Entry point


def _sources(config: Any, process_index: int, process_count: int
             ) -> tuple[_Source, _Source, tuple[str, ...]]:
    name = str(config_util.get(config, 'dataset', ''))
    if not name:
        raise ValueError('config.dataset is not set: give a tfds name, "digits", a folder or a CSV file')
    if name == 'digits':
        (xt, yt), (xe, ye), names = digits_splits()
        return (_indexed_source(xt, yt, process_index, process_count),
                _indexed_source(xe, ye, process_index, process_count), names)
    if os.path.isdir(name) or name.lower().endswith('.csv'):
        if not os.path.exists(name):
            raise FileNotFoundError(f'config.dataset={name!r}: CSV file not found')
        return _file_sources(config, process_index, process_count)
    if os.sep in name:
        raise FileNotFoundError(f'config.dataset={name!r}: no such folder')
    builder = _tfds_builder(config, name)
    if 'label' not in builder.info.features or 'image' not in builder.info.features:
        raise ValueError(f'tfds data set {name!r} has no image/label features')
    label_names = getattr(builder.info.features['label'], 'names', None)
    if not label_names:
        raise ValueError(f'tfds data set {name!r}: its label feature is not a ClassLabel with class names')
    names = _readable_names(name, tuple(label_names))
    buffer = int(config_util.get(config, 'shuffle_buffer', 50_000))
    train_split, eval_split = str(_preset(config, 'train', 'train')), str(_preset(config, 'test', 'test'))
    train = _tfds_source(builder, train_split, process_index, process_count, buffer)
    evals = _tfds_source(builder, eval_split, process_index, process_count, buffer)
    return train, evals, names


def _split_source(config: Any, split: str) -> tuple[_Source, Preprocessing]:
    """The whole (one-process) 'train' or 'test' split of `config.dataset` and its preprocessing."""
    if split not in ('train', 'test'):
        raise ValueError(f"split {split!r}: expected 'train' or 'test' (tfds splits are pp.train / pp.test)")
    train, evals, names = _sources(config, 0, 1)
    return (train if split == 'train' else evals), preprocessing_from_config(config, len(names))


def split_labels(config: Any, split: str = 'test') -> np.ndarray:
    """Integer labels of the 'train' or 'test' split, in the order `eval_examples` yields them.

    Folders, CSVs and digits know them without reading an image; tfds reads the (undecoded) records.
    """
    source, _ = _split_source(config, split)
    if source.labels is not None:
        return source.labels
    return np.fromiter(source.in_order().map(lambda r, y: y).as_numpy_iterator(), np.int64)


def eval_examples(config: Any, split: str = 'test', indices: np.ndarray | None = None
                  ) -> Iterator[tuple[np.ndarray, int]]:
    """`(image float32 [crop, crop, 3] in [-1, 1], label)` of a split, eval-preprocessed, in stored order.

    Any source (tfds name, folder, CSV, digits) and its preprocessing as in `get_datasets`, on one
    process; 'train' is the training split without augmentation (e.g. a few-shot support set).
    With `indices` (positions in that order), only those examples (still in stored order), and
    only they are decoded. Errors in the config are raised here, not on the first `next()`.
    """
    source, pp = _split_source(config, split)
    ds = source.in_order()
    if indices is not None:
        keep = np.zeros(source.num_examples, bool)
        try:
            keep[np.asarray(indices, np.int64)] = True
        except IndexError:
            raise ValueError(f'eval_examples: index {np.max(indices)} is out of range for the {split} '
                             f'split of {config_util.get(config, "dataset")!r} ({source.num_examples} '
                             'examples)') from None
        keep_t = tf.constant(keep)
        ds = ds.enumerate().filter(lambda i, example: keep_t[i])
        ds = ds.map(lambda j, record: record).take(int(keep.sum()))   # stop reading after the last one
    ds = ds.map(lambda r, y: (preprocess_eval(r, y, pp)['image'], y), num_parallel_calls=AUTOTUNE,
                deterministic=True).prefetch(AUTOTUNE)
    return ((image, int(label)) for image, label in ds.as_numpy_iterator())


def get_datasets(config: Any, *, batch_sharding: jax.sharding.NamedSharding | None = None,
                 seed: int | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> tuple[TrainIterator, EvalDataset, DatasetInfo]:
    """Train iterator, eval data set and info for `config` (see the module docstring).

    `process_index` / `process_count` default to JAX's; pass them to simulate several hosts.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    batch = int(config_util.get(config, 'batch', 512))
    batch_eval = int(config_util.get(config, 'batch_eval', batch))
    for key, value in (('batch', batch), ('batch_eval', batch_eval)):
        if value % process_count:
            raise ValueError(f'config.{key}={value} is not divisible by the number of processes '
                             f'{process_count}')
    seed = int(config_util.get(config, 'seed', 0) if seed is None else seed)

    train, evals, class_names = _sources(config, process_index, process_count)
    pp = preprocessing_from_config(config, len(class_names))
    local_batch = batch // process_count
    if train.num_examples < local_batch:
        raise ValueError(f'config.dataset={config_util.get(config, "dataset")!r}: {train.num_examples} '
                         f'training examples per process, fewer than one batch of {local_batch}')
    mix = dict(mixup_alpha=float(config_util.get(config, 'aug.mixup_alpha', 0.0)),
               cutmix_alpha=float(config_util.get(config, 'aug.cutmix_alpha', 0.0)),
               switch_prob=float(config_util.get(config, 'aug.mixup_switch_prob', 0.5)),
               prob=float(config_util.get(config, 'aug.mixup_prob', 1.0)))
    identity = {'seed': seed, 'batch': batch, 'num_train': train.total_examples,
                'process_count': process_count}
    train_iter = TrainIterator(
        lambda step: _train_dataset(train, pp, local_batch, seed, process_index, step, mix),
        identity, batch_sharding, int(config_util.get(config, 'prefetch', 2)))
    eval_tf, num_batches = _eval_dataset(evals, pp, batch_eval // process_count, process_count)
    info = DatasetInfo(num_classes=len(class_names), num_train=train.total_examples,
                       num_eval=evals.total_examples, class_names=tuple(class_names), image_size=pp.crop)
    return train_iter, EvalDataset(eval_tf, num_batches, batch_sharding), info
