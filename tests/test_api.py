"""`vit_jax.load(source)`: the Python path from a checkpoint to predictions, the same numbers as
vit-predict from the same files, whatever form the images come in."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vit_jax
from tests.test_predict import COLORS, color_classifier_params, save_npz
from vit_jax import checkpoint, predict
from vit_jax.checkpoint import loader
from vit_jax.errors import DataError, UserError
from vit_jax.models import get_config


@pytest.fixture(scope='module')
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp('api')
    ckpt = save_npz(color_classifier_params(), root / 'colors.npz')
    (root / 'labels.txt').write_text('red\ngreen\nblue\n')
    files = []
    for name, size in (('red', (50, 70)), ('green', (33, 33)), ('blue', (200, 100))):
        files.append(str(root / f'{name}.png'))
        Image.new('RGB', size, COLORS[name]).save(files[-1])
    return root, ckpt, files


def test_import_vit_jax_stays_light():
    code = 'import sys, vit_jax; print("flax" in sys.modules, "jax" in sys.modules, callable(vit_jax.load))'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ['False', 'False', 'True']


def test_predict_gives_vit_predicts_numbers(kit):
    root, ckpt, files = kit
    model = vit_jax.load(ckpt)
    assert (model.image_size, model.num_classes) == (32, 3)
    got = model.predict(files, k=3)
    expected = predict.predict_files(loader.load_model(ckpt), files, k=3)['results']
    assert got == [r['predictions'] for r in expected]
    assert [p[0]['index'] for p in got] == [0, 1, 2]


def test_every_image_form_gives_the_same_logits(kit):
    _, ckpt, files = kit
    model = vit_jax.load(ckpt)
    from_files = model.logits(files)
    pil = [Image.open(f) for f in files]
    arrays = [np.asarray(im.convert('RGB')) for im in pil]
    np.testing.assert_array_equal(model.logits(pil), from_files)
    np.testing.assert_array_equal(model.logits(arrays), from_files)
    np.testing.assert_array_equal(model.logits(model.preprocess(files)), from_files)
    np.testing.assert_array_equal(model.logits(files[0]), from_files[:1])              # one item
    np.testing.assert_array_equal(model.logits(pil[2]), from_files[2:])
    grey_alpha = np.concatenate([arrays[0], np.full(arrays[0].shape[:2] + (1,), 9, np.uint8)], -1)
    np.testing.assert_array_equal(model.logits(grey_alpha), from_files[:1])          # alpha dropped
    assert model.features(files).shape == (3, 10)


def test_workdir_class_names_and_a_labels_file(kit, tmp_path):
    import json
    root, _, files = kit
    workdir = tmp_path / 'run'
    workdir.mkdir()
    checkpoint.save(color_classifier_params(), str(workdir / 'model.npz'))
    model_config = get_config('testing').to_dict()
    (workdir / 'config.json').write_text(json.dumps({
        'model': model_config, 'pp': {'crop': 32},
        'dataset_info': {'num_classes': 3, 'class_names': ['rouge', 'vert', 'bleu']}}))
    model = vit_jax.load(str(workdir))
    assert [p[0]['label'] for p in model.predict(files, k=1)] == ['rouge', 'vert', 'bleu']


@pytest.mark.parametrize('bad,message', [
    (np.zeros((8, 8, 3), np.float32),
     r'an image array must be uint8 \[H, W\], \[H, W, 3\] or \[H, W, 4\], got float32\[8, 8, 3\]'),
    (np.zeros((8, 8, 2), np.uint8), r'got uint8\[8, 8, 2\]'),
    (np.zeros((2, 16, 16, 3), np.float32),
     r'preprocessed images must be \[n, 32, 32, 3\], got \[2, 16, 16, 3\]'),
    ([], 'no images given'),
    ([3], 'cannot read an image from a int'),
    ('/nonexistent/x.png', '/nonexistent/x.png'),
])
def test_bad_images_are_one_line(kit, bad, message):
    model = vit_jax.load(kit[1])
    with pytest.raises((DataError, FileNotFoundError), match=message) as e:
        model.predict(bad)
    assert '\n' not in str(e.value)


def test_the_pixel_bound_holds_for_arrays_and_files(kit):
    _, ckpt, files = kit
    model = vit_jax.load(ckpt, max_pixels=1000)
    with pytest.raises(DataError, match='70x50 pixels is above max_image_pixels=1,000'):
        model.predict(np.zeros((50, 70, 3), np.uint8))
    with pytest.raises(DataError, match='declares 200x100 pixels'):
        model.predict(files[2])


def test_a_headless_checkpoint_gives_features_only(kit, tmp_path):
    params = color_classifier_params()
    del params['head']
    model = vit_jax.load(save_npz(params, tmp_path / 'headless.npz'))
    assert model.num_classes is None and model.features(kit[2]).shape == (3, 10)
    with pytest.raises(UserError, match='no classification head'):
        model.predict(kit[2])


def test_unknown_attribute_of_the_package():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vit_jax.nope  # noqa: B018
    assert os.path.basename(vit_jax.__file__) == '__init__.py'


def test_an_exported_model_keeps_its_preprocessing_and_classes(kit, tmp_path):
    from vit_jax import export
    root, ckpt, files = kit
    loaded = loader.load_model(ckpt)
    loaded.class_names, loaded.crop_fraction = ['rouge', 'vert', 'bleu'], 0.5
    path = export.export_model(loaded, str(tmp_path / 'colors.vitx'))
    served, direct = vit_jax.load(path), vit_jax.load(ckpt)
    assert (served.image_size, served.num_classes, served.class_names) == (32, 3, ['rouge', 'vert', 'bleu'])
    pp = vit_jax.api.preprocessing.for_inference(32, 0.5)
    expected = np.stack([vit_jax.api.preprocessing.load_image(f, pp) for f in files])
    np.testing.assert_array_equal(served.preprocess(files), expected)       # the recorded center crop
    np.testing.assert_allclose(served.logits(files), direct.logits(expected), rtol=1e-5, atol=1e-6)
    assert [p[0]['label'] for p in served.predict(files, k=1)] == ['rouge', 'vert', 'bleu']
    with pytest.raises(UserError, match='an exported classifier computes logits only'):
        served.features(files)
