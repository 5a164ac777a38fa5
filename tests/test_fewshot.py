"""Few-shot linear evaluation: separable features -> 100 %, random labels -> chance."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.linear_model import Ridge

from vit_jax import checkpoint, fewshot
from vit_jax.errors import DataError
from vit_jax.models import get_model


def _clusters(rng, n_per_class, centres, noise):
    labels = np.repeat(np.arange(len(centres)), n_per_class)
    return centres[labels] + noise * rng.normal(size=(len(labels), centres.shape[1])), labels


def test_separable_features_reach_100_percent():
    rng = np.random.default_rng(0)
    centres = 3.0 * rng.normal(size=(10, 64))
    train_x, train_y = _clusters(rng, 30, centres, 0.3)
    test_x, test_y = _clusters(rng, 50, centres, 0.3)
    acc = fewshot.fewshot_from_features(train_x, train_y, test_x, test_y)
    assert acc == {1: 1.0, 5: 1.0, 10: 1.0, 25: 1.0}


def test_random_labels_give_chance():
    rng = np.random.default_rng(1)
    train_x, test_x = rng.normal(size=(500, 32)), rng.normal(size=(3000, 32))
    train_y, test_y = rng.integers(0, 10, 500), rng.integers(0, 10, 3000)
    acc = fewshot.fewshot_from_features(train_x, train_y, test_x, test_y, shots=(5, 25))
    for a in acc.values():
        assert 0.06 < a < 0.14, acc


def test_least_squares_matches_sklearn_ridge_in_both_forms():
    rng = np.random.default_rng(2)
    for n, d in ((20, 50), (200, 10)):            # dual (n < d) and primal (n > d) forms
        x, y = rng.normal(size=(n, d)), rng.integers(0, 3, n)
        z = rng.normal(size=(7, d))
        ours = fewshot.fit_least_squares(x, y, 3, l2_reg=4.0)(z)
        xs = (x - x.mean(0)) / (x.std(0) + 1e-5)
        # The bias feature 100 is regularised with strength 4 / 100²: nearly a free intercept.
        xb = np.pad(xs, ((0, 0), (0, 1)), constant_values=100.0)
        ridge = Ridge(alpha=4.0, fit_intercept=False).fit(xb, 2 * np.eye(3)[y] - 1)
        zb = np.pad((z - x.mean(0)) / (x.std(0) + 1e-5), ((0, 0), (0, 1)), constant_values=100.0)
        np.testing.assert_allclose(ours, ridge.predict(zb), rtol=1e-6, atol=1e-8)


def test_sample_shots_errors_when_a_class_is_too_small():
    with pytest.raises(DataError, match='class 1 has 2 training examples'):
        fewshot.sample_shots(np.array([0, 0, 0, 1, 1]), 3)


def test_support_sets_are_seeded_random_and_nested():
    labels = np.repeat(np.arange(4), 50)
    five, ten = fewshot.sample_shots(labels, 5, seed=3), fewshot.sample_shots(labels, 10, seed=3)
    assert np.bincount(labels[five]).tolist() == [5] * 4
    for c in range(4):   # the first 5 of each class in the 10-shot set are the 5-shot set
        np.testing.assert_array_equal(ten[labels[ten] == c][:5], five[labels[five] == c])
    assert not np.array_equal(five, fewshot.sample_shots(labels, 5, seed=4))
    assert not np.array_equal(np.sort(five), np.concatenate([np.arange(5) + 50 * c for c in range(4)]))


def _color_images(rng, n_per_class):
    colours = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float32) * 0.8
    labels = np.repeat(np.arange(3), n_per_class)
    images = colours[labels][:, None, None, :] + 0.1 * rng.normal(size=(len(labels), 32, 32, 3))
    return images.astype(np.float32), labels


def test_evaluator_on_a_model():
    model = get_model('testing', num_classes=5, representation_size=6)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
    rng = np.random.default_rng(0)
    train_x, train_y = _color_images(rng, 6)
    test_x, test_y = _color_images(rng, 10)
    support = fewshot.sample_shots(train_y, 5)          # drawn once, by the caller
    evaluator = fewshot.FewShotEvaluator(model, train_x[support], train_y[support], test_x, test_y,
                                         shots=(1, 5), batch_size=8)
    assert len(evaluator.train_images) == 15            # the support set as given, not re-sampled
    np.testing.assert_array_equal(evaluator.train_labels, train_y[support])
    feats = evaluator.represent(params, test_x[:3])
    assert feats.shape == (3, 6) and np.all(np.abs(feats) <= 1)   # tanh pre-logits, not the 5-way head
    metrics = evaluator({'params': params})
    assert set(metrics) == {'fewshot/1shot', 'fewshot/5shot'}
    assert metrics['fewshot/5shot'] == 1.0          # solid colours are separable in any embedding


def test_cli_on_a_folder(tmp_path, capsys):
    model = get_model('testing', num_classes=3)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
    checkpoint.save(params, str(tmp_path / 'm.npz'))
    rng = np.random.default_rng(0)
    for split, n in (('train', 3), ('test', 4)):
        for name, colour in (('red', (220, 20, 20)), ('blue', (20, 20, 220))):
            (tmp_path / 'data' / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 10, (40, 40, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / 'data' / split / name / f'{i}.png')
    rc = fewshot.main(['--checkpoint', str(tmp_path / 'm.npz'), '--folder', str(tmp_path / 'data'),
                       '--shots', '1', '3', '--json'])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out) == {'1': 1.0, '3': 1.0}
    assert '6 support / 8 test images, 2 classes' in out.err
    # Bad input: one line naming what is wrong, exit code 2.
    with pytest.raises(SystemExit) as e:
        fewshot.run(['--checkpoint', str(tmp_path / 'm.npz'), '--folder', str(tmp_path / 'nope')])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('vit-fewshot: error:') and 'nope' in err and '\n' not in err
    with pytest.raises(SystemExit) as e:
        fewshot.run(['--checkpoint', str(tmp_path / 'm.npz'), '--folder', str(tmp_path / 'data'),
                     '--shots', '4'])
    assert e.value.code == 2 and 'fewer than 4 shots' in capsys.readouterr().err


def test_cli_on_tfds(tmp_path, capsys):
    model = get_model('testing', num_classes=3)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
    checkpoint.save(params, str(tmp_path / 'm.npz'))
    with tfds.testing.mock_data(num_examples=60):
        rc = fewshot.main(['--checkpoint', str(tmp_path / 'm.npz'), '--dataset', 'cifar10',
                           '--shots', '1', '2', '--max-test', '20', '--json'])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert '20 support / 20 test images, 10 classes' in out.err
    assert set(json.loads(out.out)) == {'1', '2'}
