"""Input pipeline: tfds data sets, image folders, CSV files and the embedded digits, on tf.data.

`get_datasets(config)` returns `(train_iter, eval_ds, info)`:

- `train_iter` (`TrainIterator`): an endless stream of this process's batches
  `{'image': float32 [B, H, W, 3] in [-1, 1], 'label': float32 [B, C]}`, B = `batch // process_count`
  (with `batch_sharding`: global `jax.Array`s, prefetched `prefetch` batches ahead onto devices).
  `get_state()` / `set_state()` save and restore its position exactly (a small dict).
- `eval_ds` (`EvalDataset`): each `iter(eval_ds)` passes over the eval split once, in batches of
  `batch_eval // process_count` padded to full size, with `'mask'` float32 [B] (1 real, 0 padding).
- `info` (`DatasetInfo`): number of classes / examples, class names, image size.

Every example goes through `vit_jax.preprocessing` (the original's crops, flip and scaling; the
fields `pp.*` and `aug.*` of the config). Sources (`config.dataset`): a tfds name (splits
`pp.train` / `pp.test`; `tfds_data_dir`, `tfds_manual_dir`); 'digits' (scikit-learn's 1,797 real
8x8 digits, no download); a folder `root/<class>/<image>` or `root/train/<class>/...` with
`root/val|validation|test/<class>/...`, local or gs://; or a CSV of `path,label[,split]` rows.
Every value used comes from the config (`vit_jax.configs.common` defines each field); nothing
here depends on the data set's name.

Sources without an eval split of their own (folders/CSVs without one, digits) hold out
`pp.holdout` of each class, once, with a fixed seed (0) that does not depend on `config.seed` or
the number of processes, so the eval set never changes.

Determinism and resumption: the order of epoch `e` is a permutation seeded by (seed, process, e)
(tfds: a shuffle buffer seeded the same way); every random choice of an example is a stateless
function of (seed, process, epoch, index in epoch), of a batch of (seed, process, step). So the
position is just the number of batches yielded, and a restored iterator re-reads (without decoding)
only the part of the current epoch already consumed. Epochs follow each other without a gap, so a
batch may span two (a data set smaller than a batch repeats inside it, as the original's
repeat-then-batch did).

Scale: process p of P reads the disjoint shard p of P (contiguous, sizes differing by at most one;
tfds via `tfds.even_splits`); all processes yield the same number of eval batches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import functools
import io
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from vit_jax import augment, config_util, images, labels, paths, preprocessing, sharding, tflib
from vit_jax.errors import ConfigError, DataError
from vit_jax.preprocessing import Preprocessing
from vit_jax.tflib import graph_function, tf

logger = logging.getLogger(__name__)
SPLIT_SEED = 0  # fixed: the train/eval split of folders, CSVs and digits never depends on config.seed
EVAL_DIR_NAMES = ('val', 'validation', 'test')
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


def _get(config: Any, key: str) -> Any:
    return config_util.get(config, key)


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


def digits_splits(holdout: float
                  ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[str, ...]]:
    """scikit-learn's digits as uint8 [N, 8, 8] (16 gray levels scaled to 0-255), `holdout` of each
    class held out for eval (the digits preset: 0.2, i.e. 1,438 train / 359 eval).

    Each split is ordered by class (stable), as a folder of class folders lists its files: written
    out as `split/<class>/<index>.png`, the digits train exactly as the built-in source does.
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    targets = digits.target.astype(np.int64)
    train, held = _stratified_split(targets, holdout)
    train, held = (idx[np.argsort(targets[idx], kind='stable')] for idx in (train, held))
    names = tuple(str(c) for c in range(10))
    return (pixels[train], targets[train]), (pixels[held], targets[held]), names


# --- tfds


def _tfds_builder(config: Any, name: str):
    """The tfds builder, prepared (downloading where tfds can; manual data sets say what to fetch)."""
    tfds = tflib.load('tensorflow_datasets')
    data_dir = _get(config, 'tfds_data_dir')
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f'config.dataset={name!r} is not a tfds data set, "digits", a folder or a CSV file'
                         + (' (imagenet21k is not in the public tfds catalog: prepare it as a tfds data set '
                            'in config.tfds_data_dir, or give a folder of class folders)'
                            if name == 'imagenet21k' else '')) from None
    manual_dir = _get(config, 'tfds_manual_dir')
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception:  # noqa: BLE001 - re-raised unless the manual download is missing
        expected = manual_dir or os.path.join(builder.data_dir_root, 'downloads', 'manual')
        if (not getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
                or (os.path.isdir(expected) and os.listdir(expected))):
            raise
        what = MANUAL_FILES.get(name, f'the files described at https://www.tensorflow.org/datasets/catalog/{name}')
        raise DataError(f'{name} needs a manual download: put {what} in {expected} '
                                '(or set config.tfds_manual_dir to where they are)') from None
    return builder


def _readable_names(name: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """ImageNet's WordNet ids -> the human-readable labels shipped in vit_jax/data/ (same order)."""
    if name in ('imagenet2012', 'imagenet21k'):
        readable = tuple(labels.load_labels(name))
        if len(readable) == len(names):
            return readable
    return names


def _tfds_source(builder, split: str, process_index: int, process_count: int, shuffle_buffer: int
                 ) -> _Source:
    """Shard `process_index` of `split` (tfds.even_splits); epochs through a seeded shuffle buffer."""
    tfds = tflib.load('tensorflow_datasets')

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
        raise DataError(f'tfds split {builder.name}:{split} has no examples for process {process_index}')
    buffer = max(1, min(int(shuffle_buffer), n))

    def epoch(e, first, seed):
        key = tf.random.experimental.stateless_fold_in(seed, e)
        epoch_seed = tf.random.stateless_uniform([], seed=key, minval=0, maxval=2 ** 62, dtype=tf.int64)
        return shard.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False).skip(first)

    return _Source(n, total, epoch, lambda: shard)


# --- image folders and CSV files


def _class_folders(root: str, class_names: tuple[str, ...] | None = None
                   ) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Files and labels of `root/<class>/...`; classes are the sorted sub-folder names."""
    if not paths.is_dir(root):
        raise DataError(f'image folder {root} does not exist')
    found = [d for d in paths.listdir(root) if paths.is_dir(paths.join(root, d)) and not d.startswith('.')]
    if not found:
        raise DataError(f'image folder {root} has no class sub-folders (expected {root}/<class>/<image>)')
    names = class_names or tuple(found)
    files, targets = [], []
    for d in found:
        folder = paths.join(root, d)
        if d not in names:
            raise DataError(f'class folder {folder} is not a training class ({", ".join(names)})')
        found_files = images.image_files(folder)
        if not found_files:
            raise DataError(f'class folder {folder} has no images ({", ".join(images.IMAGE_EXTENSIONS)})')
        files += found_files
        targets += [names.index(d)] * len(found_files)
    return files, targets, names


def _csv_rows(path: str) -> tuple[list[str], list[str], list[str]]:
    """(paths, labels, splits) of a `path,label[,split]` CSV; relative paths are relative to it."""
    base = paths.parent(path) if paths.is_remote(path) else os.path.dirname(os.path.abspath(path))
    files, names, splits = [], [], []
    for n, row in enumerate(csv.reader(io.StringIO(paths.read_text(path)))):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith('#'):
            continue
        if n == 0 and row[0].lower() in ('path', 'file', 'filename', 'image'):
            continue  # header
        if len(row) < 2 or not row[1]:
            raise DataError(f'{path}:{n + 1}: expected "path,label[,split]", got {",".join(row)!r}')
        files.append(row[0] if paths.is_remote(row[0]) or os.path.isabs(row[0]) else paths.join(base, row[0]))
        names.append(row[1])
        splits.append(row[2].lower() if len(row) > 2 else '')
    if not files:
        raise DataError(f'CSV file {path} has no rows (expected "path,label[,split]")')
    return files, names, splits


def read_image_file(path: tf.Tensor, max_pixels: int = images.MAX_PIXELS) -> tf.Tensor:
    """The encoded bytes of an image file (`vit_jax.images.encoded_bytes`), inside tf.data.

    Local files TensorFlow decodes natively are read by tf.io.read_file (no Python); the others,
    and every remote file, through `images.encoded_bytes` (vit_jax.paths).
    """

    def encoded(p: np.ndarray) -> bytes:
        return images.encoded_bytes(os.fsdecode(np.asarray(p).item()), max_pixels)

    native = tf.logical_not(tf.logical_or(
        tf.strings.regex_full_match(tf.strings.lower(path), r'.*\.(tiff?|ppm|webp)'),
        tf.strings.regex_full_match(path, r'[a-z][a-z0-9+.-]*://.*')))

    def via_python():
        data = tf.numpy_function(encoded, [path], tf.string, stateful=False)
        data.set_shape([])
        return data

    return tf.cond(native, lambda: tf.io.read_file(path), via_python)


def _drop_unreadable(files: list[str], targets: list[int], where: str, max_pixels: int
                     ) -> tuple[list[str], list[int]]:
    """Checks every file once (threads); skips unreadable ones (and those of more than `max_pixels`
    pixels) with ONE warning that names them."""
    from tqdm import tqdm
    check = functools.partial(images.check_image, max_pixels=max_pixels)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, 2 * (os.cpu_count() or 1))) as pool:
        problems = list(tqdm(pool.map(check, files), total=len(files), desc=f'checking {where}',
                             disable=len(files) < 5000, leave=False))
    bad = [(p, why) for p, why in zip(files, problems, strict=True) if why]
    if bad:
        shown = '; '.join(f'{p} ({why})' for p, why in bad[:20])
        more = f'; and {len(bad) - 20} more' if len(bad) > 20 else ''
        logger.warning('Skipping %d image(s) of %d in %s: %s%s', len(bad), len(files), where,
                       shown, more)
    keep = [i for i, why in enumerate(problems) if not why]
    return [files[i] for i in keep], [targets[i] for i in keep]


def _check_disjoint(train: list[str], evaluation: list[str], where: str) -> None:
    """DataError if a file (by real path) is in both splits: its eval accuracy would be a training one."""
    real = lambda p: p if paths.is_remote(p) else os.path.realpath(p)  # noqa: E731
    seen = {real(p): p for p in train}
    for p in evaluation:
        if real(p) in seen:
            raise DataError(f'{where}: {p} is in the eval split and, as {seen[real(p)]}, in the '
                            'training split')


def _file_sources(config: Any, process_index: int, process_count: int
                  ) -> tuple[_Source, _Source, tuple[str, ...]]:
    """Sources of a class-folder tree or a CSV file, with a fixed stratified holdout if no eval split."""
    where = str(_get(config, 'dataset'))
    holdout = float(_get(config, 'pp.holdout'))
    if paths.is_dir(where):
        train_root = paths.join(where, 'train')
        eval_root = next((paths.join(where, d) for d in EVAL_DIR_NAMES if paths.is_dir(paths.join(where, d))),
                         None)
        if paths.is_dir(train_root):
            files, targets, names = _class_folders(train_root)
            if eval_root is None:
                eval_files, eval_targets = None, None
            else:
                eval_files, eval_targets, _ = _class_folders(eval_root, names)
        else:
            files, targets, names = _class_folders(where)
            eval_files, eval_targets = None, None
    else:
        files, raw_labels, splits = _csv_rows(where)
        if all(s.lstrip('-').isdigit() for s in raw_labels):
            targets = [int(s) for s in raw_labels]
            if min(targets) < 0:
                raise DataError(f'CSV file {where}: negative label {min(targets)}')
            names = tuple(str(i) for i in range(max(targets) + 1))
        else:
            names = tuple(sorted(set(raw_labels)))
            targets = [names.index(s) for s in raw_labels]
        is_eval = [s in ('val', 'validation', 'test', 'eval') for s in splits]
        if any(is_eval):
            eval_files = [p for p, e in zip(files, is_eval, strict=True) if e]
            eval_targets = [y for y, e in zip(targets, is_eval, strict=True) if e]
            files = [p for p, e in zip(files, is_eval, strict=True) if not e]
            targets = [y for y, e in zip(targets, is_eval, strict=True) if not e]
        else:
            eval_files, eval_targets = None, None
    if len(names) < 2:
        raise DataError(f'{where} has {len(names)} class ({", ".join(names) or "none"}); a classifier needs '
                        'at least 2')
    if eval_files is not None:
        _check_disjoint(files, eval_files, where)
    max_pixels = int(_get(config, 'pp.max_image_pixels'))
    if _get(config, 'pp.check_images'):
        files, targets = _drop_unreadable(files, targets, where, max_pixels)
        if eval_files is not None:
            eval_files, eval_targets = _drop_unreadable(eval_files, eval_targets, where, max_pixels)
    if eval_files is None:
        train_idx, eval_idx = _stratified_split(np.asarray(targets), holdout)
        eval_files, eval_targets = [files[i] for i in eval_idx], [targets[i] for i in eval_idx]
        files, targets = [files[i] for i in train_idx], [targets[i] for i in train_idx]
    for what, found in (('training', files), ('eval', eval_files)):
        if not found:
            raise DataError(f'{where} has no readable {what} images')
    missing = sorted(set(range(len(names))) - set(targets))
    if missing and paths.is_dir(where):
        raise DataError(f'class {names[missing[0]]!r} of {where} has no readable training images')

    read = functools.partial(read_image_file, max_pixels=max_pixels)

    def source(p, y):
        return _indexed_source(np.asarray(p, dtype=object).astype(bytes), np.asarray(y), process_index,
                               process_count, read=read)
    return source(files, targets), source(eval_files, eval_targets), names


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
                raise DataError(f'input pipeline state has {key}={state[key]!r} but this pipeline has '
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
        return preprocessing.preprocess_train(image, label, key, pp)

    ds = ds.map(graph_function(example), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    if mix['mixup_alpha'] > 0 or mix['cutmix_alpha'] > 0:
        batch_base = tf.random.experimental.stateless_fold_in(base, -1)

        def mixed(batch, s):
            return augment.mix_batch(batch, tf.random.experimental.stateless_fold_in(batch_base, s), **mix)

        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(step, 2 ** 62)).map(
            graph_function(mixed), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _eval_dataset(source: _Source, pp: Preprocessing, batch_size: int, process_count: int
                  ) -> tuple[tf.data.Dataset, int]:
    """The shard once in order + all-padding examples so every process yields `num_batches`."""
    num_batches = math.ceil(math.ceil(source.total_examples / process_count) / batch_size)
    pad = num_batches * batch_size - source.num_examples

    def example(record, label):
        ex = preprocessing.preprocess_eval(record, label, pp)
        return {**ex, 'mask': tf.constant(1.0, tf.float32)}

    ds = source.in_order().map(graph_function(example), num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=True)
    padding = tf.data.Dataset.from_tensors({
        'image': tf.zeros([pp.crop, pp.crop, 3], tf.float32),
        'label': tf.zeros([pp.num_classes], tf.float32),
        'mask': tf.constant(0.0, tf.float32)}).repeat(pad)
    ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE), num_batches


# ----------------------------------------------------------------------------------------------
# Entry point


def _sources(config: Any, process_index: int, process_count: int
             ) -> tuple[_Source, _Source, tuple[str, ...]]:
    name = str(_get(config, 'dataset') or '')
    if not name:
        raise ConfigError('config.dataset is not set: give a tfds name, "digits", a folder or a CSV file')
    if name == 'digits':
        (xt, yt), (xe, ye), names = digits_splits(float(_get(config, 'pp.holdout')))
        return (_indexed_source(xt, yt, process_index, process_count),
                _indexed_source(xe, ye, process_index, process_count), names)
    if name.lower().endswith('.csv'):
        if not paths.is_file(name):
            raise DataError(f'config.dataset={name!r}: CSV file not found')
        return _file_sources(config, process_index, process_count)
    if paths.is_remote(name) or os.sep in name or paths.is_dir(name):
        if not paths.is_dir(name):
            raise DataError(f'config.dataset={name!r}: no such folder')
        return _file_sources(config, process_index, process_count)
    builder = _tfds_builder(config, name)
    if 'label' not in builder.info.features or 'image' not in builder.info.features:
        raise DataError(f'tfds data set {name!r} has no image/label features')
    label_names = getattr(builder.info.features['label'], 'names', None)
    if not label_names:
        raise DataError(f'tfds data set {name!r}: its label feature is not a ClassLabel with class names')
    names = _readable_names(name, tuple(label_names))
    buffer = int(_get(config, 'shuffle_buffer'))
    train = _tfds_source(builder, str(_get(config, 'pp.train')), process_index, process_count, buffer)
    evals = _tfds_source(builder, str(_get(config, 'pp.test')), process_index, process_count, buffer)
    return train, evals, names


def _split_source(config: Any, split: str) -> tuple[_Source, Preprocessing]:
    """The whole (one-process) 'train' or 'test' split of `config.dataset` and its preprocessing."""
    if split not in ('train', 'test'):
        raise ValueError(f"split {split!r}: expected 'train' or 'test' (tfds splits are pp.train / pp.test)")
    train, evals, names = _sources(config, 0, 1)
    return (train if split == 'train' else evals), preprocessing.from_config(config, len(names))


def split_labels(config: Any, split: str = 'test') -> np.ndarray:
    """Integer labels of the 'train' or 'test' split, in the order `eval_examples` yields them.

    Folders, CSVs and digits know them without reading an image; tfds reads the (undecoded) records.
    """
    source, _ = _split_source(config, split)
    if source.labels is not None:
        return source.labels
    return np.fromiter(source.in_order().map(lambda r, y: y).as_numpy_iterator(), np.int64)


@dataclasses.dataclass
class Examples:
    """An iterator of `eval_examples` that knows how many it yields (`len`), for progress bars."""

    iterator: Iterator[tuple[np.ndarray, int]]
    count: int

    def __iter__(self) -> Examples:
        return self

    def __next__(self) -> tuple[np.ndarray, int]:
        return next(self.iterator)

    def __len__(self) -> int:
        return self.count


def eval_examples(config: Any, split: str = 'test', indices: np.ndarray | None = None) -> Examples:
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
            raise DataError(f'eval_examples: index {np.max(indices)} is out of range for the {split} split '
                            f'of {_get(config, "dataset")!r} ({source.num_examples} examples)') from None
        keep_t = tf.constant(keep)
        ds = ds.enumerate().filter(lambda i, example: keep_t[i])
        ds = ds.map(lambda j, record: record).take(int(keep.sum()))   # stop reading after the last one
    ds = ds.map(graph_function(lambda r, y: (preprocessing.eval_image(r, pp), y)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    count = source.num_examples if indices is None else int(keep.sum())
    return Examples(((image, int(label)) for image, label in ds.as_numpy_iterator()), count)



def get_datasets(config: Any, *, batch_sharding: jax.sharding.NamedSharding | None = None,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> tuple[TrainIterator, EvalDataset, DatasetInfo]:
    """Train iterator, eval data set and info for `config` (see the module docstring).

    `process_index` / `process_count` default to JAX's; pass them to simulate several hosts.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    batch, batch_eval = int(_get(config, 'batch')), int(_get(config, 'batch_eval'))
    for key, value in (('batch', batch), ('batch_eval', batch_eval)):
        if value < 1 or value % process_count:
            raise ConfigError(f'config.{key}={value} must be a positive multiple of the number of processes '
                              f'({process_count})')
    seed = int(_get(config, 'seed'))

    train, evals, class_names = _sources(config, process_index, process_count)
    pp = preprocessing.from_config(config, len(class_names))
    local_batch = batch // process_count
    mix = dict(mixup_alpha=float(_get(config, 'aug.mixup_alpha')),
               cutmix_alpha=float(_get(config, 'aug.cutmix_alpha')),
               switch_prob=float(_get(config, 'aug.mixup_switch_prob')),
               prob=float(_get(config, 'aug.mixup_prob')))
    identity = {'seed': seed, 'batch': batch, 'num_train': train.total_examples,
                'process_count': process_count}
    train_iter = TrainIterator(
        lambda step: _train_dataset(train, pp, local_batch, seed, process_index, step, mix),
        identity, batch_sharding, int(_get(config, 'prefetch')))
    eval_tf, num_batches = _eval_dataset(evals, pp, batch_eval // process_count, process_count)
    info = DatasetInfo(num_classes=len(class_names), num_train=train.total_examples,
                       num_eval=evals.total_examples, class_names=tuple(class_names), image_size=pp.crop)
    return train_iter, EvalDataset(eval_tf, num_batches, batch_sharding), info
