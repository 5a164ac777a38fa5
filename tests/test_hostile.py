"""Hostile and malformed input: every bad image, data set, config value, checkpoint and export file
gets a one-line refusal naming the culprit, in bounded time and memory; nothing wrong is accepted."""

import io
import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from ml_collections import ConfigDict
from PIL import Image

from vit_jax import archives, checkpoint, export, images, main, preprocessing, resolve, serving, trees
from vit_jax import input_pipeline as ip
from vit_jax.checkpoint import loader
from vit_jax.configs import common
from vit_jax.configs import models as model_configs
from vit_jax.errors import CheckpointError, ConfigError, DataError
from vit_jax.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(0)
BASE = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Images: one decoding, whichever entry point reads the file

def _write_images(folder):
    """Every kind of image file the decoder has to agree on, with the RGB pixels it must give
    (None where a lossy codec decides the exact values)."""
    os.makedirs(folder, exist_ok=True)
    grey = BASE[..., 0]
    cases = {}

    def save(name, image, expected, **kw):
        image.save(os.path.join(folder, name), **kw)
        cases[name] = expected

    save('rgb.png', Image.fromarray(BASE), BASE)
    rgba = np.concatenate([BASE, np.full((20, 24, 1), 7, np.uint8)], -1)
    save('rgba.png', Image.fromarray(rgba), BASE)                  # alpha dropped, colour kept
    save('grey.png', Image.fromarray(grey), np.repeat(grey[..., None], 3, -1))
    save('grey_alpha.png', Image.fromarray(grey).convert('LA'), np.repeat(grey[..., None], 3, -1))
    # 16-bit: v * 257 must come back as v (scaled, not clipped to white).
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)
    assert sixteen.mode.startswith('I;16')
    save('grey16.png', sixteen, np.repeat(grey[..., None], 3, -1))
    save('grey16.tiff', sixteen, np.repeat(grey[..., None], 3, -1))
    palette = Image.fromarray(BASE).quantize(64)
    save('palette_transparent.png', palette, np.asarray(palette.convert('RGB')), transparency=0)
    first, second = Image.fromarray(BASE), Image.fromarray(255 - BASE)
    save('animated.gif', first.quantize(256), np.asarray(first.quantize(256).convert('RGB')), save_all=True,
         append_images=[second.quantize(256)])
    save('animated.webp', first, BASE, save_all=True, append_images=[second], lossless=True)
    save('cmyk.jpg', first.convert('CMYK'), None, quality=95)
    exif = first.getexif()
    exif[0x0112] = 6   # "rotate 90": not applied anywhere (as tf.data pipelines)
    save('exif_rotated.jpg', first, None, exif=exif, quality=95)
    save('plain.tiff', first, BASE)
    return cases


def test_every_image_kind_gives_the_same_model_input_at_every_entry_point(tmp_path):
    cases = _write_images(str(tmp_path / 'data' / 'test' / 'a'))
    for cls in ('a', 'b'):
        _write_images(str(tmp_path / 'data' / 'train' / cls))
    config = ConfigDict(common.get_config().to_dict())
    config.update(dict(dataset=str(tmp_path / 'data'), batch=4, batch_eval=4))
    config.pp.update(dict(crop=20, eval_crop='resize'))
    names = sorted(cases)
    stored = [image for image, label in ip.eval_examples(config, 'test')]   # training / eval / few-shot
    assert len(stored) == len(names)
    # File lists are stored shuffled once with a fixed seed (every process shard holds every class).
    pipeline = [None] * len(names)
    for position, index in enumerate(np.random.default_rng(ip.SPLIT_SEED).permutation(len(names))):
        pipeline[index] = stored[position]
    files = [str(tmp_path / 'data' / 'test' / 'a' / n) for n in names]
    (_, served), = preprocessing.image_batches(files, 20, len(files))        # vit-predict / vit-analyze
    pp = preprocessing.for_inference(20)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(pipeline[i], served[i], err_msg=name)
        np.testing.assert_array_equal(served[i], preprocessing.load_image(files[i], pp), err_msg=name)
        decoded = preprocessing.decode(tf.constant(images.encoded_bytes(files[i]))).numpy()
        assert decoded.shape == (20, 24, 3) and decoded.dtype == np.uint8, name
        if cases[name] is not None:
            np.testing.assert_array_equal(decoded, cases[name], err_msg=name)
        else:   # JPEG: decoders differ by a few levels; the stored orientation (EXIF not applied)
            stored_pixels = np.asarray(Image.open(files[i]).convert('RGB'), int)
            error = np.abs(decoded - stored_pixels)
            assert error.mean() < 2 and error.max() <= 12, name   # not inverted (CMYK), not rotated


@pytest.mark.parametrize('mode', ['I', 'F'])
def test_32_bit_images_are_refused(tmp_path, mode):
    path = str(tmp_path / f'deep_{mode}.tiff')
    Image.fromarray(BASE[..., 0].astype(np.int32 if mode == 'I' else np.float32)).save(path)
    with pytest.raises(DataError, match=f'{path}: .*mode {mode}'):
        images.encoded_bytes(path)
    assert 'not supported' in images.check_image(path)


def test_garbage_image_is_one_line_naming_the_file(tmp_path):
    path = str(tmp_path / 'broken.png')
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
    with pytest.raises(DataError, match='broken.png: unreadable image') as e:
        preprocessing.load_image(path, preprocessing.for_inference(16))
    assert '\n' not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Data sets

def _folder_config(root):
    config = ConfigDict(common.get_config().to_dict())
    config.update(dict(dataset=str(root), batch=4, batch_eval=4))
    config.pp.update(dict(crop=16))
    return config


def _image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(BASE).save(path)


def test_a_single_class_is_refused(tmp_path):
    for i in range(4):
        _image(str(tmp_path / 'only' / f'{i}.png'))
    with pytest.raises(DataError, match=r'has 1 class \(only\); a classifier needs at least 2'):
        ip.get_datasets(_folder_config(tmp_path))


def test_an_empty_class_is_named(tmp_path):
    for i in range(3):
        _image(str(tmp_path / 'cat' / f'{i}.png'))
    os.makedirs(tmp_path / 'dog')
    with pytest.raises(DataError, match='dog has no images'):
        ip.get_datasets(_folder_config(tmp_path))


def test_symlink_loops_and_duplicates_count_each_file_once(tmp_path):
    for cls in ('cat', 'dog'):
        for i in range(5):
            _image(str(tmp_path / cls / f'{i}.png'))
        os.symlink(tmp_path / cls, tmp_path / cls / 'loop')          # a loop
        os.symlink(tmp_path / cls / '0.png', tmp_path / cls / 'copy.png')  # the same file twice
    assert len(images.image_files(str(tmp_path / 'cat'))) == 5
    _, _, info = ip.get_datasets(_folder_config(tmp_path))
    assert info.num_train + info.num_eval == 10


def test_a_file_in_both_splits_is_refused(tmp_path):
    for split in ('train', 'test'):
        for cls in ('cat', 'dog'):
            for i in range(2):
                _image(str(tmp_path / split / cls / f'{split}{i}.png'))
    os.symlink(tmp_path / 'train' / 'cat' / 'train0.png', tmp_path / 'test' / 'cat' / 'leak.png')
    with pytest.raises(DataError, match='leak.png is in the eval split and, as .*train0.png, in the tr'):
        ip.get_datasets(_folder_config(tmp_path))


# ---------------------------------------------------------------------------------------------
# Config values

def _cli(argv, capsys):
    """(exit code, stderr lines) of the vit-train console script."""
    with pytest.raises(SystemExit) as e:
        main.run(['vit-train', *argv])
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize('override,message', [
    ('total_steps=-5', 'config.total_steps=-5 must be >= 1'),
    ('batch=0', 'config.batch=0 must be >= 1'),
    ('batch=-8', 'config.batch=-8 must be >= 1'),
    ('batch_eval=0', 'config.batch_eval=0 must be >= 1'),
    ('accum_steps=3', 'config.batch=128 is not divisible by config.accum_steps=3'),
    ('warmup_steps=-1', 'config.warmup_steps=-1 must be >= 0'),
    ('base_lr=-0.1', 'config.base_lr=-0.1 must be >= 0'),
    ('eps=0', 'config.eps=0.0 must be > 0'),
    ('momentum=1.5', 'config.momentum=1.5 must be <= 1'),
    ('momentum=nan', 'config.momentum=nan must be a number'),
    ('pp.crop=2', "config.pp.crop=2 is smaller than the model's 4-pixel patches"),
    ('pp.holdout=1.5', 'config.pp.holdout=1.5 must be <= 1'),
    ('aug.label_smoothing=-0.1', 'config.aug.label_smoothing=-0.1 must be >= 0'),
    ('keep_checkpoints=0', 'config.keep_checkpoints=0 must be >= 1'),
    ('mesh.fsdp=0', 'config.mesh.fsdp=0 must be >= 1'),
    ('mesh.data=0', r'config.mesh.data=0 must be -1 \(all devices\) or a positive integer'),
    ('loss=hinge', "config.loss='hinge' is unknown"),
])
def test_bad_config_values_are_named(tmp_path, capsys, override, message):
    rc, err = _cli([f'--config={ROOT}/configs/digits.py', f'--workdir={tmp_path}/w', f'--config.{override}'],
                   capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith('vit-train: error: '), err
    assert re.search(message, err[0]), err[0]
    assert not os.path.exists(tmp_path / 'w' / 'checkpoint_0')


def test_bad_config_files_get_their_own_messages(tmp_path, capsys):
    bad = tmp_path / 'bad.py'
    bad.write_text('def get_config():\n    return {"batch": 8}\n')
    cases = [(f'--config={bad}', 'get_config() returned dict, not an ml_collections.ConfigDict'),
             (f'--config={ROOT}/configs/finetune.py:ViT-X_99,cifar10', "unknown model 'ViT-X_99'"),
             (f'--config={ROOT}/configs/finetune.py:ViT-B_16,nosuch', "dataset 'nosuch' has no preset"),
             (f'--config={tmp_path}/missing.py', 'no such config file')]
    for flag, message in cases:
        rc, err = _cli([flag, f'--workdir={tmp_path}/w'], capsys)
        assert rc == 2 and len(err) == 1 and message in err[0], (flag, err)


def test_resolve_checks_ranges_without_the_cli():
    config = ConfigDict(common.with_dataset(common.get_config(), 'digits').to_dict())
    config.model = model_configs.get_testing_config()
    config.total_steps = 0
    with pytest.raises(ConfigError, match='config.total_steps=0 must be >= 1'):
        resolve.resolve(config)


# ---------------------------------------------------------------------------------------------
# Checkpoint contents

def _tiny_params():
    model = get_model('testing', num_classes=3, **{'patches.size': (4, 4)})
    return jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                                         train=False)['params'])


@pytest.mark.parametrize('change,message', [
    (lambda k: k.astype(np.complex64), "'head/kernel' has dtype complex64; expected real floating point"),
    (lambda k: k.astype(np.int32), "'head/kernel' has dtype int32"),
    (lambda k: np.where(np.arange(k.size).reshape(k.shape) == 1, np.nan, k).astype(np.float32),
     "'head/kernel' holds 1 NaN/Inf values"),
    (lambda k: np.full_like(k, np.inf), "'head/kernel' holds 30 NaN/Inf values"),
])
@pytest.mark.slow
def test_non_finite_or_non_real_weights_are_refused(tmp_path, change, message):
    flat = trees.flatten(_tiny_params())
    flat['head/kernel'] = change(flat['head/kernel'])
    path = str(tmp_path / 'bad.npz')
    np.savez(path, **flat)
    for read in (checkpoint.load, loader.load, loader.load_model):
        with pytest.raises(CheckpointError, match=f'{path}: parameter {message}'):
            read(path)


def _bounded(fn, seconds=1.0, megabytes=64):
    """Runs fn (expecting a CheckpointError) and checks time and Python-visible peak memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as e:
            fn()
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < seconds and peak < megabytes * 2 ** 20, (elapsed, peak)
    assert '\n' not in str(e.value)
    return str(e.value)


def _npy_header(shape, dtype='<f4'):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {'descr': dtype, 'fortran_order': False, 'shape': shape})
    return buffer.getvalue()


def _zip_bomb(path, name, inflated):
    """A real deflate bomb: `inflated` bytes of zeros in one .npy entry, a few hundred KB on disk."""
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED, compresslevel=1) as z, \
            z.open(name, 'w', force_zip64=True) as f:
        header = _npy_header((inflated // 4,))
        f.write(header)
        chunk = bytes(1 << 22)
        left = inflated - len(header)
        while left > 0:
            f.write(chunk[:min(left, len(chunk))])
            left -= len(chunk)


@pytest.fixture(scope='module')
def bomb(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('bomb') / 'bomb.npz')
    _zip_bomb(path, 'head/kernel.npy', archives.INFLATE_FLOOR + (64 << 20))
    assert os.path.getsize(path) < 2 << 20
    return path


def test_npz_zip_bomb_is_refused_in_bounded_time_and_memory(bomb):
    message = _bounded(lambda: checkpoint.load(bomb))
    assert message.startswith(f'{bomb}: refusing to inflate ') and "'head/kernel.npy'" in message
    _bounded(lambda: loader.load(bomb))


def test_npz_header_declaring_a_huge_shape_is_refused(tmp_path):
    path = str(tmp_path / 'huge.npz')
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('head/kernel.npy', _npy_header((10 ** 6, 10 ** 6)) + bytes(16))
    message = _bounded(lambda: checkpoint.load(path))
    assert "array 'head/kernel' declares shape (1000000, 1000000) float32 (4,000,000,000,000 bytes) " \
           'but holds 16 bytes' in message


def test_npz_with_pickled_objects_is_refused_unread(tmp_path):
    path = str(tmp_path / 'pickle.npz')
    np.savez(path, **{'head/kernel': np.array([{'a': 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="array 'head/kernel' holds pickled Python objects"):
        checkpoint.load(path)


def test_compressed_checkpoints_with_zero_heads_still_load(tmp_path):
    """savez_compressed of real weights (an all-zero head compresses ~1000x) is not a bomb."""
    params = _tiny_params()
    params['head']['kernel'] = np.zeros((10, 3000), np.float32)   # 120 kB of zeros
    path = str(tmp_path / 'compressed.npz')
    np.savez_compressed(path, **trees.flatten(params))
    assert checkpoint.load(path)['head']['kernel'].shape == (10, 3000)


# ---------------------------------------------------------------------------------------------
# Export files

@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp('export')
    params = _tiny_params()
    model = get_model('testing', num_classes=3, **{'patches.size': (4, 4)})
    path = str(folder / 'ok.vitx')
    exp = export.export_inference(model, params, 8, bake_params=False)
    export.save_exported(exp, path, {'image_size': 8, 'num_classes': 3, 'class_names': None}, params)
    return path


def _rewrite(src, dst, replace):
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries.update(replace)
    with zipfile.ZipFile(dst, 'w') as z:
        for name, data in entries.items():
            if data is not None:
                z.writestr(name, data)


def test_a_good_export_loads(exported):
    served = serving.load_exported(exported)
    assert served(np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 3)


@pytest.mark.parametrize('replace,message', [
    ({serving.METADATA: b'{not json'}, 'metadata.json is not valid JSON'),
    ({serving.METADATA: b'[1, 2]'}, 'metadata.json is not a JSON object'),
    ({serving.METADATA: json.dumps({'format_version': 99, 'image_size': 8}).encode()},
     'metadata.json format_version=99; this vit_jax reads 1'),
    ({serving.METADATA: json.dumps({'format_version': 1, 'image_size': -3}).encode()},
     'metadata.json image_size=-3 is not a positive integer'),
    ({serving.METADATA: json.dumps({'format_version': 1, 'image_size': 8, 'class_names': 'ab'}).encode()},
     'class_names is not a list of strings'),
    ({serving.MODULE: b'\x00garbage' * 10}, 'model.stablehlo is not a serialized jax.export module'),
    ({serving.MODULE: None}, 'not a vit_jax export'),
    ({serving.PARAMS: b'PK\x03\x04 truncated'}, 'params.npz: corrupt'),
])
def test_corrupt_exports_are_one_line_naming_the_file(exported, tmp_path, replace, message):
    path = str(tmp_path / 'bad.vitx')
    _rewrite(exported, path, replace)
    with pytest.raises(CheckpointError, match=f'^{path}.*{message}') as e:
        serving.load_exported(path)
    assert '\n' not in str(e.value)


def _metadata(**change):
    return json.dumps(dict({'format_version': 1, 'image_size': 8, 'num_classes': 3}, **change)).encode()


def _params_npz(exported, change):
    with zipfile.ZipFile(exported) as z, np.load(io.BytesIO(z.read(serving.PARAMS))) as f:
        flat = {k: f[k] for k in f.files}
    change(flat)
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    return buffer.getvalue()


def _nan_head(flat):
    flat['head/bias'] = np.full_like(flat['head/bias'], np.nan)


@pytest.mark.parametrize('replace,message', [
    (lambda e: {serving.METADATA: _metadata(num_classes=5)}, 'num_classes=5, but model.stablehlo gives 3 logits'),
    (lambda e: {serving.METADATA: _metadata(num_classes='3')}, "num_classes='3' is not a positive integer"),
    (lambda e: {serving.METADATA: _metadata(class_names=['a', 'b'])}, 'class_names has 2 names for 3 logits'),
    (lambda e: {serving.METADATA: _metadata(image_size=16)},
     r'image_size=16, but model.stablehlo takes images \[batch, 8, 8, 3\]'),
    (lambda e: {serving.PARAMS: None}, 'takes its parameters as an argument, but the file has no params.npz'),
    (lambda e: {serving.PARAMS: _params_npz(e, lambda f: f.pop('head/bias'))},
     "params.npz: does not match model.stablehlo's parameters \\(missing head/bias\\)"),
    (lambda e: {serving.PARAMS: _params_npz(e, lambda f: f.update(extra=np.zeros(2, np.float32)))},
     'params.npz: does not match .*unexpected extra'),
    (lambda e: {serving.PARAMS: _params_npz(e, lambda f: f.update({'head/bias': np.zeros(4, np.float32)}))},
     r'params.npz: head/bias is float32\[4\], but model.stablehlo takes float32\[3\]'),
    (lambda e: {serving.PARAMS: _params_npz(e, lambda f: f.update({'head/bias': np.zeros(3, np.float16)}))},
     r'params.npz: head/bias is float16\[3\]'),
    (lambda e: {serving.PARAMS: _params_npz(e, _nan_head)}, 'params.npz: head/bias has non-finite values'),
], ids=['num_classes', 'num_classes_type', 'class_names', 'image_size', 'no_params', 'missing_param',
        'extra_param', 'param_shape', 'param_dtype', 'nan_param'])
def test_exports_that_contradict_themselves_are_refused_at_load(exported, tmp_path, replace, message):
    path = str(tmp_path / 'bad.vitx')
    _rewrite(exported, path, replace(exported))
    with pytest.raises(CheckpointError, match=f'^{path}.*{message}') as e:
        serving.load_exported(path)
    assert '\n' not in str(e.value)


def test_export_zip_bomb_is_refused_in_bounded_time_and_memory(exported, tmp_path):
    path = str(tmp_path / 'bomb.vitx')
    _zip_bomb(path, serving.MODULE, archives.INFLATE_FLOOR + (64 << 20))   # model.stablehlo: zeros
    with zipfile.ZipFile(exported) as z:
        metadata = z.read(serving.METADATA)
    with zipfile.ZipFile(path, 'a') as z:
        z.writestr(serving.METADATA, metadata)
    message = _bounded(lambda: serving.load_exported(path))
    assert message.startswith(f'{path}: refusing to inflate'), message


def test_export_platforms_are_checked(tmp_path):
    params = _tiny_params()
    model = get_model('testing', num_classes=3, **{'patches.size': (4, 4)})
    with pytest.raises(ConfigError, match="platforms 'nosuch': jax.export lowers for cpu, cuda, rocm, tpu"):
        export.export_inference(model, params, 8, platforms=['nosuch'])
    proc = subprocess.run([sys.executable, '-m', 'vit_jax.export', '--checkpoint', 'x', '--output',
                           str(tmp_path / 'y.vitx'), '--platforms', 'nosuch'], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'nosuch'" in proc.stderr
    assert not os.path.exists(tmp_path / 'y.vitx')


# ---------------------------------------------------------------------------------------------
# Bugs are not bad input

def test_a_programming_error_shows_its_traceback(monkeypatch, tmp_path):
    """Only UserError (and OSError at the file boundary) is reported as bad input (exit 2)."""
    from vit_jax import train

    def broken(*args, **kwargs):
        raise KeyError('a bug')
    monkeypatch.setattr(train, 'train_and_evaluate', broken)
    with pytest.raises(KeyError, match='a bug'):
        main.run(['vit-train', f'--config={ROOT}/configs/digits.py', f'--workdir={tmp_path}/w',
                   '--config.progress_bar=False'])
