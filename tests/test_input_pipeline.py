"""Input pipeline: digits, tfds (mocked), image folders, CSV, sharding, resumption."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from vit_jax import input_pipeline as ip
from vit_jax import labels as labels_lib
from vit_jax import preprocessing
from vit_jax.configs import common
from vit_jax.errors import ConfigError, DataError


def _config(dataset, **kw):
    """A complete config (every field of vit_jax/configs/common.py), the data set's preset written in
    as `with_dataset` does, then `kw` (`pp` updates the preprocessing fields)."""
    config = (common.with_dataset(common.get_config(), dataset) if dataset in common.DATASET_PRESETS
              else ConfigDict(common.get_config().to_dict()))
    config.dataset = dataset
    config.update(dict(batch=16, batch_eval=24, seed=0, shuffle_buffer=64, prefetch=1))
    config.pp.update(kw.pop('pp', {}))
    config.update(kw)
    return config


def _take(it, n):
    return [next(it) for _ in range(n)]


def _eval_labels(ds):
    """Integer labels of the real (mask=1) eval examples, in order."""
    out = []
    for b in ds:
        m = np.asarray(b['mask']) > 0
        out.append(np.argmax(np.asarray(b['label'])[m], -1))
    return np.concatenate(out)


def test_digits_shapes_classes_and_fixed_split():
    train, evals, info = ip.get_datasets(_config('digits', pp=dict(crop=24, resize=27)))
    assert info.num_classes == 10 and info.class_names == tuple('0123456789')
    assert info.num_train + info.num_eval == 1797 and info.image_size == 24
    assert 0.19 < info.num_eval / 1797 < 0.21
    b = next(train)
    assert b['image'].shape == (16, 24, 24, 3) and b['image'].dtype == np.float32
    assert b['image'].min() >= -1 and b['image'].max() <= 1
    assert b['image'].min() == -1  # digit background is black -> -1 exactly
    np.testing.assert_array_equal(b['image'][..., 0], b['image'][..., 2])  # grey replicated to RGB
    assert b['label'].shape == (16, 10) and set(np.unique(b['label'])) == {0.0, 1.0}
    np.testing.assert_allclose(b['label'].sum(1), 1)
    # The split does not depend on the seed: same eval labels in the same order.
    _, evals2, _ = ip.get_datasets(_config('digits', pp=dict(crop=24, resize=27), seed=7))
    labels = _eval_labels(evals)
    np.testing.assert_array_equal(labels, _eval_labels(evals2))
    assert len(labels) == info.num_eval and np.bincount(labels).min() >= 30  # stratified


def test_digits_eval_is_resize_of_the_original_digit():
    from sklearn.datasets import load_digits
    _, evals, _ = ip.get_datasets(_config('digits', pp=dict(crop=8, eval_crop='resize')))
    b = next(iter(evals))
    # crop 8 == source size: the image is the digit itself, (x/16*255 rounded - 127.5) / 127.5.
    pixels = np.round(b['image'][0, ..., 0] * 127.5 + 127.5) / 255 * 16
    assert any(np.allclose(pixels, d, atol=0.05) for d in load_digits().images)


def test_train_order_is_deterministic_per_seed_and_resumable():
    cfg = _config('digits', pp=dict(crop=16))
    a, _, _ = ip.get_datasets(cfg)
    b, _, _ = ip.get_datasets(cfg)
    c, _, _ = ip.get_datasets(_config('digits', pp=dict(crop=16), seed=1))
    xa, xb, xc = next(a), next(b), next(c)
    np.testing.assert_array_equal(xa['image'], xb['image'])
    assert not np.array_equal(xa['label'], xc['label'])
    # Across an epoch boundary (1438 / 16 = 89.9 batches per epoch).
    _take(a, 95)
    state = a.get_state()
    assert state['step'] == 96
    expected = _take(a, 3)
    restored, _, _ = ip.get_datasets(cfg)
    restored.set_state(state)
    for want, got in zip(expected, _take(restored, 3), strict=True):
        np.testing.assert_array_equal(want['image'], got['image'])
        np.testing.assert_array_equal(want['label'], got['label'])
    with pytest.raises(DataError, match='seed'):
        c.set_state(state)


def test_eval_covers_every_example_once():
    train, evals, info = ip.get_datasets(_config('digits', pp=dict(crop=8), batch_eval=64))
    batches = list(evals)
    assert len(batches) == len(evals) == -(-info.num_eval // 64)
    assert all(b['image'].shape == (64, 8, 8, 3) for b in batches)
    mask = np.concatenate([b['mask'] for b in batches])
    assert mask.sum() == info.num_eval and mask[:info.num_eval].all()
    images = np.concatenate([b['image'] for b in batches])[:info.num_eval]
    assert len({im.tobytes() for im in images}) > 0.9 * info.num_eval  # (a few digits are duplicates)
    assert len(list(evals)) == len(batches)  # re-iterable


# --- tfds (mocked: offline)


@pytest.mark.slow
@pytest.mark.parametrize('name,num_classes', [('cifar10', 10), ('oxford_flowers102', 102)])
def test_tfds_mock_shapes_eval_coverage_and_determinism(name, num_classes, tmp_path):
    import tensorflow_datasets as tfds
    cfg = _config(name, batch=8, batch_eval=6, tfds_data_dir=str(tmp_path), pp=dict(crop=32))
    with tfds.testing.mock_data(num_examples=20):
        train, evals, info = ip.get_datasets(cfg)
        train2, _, _ = ip.get_datasets(cfg)
        other, _, _ = ip.get_datasets(_config(name, batch=8, batch_eval=6, tfds_data_dir=str(tmp_path),
                                              pp=dict(crop=32), seed=3))
        first = _take(train, 4)  # 32 examples: crosses the 20-example epoch
        b = first[0]
        assert info.num_classes == num_classes == len(info.class_names) and info.image_size == 32
        assert b['image'].shape == (8, 32, 32, 3) and b['image'].dtype == np.float32
        assert -1 <= b['image'].min() < 0 < b['image'].max() <= 1
        assert b['label'].shape == (8, num_classes) and set(np.unique(b['label'])) == {0.0, 1.0}
        np.testing.assert_array_equal(b['label'].sum(1), 1)
        for want, got in zip(first, _take(train2, 4), strict=True):
            np.testing.assert_array_equal(want['image'], got['image'])
        assert not np.array_equal(b['image'], next(other)['image'])
        batches = list(evals)
        assert len(batches) == len(evals) == 4  # ceil(20 / 6)
        mask = np.concatenate([x['mask'] for x in batches])
        assert mask.sum() == info.num_eval == 20
        images = np.concatenate([x['image'] for x in batches])[mask > 0]
        assert len({im.tobytes() for im in images}) == 20  # every example exactly once
        # Resume in the middle of the second epoch.
        train3, _, _ = ip.get_datasets(cfg)
        _take(train3, 3)
        state = train3.get_state()
        resumed, _, _ = ip.get_datasets(cfg)
        resumed.set_state(state)
        np.testing.assert_array_equal(next(resumed)['image'], first[3]['image'])


def test_imagenet_without_manual_download_names_the_directory(tmp_path):
    cfg = _config('imagenet2012', tfds_data_dir=str(tmp_path))
    with pytest.raises(DataError, match='manual download.*ILSVRC2012_img_train.tar') as e:
        ip.get_datasets(cfg)
    assert str(tmp_path / 'downloads' / 'manual') in str(e.value)
    cfg.tfds_manual_dir = str(tmp_path / 'mine')
    with pytest.raises(DataError, match=str(tmp_path / 'mine')):
        ip.get_datasets(cfg)


def test_imagenet_preset_splits_and_readable_class_names(tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=5):
        train, _, info = ip.get_datasets(_config('imagenet2012', batch=4, tfds_data_dir=str(tmp_path),
                                                 pp=dict(crop=16)))
        assert next(train)['label'].shape == (4, 1000)
    assert info.class_names[:2] == ('tench, Tinca tinca', 'goldfish, Carassius auratus')


# --- image folders and CSV files

GREYS = (40, 120, 200)  # class k images are uniformly grey GREYS[k], whatever their mode


def _write_images(folder, grey, count, start=0):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    modes = ['RGB', 'L', 'RGBA', 'RGB']
    for i in range(start, start + count):
        mode, size = modes[i % 4], (30 + 7 * i, 20 + 5 * (i % 3))
        value = (grey,) * (len(mode) if mode != 'RGBA' else 3) + ((255,) if mode == 'RGBA' else ())
        im = Image.new(mode, size, value if mode != 'L' else grey)
        ext = 'png' if mode == 'RGBA' or i % 3 == 0 else 'jpg'  # greyscale and RGB JPEGs, RGBA PNGs
        im.save(folder / f'{i:02d}.{ext}', quality=95)


def _label_from_pixels(batch):
    """The class whose grey level the (uniform) image has."""
    grey = np.asarray(batch['image']).mean(axis=(1, 2, 3)) * 127.5 + 127.5
    return np.argmin(np.abs(grey[:, None] - np.asarray(GREYS)[None]), 1)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / 'pictures'
    for k, name in enumerate(['cat', 'dog', 'emu']):
        _write_images(root / name, GREYS[k], 10)
    (root / 'dog' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a jpeg')
    (root / 'cat' / 'notes.txt').write_text('not an image: ignored')
    return root


def test_image_folder_labels_and_corrupt_file_reported_once(image_folder, caplog):
    cfg = _config(str(image_folder), batch=6, batch_eval=4, pp=dict(crop=16, holdout=0.2))
    with caplog.at_level('WARNING', logger='vit_jax.input_pipeline'):
        train, evals, info = ip.get_datasets(cfg)
    warnings = [r for r in caplog.records if 'unreadable' in r.getMessage()]
    assert len(warnings) == 1 and 'broken.jpg' in warnings[0].getMessage()
    assert info.class_names == ('cat', 'dog', 'emu')
    assert info.num_train + info.num_eval == 30 and info.num_eval == 6
    for b in _take(train, 10):  # 60 examples: several epochs over 24
        assert b['image'].shape == (6, 16, 16, 3)
        np.testing.assert_array_equal(np.argmax(b['label'], 1), _label_from_pixels(b))
    batches = list(evals)
    mask = np.concatenate([b['mask'] for b in batches]) > 0
    labels = np.concatenate([np.argmax(b['label'], 1) for b in batches])[mask]
    np.testing.assert_array_equal(np.bincount(labels), [2, 2, 2])
    np.testing.assert_array_equal(labels, np.concatenate([_label_from_pixels(b) for b in batches])[mask])


def test_image_folder_with_train_and_val_dirs(tmp_path):
    root = tmp_path / 'ds'
    for k, name in enumerate(['a', 'b']):
        _write_images(root / 'train' / name, GREYS[k], 5)
        _write_images(root / 'val' / name, GREYS[k], 2, start=5)
    train, evals, info = ip.get_datasets(_config(str(root), batch=4, batch_eval=4, pp=dict(crop=8)))
    assert (info.num_train, info.num_eval, info.class_names) == (10, 4, ('a', 'b'))
    b = next(iter(evals))
    np.testing.assert_array_equal(np.argmax(b['label'], 1), _label_from_pixels(b))


def test_empty_folder_or_class_is_a_clear_error(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='no class sub-folders'):
        ip.get_datasets(_config(str(tmp_path / 'empty')))
    _write_images(tmp_path / 'ds' / 'full', 100, 3)
    (tmp_path / 'ds' / 'hollow').mkdir()
    with pytest.raises(DataError, match=f'{tmp_path / "ds" / "hollow"} has no images'):
        ip.get_datasets(_config(str(tmp_path / 'ds')))
    with pytest.raises(DataError, match='nowhere'):
        ip.get_datasets(_config(str(tmp_path / 'nowhere')))


def test_csv_dataset_with_split_column_and_missing_file(tmp_path, caplog):
    for k in range(2):
        _write_images(tmp_path / 'img' / str(k), GREYS[k], 6)
    rows = ['path,label,split']
    for k, name in enumerate(['zebra', 'ant']):  # label names sort to ant=0, zebra=1
        for i, f in enumerate(sorted((tmp_path / 'img' / str(k)).iterdir())):
            rows.append(f'img/{k}/{f.name},{name},{"test" if i < 2 else "train"}')
    rows.append('img/0/missing.jpg,zebra,train')
    (tmp_path / 'data.csv').write_text('\n'.join(rows) + '\n')
    with caplog.at_level('WARNING', logger='vit_jax.input_pipeline'):
        train, evals, info = ip.get_datasets(_config(str(tmp_path / 'data.csv'), batch=4, batch_eval=4,
                                                     pp=dict(crop=8)))
    assert 'missing.jpg' in caplog.text
    assert (info.class_names, info.num_train, info.num_eval) == (('ant', 'zebra'), 8, 4)
    b = next(train)
    # zebra rows are the GREYS[0] images: label 1 <-> grey 0.
    np.testing.assert_array_equal(np.argmax(b['label'], 1), 1 - _label_from_pixels(b))


# --- several processes, device sharding


def test_two_processes_read_disjoint_shards_covering_the_data():
    import collections
    cfg = _config('digits', batch=16, batch_eval=40, pp=dict(crop=8, train_crop='resize'))

    def keys(batches):
        out = collections.Counter()
        for b in batches:
            m = np.asarray(b.get('mask', np.ones(len(b['image'])))) > 0
            for im, y in zip(np.asarray(b['image'])[m], np.asarray(b['label'])[m], strict=True):
                out[im.tobytes() + y.tobytes()] += 1
        return out

    _, full_eval, info = ip.get_datasets(cfg)
    shards = [ip.get_datasets(cfg, process_index=p, process_count=2) for p in range(2)]
    assert len(shards[0][1]) == len(shards[1][1])  # same number of eval batches on every host
    assert next(shards[0][0])['image'].shape[0] == 8  # per-process batch
    assert keys(shards[0][1]) + keys(shards[1][1]) == keys(full_eval)
    # Train: one epoch of each shard (global batch 2 -> 1 per process; no random crop, no flip).
    cfg.batch = 2
    full = keys(_take(ip.get_datasets(cfg)[0], info.num_train // 2))
    t0, t1 = (keys(_take(ip.get_datasets(cfg, process_index=p, process_count=2)[0], info.num_train // 2))
              for p in range(2))
    assert t0 + t1 == full and sum(full.values()) == info.num_train


def test_batch_sharding_yields_global_arrays_with_that_sharding():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((1,), ('data',))
    sharding = NamedSharding(mesh, PartitionSpec('data'))
    train, evals, _ = ip.get_datasets(_config('digits', pp=dict(crop=8), prefetch=2), batch_sharding=sharding)
    for batch in (next(train), next(iter(evals))):
        for v in batch.values():
            assert isinstance(v, jax.Array) and v.sharding == sharding
    assert batch['mask'].shape == (24,)


def test_inception_crop_of_a_jpeg_matches_decoding_it_whole():
    """The JPEG fast path (decode only the box) gives the original's crop of the decoded image."""
    import io

    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    photo = photo.resize((160, 120), Image.BILINEAR)
    buffer = io.BytesIO()
    photo.save(buffer, 'JPEG', quality=90)
    data = tf.constant(buffer.getvalue())
    crops = []
    for k in range(6):
        seed = tf.constant([k, 1], tf.int64)
        fast = preprocessing.inception_crop(data, seed, 32).numpy()
        slow = preprocessing.inception_crop(preprocessing.decode(data), seed, 32).numpy()
        diff = np.abs(fast - slow)  # chroma upsampling differs only along the box edge
        assert diff.mean() < 0.5 and diff[1:-2, 1:-2].max() < 2
        crops.append(fast)
    assert not np.allclose(crops[0], crops[1])  # different seeds, different boxes


_WORKER = r'''
import json, sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from vit_jax import input_pipeline as ip
from vit_jax.configs import common
sharding = NamedSharding(jax.make_mesh((2,), ('data',)), PartitionSpec('data'))
cfg = common.with_dataset(common.get_config(), 'digits')
cfg.update(dict(batch=8, batch_eval=64, prefetch=1))
cfg.pp.crop = 8
train, evals, info = ip.get_datasets(cfg, batch_sharding=sharding)
batch = next(train)
local = np.asarray(batch['image'].addressable_shards[0].data)
seen = sum(float(jax.jit(jnp.sum)(b['mask'])) for b in evals)
print('RESULT', json.dumps(dict(shape=list(batch['image'].shape), local=local.shape[0],
                                checksum=float(local.sum()), seen=seen, num_eval=info.num_eval)))
'''


@pytest.mark.slow
def test_two_real_processes_make_global_batches(tmp_path):
    """jax.distributed over two local processes: global arrays from disjoint per-process halves."""
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        address = f'127.0.0.1:{s.getsockname()[1]}'
    script = tmp_path / 'worker.py'
    script.write_text(_WORKER)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': repo}
    procs = [subprocess.Popen([sys.executable, str(script), address, str(p)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for p in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    results = []
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:]
        results.append(json.loads(out.split('RESULT ')[-1]))
    for r in results:
        assert r['shape'] == [8, 8, 8, 3] and r['local'] == 4  # global batch, half per process
        assert r['seen'] == r['num_eval']  # the global eval pass counts every example once
    assert results[0]['checksum'] != results[1]['checksum']


def test_center_eval_crop_and_random_train_crop():
    def first_eval(**pp):
        return next(iter(ip.get_datasets(_config('digits', pp=pp))[1]))['image']

    whole = first_eval(crop=16, eval_crop='resize')
    center = first_eval(crop=8, resize=16, eval_crop='center')
    np.testing.assert_allclose(center, whole[:, 4:12, 4:12], atol=1e-6)
    pp = dict(crop=8, resize=12, train_crop='random', flip=True)
    train, _, _ = ip.get_datasets(_config('digits', pp=pp))
    assert next(train)['image'].shape == (16, 8, 8, 3)
    with pytest.raises(ConfigError, match='pp.train_crop'):
        ip.get_datasets(_config('digits', pp=dict(train_crop='bogus')))
    with pytest.raises(ConfigError, match='pp.resize is not set'):   # no hidden default size
        ip.get_datasets(_config('digits', pp=dict(resize=None)))


# --- public helpers shared with predict / fewshot


def test_load_labels_shipped_sets_and_text_files(tmp_path):
    one, full = labels_lib.load_labels('imagenet2012'), labels_lib.load_labels('imagenet21k')
    assert len(one) == 1000 and len(full) == 21843 and one[0] == 'tench, Tinca tinca'
    assert labels_lib.load_labels('imagenet1k') == one
    path = tmp_path / 'labels.txt'
    path.write_text('  cat \n\ndog\n   \nbird\n')
    assert labels_lib.load_labels(str(path)) == ['cat', 'dog', 'bird']
    with pytest.raises(DataError, match='nope.txt'):
        labels_lib.load_labels(str(tmp_path / 'nope.txt'))


def test_digits_preset_is_what_configs_digits_uses():
    """configs/digits.py carries the digits preprocessing in the config itself."""
    import os

    from vit_jax import config_util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'digits.py')
    config = config_util.load_file(path)
    assert preprocessing.from_config(config) == preprocessing.from_config(_config('digits')) == \
        preprocessing.Preprocessing(crop=16, train_crop='random', eval_crop='center', resize=18, flip=False)


def test_eval_examples_of_a_folder_follow_split_labels(image_folder):
    from PIL import Image
    Image.new('RGB', (12, 9), (GREYS[2],) * 3).save(image_folder / 'emu' / 'extra.tif')  # via Pillow
    cfg = _config(str(image_folder), pp=dict(crop=16, holdout=0.2))
    for split, count in (('train', 25), ('test', 6)):   # broken.jpg skipped, extra.tif read
        labels = ip.split_labels(cfg, split)
        sized = ip.eval_examples(cfg, split)
        examples = list(sized)
        assert len(examples) == len(labels) == len(sized) == count   # known before reading (progress bars)
        images = np.stack([im for im, _ in examples])
        assert images.shape == (count, 16, 16, 3) and images.dtype == np.float32
        np.testing.assert_array_equal([y for _, y in examples], labels)
        np.testing.assert_array_equal(labels, _label_from_pixels({'image': images}))
    assert len(ip.eval_examples(cfg, 'train', indices=[7, 2, 20])) == 3
    some = list(ip.eval_examples(cfg, 'train', indices=[7, 2, 20]))
    np.testing.assert_array_equal([y for _, y in some], ip.split_labels(cfg, 'train')[[2, 7, 20]])
    with pytest.raises(DataError, match='index 99 is out of range'):
        ip.eval_examples(cfg, 'train', indices=[99])
    with pytest.raises(ValueError, match="split 'val'"):
        ip.eval_examples(cfg, 'val')


def test_eval_examples_of_digits_are_the_eval_batches():
    cfg = _config('digits')
    _, evals, info = ip.get_datasets(cfg)
    examples = list(ip.eval_examples(cfg, 'test'))
    assert len(examples) == info.num_eval and examples[0][0].shape == (16, 16, 3)   # the digits preset
    first = next(iter(evals))
    np.testing.assert_array_equal(np.stack([im for im, _ in examples[:24]]), first['image'])
    np.testing.assert_array_equal([y for _, y in examples[:24]], np.argmax(first['label'], 1))
