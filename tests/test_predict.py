"""vit-predict on images written here, with a checkpoint whose head gives a known answer."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vit_jax import checkpoint, images, labels, predict, preprocessing
from vit_jax.checkpoint import loader
from vit_jax.checkpoint.facts import Facts
from vit_jax.models import get_config, get_model

COLORS = {'red': (255, 0, 0), 'green': (0, 255, 0), 'blue': (0, 0, 255)}


def color_classifier_params() -> dict:
    """'testing' ViT (32 px, token classifier) whose logits are the image's mean colour.

    Queries/keys are zero, so the class token attends uniformly to all tokens; values and the
    output projection copy features, the MLP adds nothing, and the patch embedding writes
    (+R, +G, +B, -R, -G, -B) into the first six features. After the LayerNorms the sign
    pattern survives, and the head reads features 0, 1, 2 -> classes red, green, blue.
    """
    model = get_model('testing', num_classes=3)
    params = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                       train=False)['params'])
    params = jax.tree_util.tree_map(np.zeros_like, params)
    block = params['Transformer']['encoderblock_0']
    for name in ('LayerNorm_0', 'LayerNorm_1'):
        block[name]['scale'] = np.ones(10, np.float32)
    params['Transformer']['encoder_norm']['scale'] = np.ones(10, np.float32)
    attn = block['MultiHeadDotProductAttention_0']
    attn['value']['kernel'] = np.eye(10, dtype=np.float32).reshape(10, 2, 5)
    attn['out']['kernel'] = np.eye(10, dtype=np.float32).reshape(2, 5, 10)
    kernel = np.zeros((16, 16, 3, 10), np.float32)
    for c in range(3):
        kernel[:, :, c, c] = 1.0 / 256
        kernel[:, :, c, 3 + c] = -1.0 / 256
    params['embedding']['kernel'] = kernel
    params['head']['kernel'] = np.eye(10, 3, dtype=np.float32)
    return params


def save_npz(params: dict, path) -> str:
    flat = {'/'.join(k.key for k in p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(path, **flat)
    return str(path)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('predict')
    ckpt = save_npz(color_classifier_params(), root / 'colors.npz')
    (root / 'labels.txt').write_text('red\ngreen\nblue\n')
    images = root / 'images'
    (images / 'sub').mkdir(parents=True)
    # Sizes differ from the model's 32 px on purpose: predict must resize.
    Image.new('RGB', (50, 70), COLORS['red']).save(images / 'red.png')
    Image.new('RGB', (33, 33), COLORS['green']).save(images / 'sub' / 'green.jpg', quality=95)
    Image.new('RGB', (200, 100), COLORS['blue']).save(images / 'blue.png')
    (images / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nthis is not an image')
    return root, ckpt


def test_known_answers_from_python(setup):
    root, ckpt = setup
    loaded = loader.load_model(ckpt, Facts(model_name='testing'))
    assert (loaded.image_size, loaded.num_classes) == (32, 3)
    paths = images.find_images([str(root / 'images')])
    doc = predict.predict_files(loaded, paths, k=2, batch_size=2,
                                class_names=labels.load_labels(str(root / 'labels.txt')))
    top1 = {os.path.basename(r['path']): r['predictions'][0]['label'] for r in doc['results']}
    assert top1 == {'red.png': 'red', 'green.jpg': 'green', 'blue.png': 'blue'}
    assert [s['path'] for s in doc['skipped']] == [str(root / 'images' / 'broken.png')]


@pytest.mark.slow
def test_cli_json_schema_and_corrupt_image(setup):
    root, ckpt = setup
    proc = subprocess.run(
        [sys.executable, '-m', 'vit_jax.predict', str(root / 'images' / '*.png'),
         str(root / 'images' / 'sub'), '--checkpoint', ckpt,     # architecture read from the file
         '--labels', str(root / 'labels.txt'), '--top-k', '3', '--json'],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {'checkpoint', 'image_size', 'num_classes', 'results', 'skipped'}
    assert doc['num_classes'] == 3 and doc['image_size'] == 32
    for r in doc['results']:
        assert set(r) == {'path', 'predictions'}
        preds = r['predictions']
        assert [p['rank'] for p in preds] == [1, 2, 3]
        assert all(set(p) == {'rank', 'index', 'label', 'probability'} for p in preds)
        probs = [p['probability'] for p in preds]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
        assert preds[0]['label'] == os.path.splitext(os.path.basename(r['path']))[0]
    assert len(doc['results']) == 3
    assert doc['skipped'][0]['path'].endswith('broken.png')
    assert 'broken.png' in proc.stderr


def test_cli_bad_input_is_one_line_error(setup, tmp_path, capsys):
    _, ckpt = setup
    for argv, expect in (([str(tmp_path / 'nothing*.jpg'), '--checkpoint', ckpt], 'nothing*.jpg'),
                         ([ckpt, '--checkpoint', str(tmp_path / 'missing.npz')], 'missing.npz')):
        with pytest.raises(SystemExit) as exit_info:
            predict.run(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert err.startswith('vit-predict: error:') and expect in err and len(err.strip().splitlines()) == 1


def test_default_labels_follow_the_head_size():
    one = labels.default_labels(1000)
    assert len(one) == 1000 and one[0].startswith('tench')
    assert len(labels.default_labels(21843)) == 21843 and labels.default_labels(3) is None


def test_center_crop_keeps_the_middle(tmp_path):
    image = Image.new('RGB', (300, 100), COLORS['blue'])
    image.paste(COLORS['red'], (50, 0, 250, 100))
    image.save(tmp_path / 'flag.png')
    load = lambda **kw: preprocessing.load_image(str(tmp_path / 'flag.png'),  # noqa: E731
                                                 preprocessing.for_inference(16, **kw))
    x = load(crop_fraction=0.5)    # resize to 32, central 16 crop
    np.testing.assert_allclose(x[..., 0], 1.0)   # only the red middle is left
    assert load()[0, 0, 2] == 1.0  # without crop the blue border stays


def test_training_workdir_gives_class_names(setup, tmp_path):
    root, _ = setup
    workdir = tmp_path / 'workdir'
    workdir.mkdir()
    checkpoint.save(color_classifier_params(), str(workdir / 'model.npz'))
    model = get_config('testing').to_dict()
    model.update(scan_layers=False, dtype='bfloat16')      # training choices inference ignores
    (workdir / 'config.json').write_text(json.dumps({
        'model': model, 'pp': {'crop': 32},
        'dataset_info': {'num_classes': 3, 'class_names': ['rouge', 'vert', 'bleu']}}))
    loaded = loader.load_model(str(workdir))
    assert loaded.class_names == ['rouge', 'vert', 'bleu'] and loaded.model.dtype is None
    doc = predict.predict_files(loaded, [str(root / 'images' / 'blue.png')], k=1)
    assert doc['results'][0]['predictions'][0]['label'] == 'bleu'
