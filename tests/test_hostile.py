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
    (lambda e: {serving.METADATA: _metadata(num_classes=5)},
     'num_classes=5, but model.stablehlo gives 3 logits'),
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


# ---------------------------------------------------------------------------------------------
# Reading a workdir that a run is still writing

@pytest.fixture
def rotating_workdir(tmp_path):
    """A workdir with checkpoints at steps 1 and 2 (the head bias records the step)."""
    from vit_jax.checkpoint import workdir as wd
    folder = str(tmp_path / 'run')
    model = model_configs.get_testing_config().to_dict()
    model['patches'] = {'size': [4, 4]}
    os.makedirs(folder)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump({'model': model, 'pp': {'crop': 8}, 'dataset_info': {'num_classes': 3}}, f)
    checkpoints = wd.Checkpoints(folder, keep=5)
    for step in (1, 2):
        params = _tiny_params()
        params['head']['bias'] = np.full(3, step, np.float32)
        checkpoints.save(step, {'params': params}, {}, None)
        checkpoints.wait()
    checkpoints.close()
    return folder


def test_a_checkpoint_rotated_away_while_read_gives_the_newest_left(rotating_workdir, monkeypatch):
    import orbax.checkpoint as ocp
    restore = ocp.CheckpointManager.restore
    rotated = []

    def rotate_first(self, step, *a, **kw):   # the writing run deletes the step as it is read
        if not rotated:
            rotated.append(step)
            import shutil
            shutil.rmtree(os.path.join(rotating_workdir, f'checkpoint_{step}'))
        return restore(self, step, *a, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, 'restore', rotate_first)
    loaded = loader.load_model(rotating_workdir)
    assert rotated == [2]
    np.testing.assert_array_equal(loaded.params['head']['bias'], 1.0)


def test_a_workdir_rotating_on_every_read_is_one_line(rotating_workdir, monkeypatch):
    import shutil

    import orbax.checkpoint as ocp

    def always_gone(self, step, *a, **kw):
        shutil.rmtree(os.path.join(rotating_workdir, f'checkpoint_{step}'), ignore_errors=True)
        raise FileNotFoundError(f'Requested directory for restore does not exist at {step}')

    monkeypatch.setattr(ocp.CheckpointManager, 'restore', always_gone)
    os.makedirs(os.path.join(rotating_workdir, 'checkpoint_3'))   # a third to rotate
    with pytest.raises(CheckpointError, match='rotated 3 checkpoints away while they were read; try again'):
        loader.load_model(rotating_workdir)


# ---------------------------------------------------------------------------------------------
# The battery: what a careless user, a corrupted download and a malicious file do to every CLI.
# Each case runs the console script's own entry point in this process (the path of the installed
# script, without its start-up time) and asserts its exit code and its stderr: exactly one line
# naming the file, flag or value (`prog: error: ...`), or the one line per skipped image.

def _png_bomb(path, side, rows=None):
    """A PNG declaring side x side black pixels in ~side * side / 1000 bytes (with `rows`, only that
    many rows of data follow the header: a file that declares more than it holds)."""
    import struct
    import zlib
    comp = zlib.compressobj(9)
    row = b'\x00' * (1 + side * 3)
    data = b''.join(comp.compress(row) for _ in range(rows or side)) + comp.flush()

    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0))
                + chunk(b'IDAT', data) + chunk(b'IEND', b''))


def _gif_bomb(path):
    """A GIF whose header declares a 65535 x 65535 screen around a 1 x 1 frame."""
    Image.new('P', (1, 1)).save(path)
    with open(path, 'r+b') as f:
        f.seek(6)
        f.write(b'\xff\xff\xff\xff')


@pytest.fixture(scope='module')
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp('battery')
    files = {'root': str(root)}

    def put(name, data=None, text=None, encoding='utf-8'):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            path.write_text(text, encoding=encoding)
        elif data is not None:
            path.write_bytes(data)
        files[name] = str(path)
        return str(path)

    checkpoint.save(_tiny_params(), put('tiny.npz', b''))
    put('garbage.npz', RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    Image.fromarray(BASE).save(put('img/ok.png', b''))
    _png_bomb(put('img/bomb.png', b''), 23000, rows=1)   # the 23000 x 23000
    _png_bomb(put('img/bomb_100mp.png', b''), 10000)     # a complete one, within twice Pillow's bound
    _gif_bomb(put('img/bomb.gif', b''))
    put('img/empty.jpg', b'')
    put('img/text.png', text='not an image\n')
    jpeg = io.BytesIO()
    Image.fromarray(BASE).save(jpeg, format='JPEG')
    put('img/truncated.jpg', jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
    Image.fromarray(BASE[..., 0].astype(np.float32)).save(put('img/float.tiff', b''))
    tiff_bomb = io.BytesIO()
    Image.new('L', (1, 1)).save(tiff_bomb, format='TIFF')
    data = bytearray(tiff_bomb.getvalue())   # ImageWidth / ImageLength (LONG) rewritten to 100000
    for tag in (256, 257):
        i = data.find(tag.to_bytes(2, 'little') + (4).to_bytes(2, 'little') + (1).to_bytes(4, 'little'))
        assert i > 0
        data[i + 8:i + 12] = (100000).to_bytes(4, 'little')
    put('img/bomb.tiff', bytes(data))
    put('labels_utf16.txt', text='rouge\nvert\nbleu\n', encoding='utf-16')
    put('labels_empty.txt', text='\n\n')
    put('labels_two.txt', text='a\nb\n')
    put('labels_binary.txt', b'\xff\xfe\x00\xd8' * 3 + b'\x80\x81\xfe')
    put('templates_empty.txt', text='\n')
    put('templates_nobrace.txt', text='a photo of a thing\n')
    put('a_file', text='x')
    for cls in ('a', 'b'):
        for i in range(3):
            Image.fromarray(BASE).save(put(f'data/{cls}/{i}.png', b''))
    return files


def _entry(prog):
    from vit_jax import analysis, convert, fewshot, predict, zeroshot
    return {'vit-predict': predict.main, 'vit-analyze': analysis.main, 'vit-zeroshot': zeroshot.main,
            'vit-fewshot': fewshot.main, 'vit-export': export.main, 'vit-convert': convert.main,
            'vit-train': lambda argv: main.main(['vit-train', *argv])}[prog]


def _run(prog, argv, capsys):
    """(exit code, stdout, stderr lines) of console script `prog` run in this process."""
    from vit_jax import cli
    entry = _entry(prog)
    try:
        code = cli.run_cli(prog, lambda: entry(argv))
    except SystemExit as e:   # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


E, S = 'error', 'skipped'   # one `prog: error: ...` line; the `skipped PATH: ...` lines only
BATTERY = [
    # vit-predict: images
    ('predict-bomb-png', 'vit-predict', '{img/bomb.png} {ok} {ck}', 0, S,
     r'skipped {img/bomb.png}: declares 23000x23000 pixels \(529,000,000\), more than '
     r'max_image_pixels=89,478,485 \(a decompression bomb\?\); to read it, raise the bound '
     r'\(--max-image-pixels N'),
    ('predict-bomb-100mp', 'vit-predict', '{img/bomb_100mp.png} {ck}', 1, S,
     r'skipped {img/bomb_100mp.png}: declares 10000x10000 pixels \(100,000,000\), more than '
     r'max_image_pixels=89,478,485'),
    ('predict-bomb-gif', 'vit-predict', '{img/bomb.gif} {ck}', 1, S,
     r'skipped {img/bomb.gif}: declares 65535x65535 pixels \(4,294,836,225\)'),
    ('predict-bomb-tiff', 'vit-predict', '{img/bomb.tiff} {ck}', 1, S,
     r'skipped {img/bomb.tiff}: declares 100000x100000 pixels \(10,000,000,000\)'),
    ('predict-bound-lowered', 'vit-predict', '{ok} {ck} --max-image-pixels 100', 1, S,
     r'skipped {ok}: declares 24x20 pixels \(480\), more than max_image_pixels=100'),
    ('predict-empty-file', 'vit-predict', '{img/empty.jpg} {ck}', 1, S,
     r'skipped {img/empty.jpg}: unreadable image \(not an image of a supported format'),
    ('predict-text-as-png', 'vit-predict', '{img/text.png} {ck}', 1, S,
     r'skipped {img/text.png}: unreadable image'),
    ('predict-truncated-jpeg', 'vit-predict', '{img/truncated.jpg} {ck}', 1, S,
     r'skipped {img/truncated.jpg}: unreadable image \(OSError: '),
    ('predict-float-tiff', 'vit-predict', '{img/float.tiff} {ck}', 1, S,
     r'skipped {img/float.tiff}: floating-point images \(mode F\) are not supported'),
    ('predict-no-images', 'vit-predict', '{root}/nothing*.png {ck}', 2, E,
     r"no images found for '{root}/nothing\*.png'"),
    # vit-predict: checkpoints, labels, flags
    ('predict-missing-checkpoint', 'vit-predict', '{ok} --checkpoint {root}/missing.npz', 2, E,
     r'{root}/missing.npz: no such file'),
    ('predict-garbage-checkpoint', 'vit-predict', '{ok} --checkpoint {garbage.npz}', 2, E,
     r'{garbage.npz}'),
    ('predict-image-as-checkpoint', 'vit-predict', '{ok} --checkpoint {ok}', 2, E,
     r'{ok}'),
    ('predict-labels-utf16', 'vit-predict', '{ok} {ck} --labels {labels_utf16.txt}',
     0, None, None),
    ('predict-labels-empty', 'vit-predict', '{ok} {ck} --labels {labels_empty.txt}',
     2, E, r'{labels_empty.txt}: no labels in the file'),
    ('predict-labels-count', 'vit-predict', '{ok} {ck} --labels {labels_two.txt}',
     2, E, r'2 labels for a 3-class head'),
    ('predict-labels-binary', 'vit-predict', '{ok} {ck} --labels {labels_binary.txt}',
     2, E, r'{labels_binary.txt}'),
    ('predict-labels-missing', 'vit-predict', '{ok} {ck} --labels nosuch', 2, E,
     r"labels 'nosuch': neither a file nor one of"),
    ('predict-image-size-mismatch', 'vit-predict', '{ok} {ck} --image-size 12', 2, E,
     r'--image-size 12, but the position embedding is for 8-pixel images'),
    ('predict-image-size-zero', 'vit-predict', '{ok} {ck} --image-size 0', 2, E,
     r'argument --image-size: expected a positive integer, got 0'),
    ('predict-image-size-negative', 'vit-predict', '{ok} {ck} --image-size=-1', 2, E,
     r'argument --image-size: expected a positive integer, got -1'),
    ('predict-top-k-zero', 'vit-predict', '{ok} {ck} --top-k 0', 2, E,
     r'argument --top-k: expected a positive integer, got 0'),
    ('predict-batch-text', 'vit-predict', '{ok} {ck} --batch-size many', 2, E,
     r"argument --batch-size: expected a positive integer, got 'many'"),
    ('predict-crop-fraction-zero', 'vit-predict', '{ok} {ck} --crop-fraction 0', 2, E,
     r'crop fraction 0.0 is not in \(0, 1\]'),
    ('predict-crop-fraction-nan', 'vit-predict', '{ok} {ck} --crop-fraction nan', 2, E,
     r'crop fraction nan is not in \(0, 1\]'),
    ('predict-max-pixels-zero', 'vit-predict', '{ok} {ck} --max-image-pixels 0', 2, E,
     r'argument --max-image-pixels: expected a positive integer, got 0'),
    ('predict-abbreviated-flag', 'vit-predict', '{ok} {ck} --image {ok}', 2, E,
     r'unrecognized arguments: --image'),
    ('predict-unknown-model', 'vit-predict', '{ok} {ck} --model ViT-X_1', 2, E,
     r"--model 'ViT-X_1' is unknown"),
    ('predict-bad-pool', 'vit-predict', '{ok} {ck} --pool max', 2, E,
     r"argument --pool: invalid choice: 'max'"),
    ('predict-heads-zero', 'vit-predict', '{ok} {ck} --num-heads 0', 2, E,
     r'argument --num-heads: expected a positive integer, got 0'),
    # vit-analyze
    ('analyze-bomb', 'vit-analyze', '{ck} --image {img/bomb.png} --output-dir {root}/an1', 1, S,
     r'skipped {img/bomb.png}: declares 23000x23000 pixels'),
    ('analyze-output-is-a-file', 'vit-analyze', '{ck} --output-dir {a_file}', 2, E,
     r'{a_file}'),
    ('analyze-figures-zero', 'vit-analyze', '{ck} --output-dir {root}/an2 --max-figure-images 0',
     2, E, r'argument --max-figure-images: expected a positive integer, got 0'),
    ('analyze-no-images', 'vit-analyze', '{ck} --output-dir {root}/an3 --image {root}/none/',
     2, E, r"no images found for '{root}/none/'"),
    # vit-zeroshot: labels and templates are checked before any checkpoint is read
    ('zeroshot-duplicate-labels', 'vit-zeroshot', '{ok} --checkpoint {root}/lit.npz --labels red,red,green',
     2, E, r"label 'red' is given twice: a label given twice splits its probability between the copies"),
    ('zeroshot-labels-differ-in-case', 'vit-zeroshot', '{ok} --checkpoint x.npz --labels "Red,red "', 2, E,
     r"labels 'Red' and 'red' differ only in case or spaces"),
    ('zeroshot-labels-file-missing', 'vit-zeroshot', '{ok} --checkpoint x.npz --labels {labels_two.txt}x',
     2, E,
     r"labels '{labels_two.txt}x': neither a file nor one of"),
    ('zeroshot-empty-label', 'vit-zeroshot', '{ok} --checkpoint x.npz --labels a,,b', 2, E,
     r"--labels 'a,,b' has an empty label"),
    ('zeroshot-labels-file-empty', 'vit-zeroshot', '{ok} --checkpoint x.npz --labels {labels_empty.txt}',
     2, E, r'{labels_empty.txt}: no labels in the file'),
    ('zeroshot-missing-checkpoint', 'vit-zeroshot', '{ok} --checkpoint x.npz --labels {labels_two.txt}',
     2, E, r'x.npz'),
    ('zeroshot-templates-empty', 'vit-zeroshot',
     '{ok} --checkpoint x.npz --labels a,b --templates {templates_empty.txt}', 2, E,
     r'--templates {templates_empty.txt}: no prompt templates'),
    ('zeroshot-templates-no-braces', 'vit-zeroshot',
     '{ok} --checkpoint x.npz --labels a,b --templates {templates_nobrace.txt}', 2, E,
     r"--templates {templates_nobrace.txt}: prompt template 'a photo of a thing' must contain exactly one"),
    ('zeroshot-templates-missing', 'vit-zeroshot', '{ok} --checkpoint x.npz --labels a,b --templates clip',
     2, E, r"--templates 'clip' is neither lit nor none nor a file"),
    ('zeroshot-text-heads-zero', 'vit-zeroshot', '{ok} --checkpoint x.npz --labels a,b --text-heads 0',
     2, E, r'argument --text-heads: expected a positive integer, got 0'),
    ('zeroshot-max-len-negative', 'vit-zeroshot', '{ok} --checkpoint x.npz --labels a,b --max-len=-4',
     2, E, r'argument --max-len: expected a positive integer, got -4'),
    ('zeroshot-classifier-checkpoint', 'vit-zeroshot', '{ok} {ck} --labels a,b', 2, E,
     r'{tiny.npz}'),
    # vit-fewshot
    ('fewshot-shots-zero', 'vit-fewshot', '{ck} --dataset {data} --shots 0', 2, E,
     r'argument --shots: expected a positive integer, got 0'),
    ('fewshot-l2-negative', 'vit-fewshot', '{ck} --dataset {data} --l2-reg=-1', 2, E,
     r'argument --l2-reg: expected a finite number >= 0, got -1'),
    ('fewshot-l2-nan', 'vit-fewshot', '{ck} --dataset {data} --l2-reg nan', 2, E,
     r'argument --l2-reg: expected a finite number >= 0, got nan'),
    ('fewshot-missing-folder', 'vit-fewshot', '{ck} --folder {root}/nowhere', 2, E,
     r'{root}/nowhere'),
    ('fewshot-max-test-zero', 'vit-fewshot', '{ck} --dataset {data} --max-test 0', 2, E,
     r'argument --max-test: expected a positive integer, got 0'),
    # vit-export
    ('export-garbage-checkpoint', 'vit-export', '--checkpoint {garbage.npz} --output {root}/x.vitx', 2, E,
     r'{garbage.npz}'),
    ('export-output-dir-created', 'vit-export', '{ck} --output {root}/new/dir/x.vitx', 0, None,
     None),
    ('export-bad-platform', 'vit-export', '{ck} --output {root}/x.vitx --platforms gpu', 2, E,
     r"argument --platforms: invalid choice: 'gpu'"),
    # vit-convert
    ('convert-missing-source', 'vit-convert', '{root}/missing.npz {root}/out.npz', 2, E,
     r'{root}/missing.npz'),
    ('convert-garbage-source', 'vit-convert', '{garbage.npz} {root}/out.npz', 2, E, r'{garbage.npz}'),
    ('convert-bad-format', 'vit-convert', '{tiny.npz} {root}/out.npz --to onnx', 2, E,
     r"argument --to: invalid choice: 'onnx'"),
    ('convert-negative-classes', 'vit-convert', '{tiny.npz} {root}/out.npz --num-classes=-2', 2, E,
     r'--num-classes must be >= 0, got -2'),
    # vit-train
    ('train-crop-not-tiled', 'vit-train', '{digits} --config.pp.crop=18 --config.pp.resize=20', 2, E,
     r"config.pp.crop=18 is not a multiple of the model's 4-pixel patches: the last 2 pixels of every row "
     r'and column would be ignored; use 16 or 20'),
    ('train-max-pixels-zero', 'vit-train', '{digits} '
     '--config.pp.max_image_pixels=0', 2, E, r'config.pp.max_image_pixels=0 must be >= 1'),
    ('train-heads-indivisible', 'vit-train', '{digits} '
     '--config.model.transformer.num_heads=5', 2, E,
     r'model config: hidden_size=64 is not divisible by transformer.num_heads=5'),
    ('train-unknown-key', 'vit-train', '{digits} --config.bach=8', 2, E,
     r"bach.*did you mean 'batch'"),
    ('train-bool-garbage', 'vit-train', '{digits} '
     '--config.pp.partial_patches=maybe', 2, E,
     r'flag --config.pp.partial_patches=maybe: Non-boolean argument to boolean flag '
     r'\(expected true or false\)$'),
    ('train-missing-dataset', 'vit-train', '{digits} '
     '--config.dataset={root}/nowhere', 2, E, r"config.dataset='{root}/nowhere'"),
    ('train-workdir-is-a-file', 'vit-train', '--config={ROOT}/configs/digits.py --workdir={a_file}', 2, E,
     r'{a_file}'),
    ('train-space-value-typo', 'vit-train', '{digits} '
     '--config.batch eight', 2, E, r"config.batch.*'eight'"),
]


@pytest.mark.parametrize('case,prog,argv,code,kind,message', BATTERY, ids=[c[0] for c in BATTERY])
def test_battery(kit, capsys, case, prog, argv, code, kind, message):
    import shlex
    fill = dict(kit, ROOT=ROOT, data=os.path.join(kit['root'], 'data'), ok=kit['img/ok.png'],
                ck=f'--checkpoint {kit["tiny.npz"]}',
                digits=f'--config={ROOT}/configs/digits.py --workdir={kit["root"]}/w')

    def put(text, escape=lambda v: v):   # '{name}' -> that file of the kit
        return re.sub(r'\{([\w./]+)\}', lambda m: escape(fill[m.group(1)]), text)
    args = shlex.split(put(argv))   # the kit's paths have no spaces
    rc, out, err = _run(prog, args, capsys)
    assert not any('Traceback' in line for line in err), err
    assert rc == code, (rc, err)
    if kind == E:
        assert len(err) == 1 and err[0].startswith(f'{prog}: error: '), err
    elif kind == S:
        err = [line for line in err if not line.startswith(f'{prog}: error: none of the images')]
        assert len(err) == 1 and err[0].startswith('skipped '), err
    else:
        assert not err, err
    if message is not None:
        assert re.search(put(message, re.escape), err[0]), err[0]
    if case == 'predict-labels-utf16':
        assert out.splitlines()[0] == kit['img/ok.png'] and out.count('rouge') == 1


_BOMB_PROBE = '''
import json, resource, sys, time
from vit_jax import images, preprocessing
preprocessing.load_image(sys.argv[1], preprocessing.for_inference(8))   # TensorFlow loaded and warm
for path in sys.argv[2:]:
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    messages = [images.check_image(path), images.check_encoded(open(path, 'rb').read())]
    try:
        preprocessing.load_image(path, preprocessing.for_inference(8))
    except Exception as e:
        messages.append(f'{type(e).__name__}: {e}')
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps([path, grown, time.perf_counter() - start, messages]))
'''
BOMBS = ('img/bomb.png', 'img/bomb_100mp.png', 'img/bomb.gif', 'img/bomb.tiff')


def test_bombs_are_refused_from_their_header_in_bounded_time_and_memory(kit):
    """Every Python decode path (training's check, inference's check, load_image) refuses each
    before decoding: the resident set does not grow by the 300 MB to 30 GB the pixels would take."""
    proc = subprocess.run([sys.executable, '-c', _BOMB_PROBE, kit['img/ok.png'], *(kit[b] for b in BOMBS)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == [kit[b] for b in BOMBS]
    for path, grown_kb, seconds, messages in rows:
        assert grown_kb < 50_000 and seconds < 5, (path, grown_kb, seconds)
        assert len(messages) == 3, messages
        assert all('more than max_image_pixels=89,478,485' in m for m in messages), messages
        assert messages[2].startswith(f'DataError: {path}: declares '), messages


def test_the_pixel_bound_is_exact_and_raisable(kit):
    from PIL import Image as PILImage
    assert images.check_image(kit['img/ok.png'], max_pixels=10**9) is None
    assert PILImage.MAX_IMAGE_PIXELS >= 10**9    # Pillow's own bound follows a raised one
    ok = kit['img/ok.png']    # 24 x 20 = 480 pixels
    assert images.check_image(ok, max_pixels=480) is None
    assert images.check_image(ok, max_pixels=479).startswith('declares 24x20 pixels (480), more than '
                                                             'max_image_pixels=479')
    pp = preprocessing.for_inference(8)
    with pytest.raises(DataError, match=f'{re.escape(ok)}: declares 24x20 pixels'):
        preprocessing.load_image(ok, pp, max_pixels=479)
    np.testing.assert_array_equal(preprocessing.load_image(ok, pp, max_pixels=480),
                                  preprocessing.load_image(ok, pp))


def test_training_skips_a_bomb_in_its_folder_naming_it(kit, tmp_path, caplog):
    import shutil
    shutil.copytree(os.path.join(kit['root'], 'data'), tmp_path / 'data')
    shutil.copy(kit['img/bomb.png'], tmp_path / 'data' / 'a' / 'bomb.png')
    config = _folder_config(tmp_path / 'data')
    _, _, info = ip.get_datasets(config)
    assert info.num_train + info.num_eval == 6
    skipped = [r.getMessage() for r in caplog.records if 'Skipping' in r.getMessage()]
    assert len(skipped) == 1 and 'bomb.png (declares 23000x23000 pixels' in skipped[0], skipped


@pytest.mark.parametrize('size,message', [
    (7, "image size=7 is not a multiple of the model's 4-pixel patches: the last 3 pixels of every row and "
        'column would be ignored; use 4 or 8'),
    (3, "image size=3 is smaller than the model's 4-pixel patches"),
    (8, None), (12, None),
])
def test_image_sizes_the_patches_do_not_tile_are_refused(size, message):
    from vit_jax.models import check_image_size
    vit = get_model('testing', num_classes=3, **{'patches.size': (4, 4)})
    if message is None:
        check_image_size(vit, size, 'image size')
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_image_size(vit, size, 'image size')
    if size >= 4:   # the original's behaviour, where it is asked for
        check_image_size(vit, size, 'image size', partial_patches=True)


def test_the_original_h14_config_keeps_its_partial_patches():
    from vit_jax.configs import vit
    config = vit.get_config('h14,cifar10')
    config.total_steps = 1
    assert resolve.resolve(config).pp.crop == 384        # 27 x 27 patches of the top-left 378 x 378
    config.pp.partial_patches = False
    with pytest.raises(ConfigError, match='config.pp.crop=384 is not a multiple .* use 378 or 392'):
        resolve.resolve(config)
