"""RandAugment and Mixup / CutMix: ranges, label sums, determinism, and through the pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from vit_jax import augment

SEED = tf.constant([3, 4], tf.int64)


def _image(h=20, w=24):
    return tf.constant(np.random.default_rng(0).integers(0, 256, (h, w, 3)), tf.uint8)


def test_every_randaugment_op_keeps_shape_dtype_and_acts():
    image = _image()
    changed = 0
    for name, op in zip(augment.OP_NAMES, augment._ops(10), strict=True):
        out = op(image, SEED)
        assert out.shape == image.shape and out.dtype == tf.uint8, name
        changed += not np.array_equal(out.numpy(), image.numpy())
    assert changed >= 15  # at magnitude 10 all but possibly one op change a random image


def test_known_op_values():
    image = tf.constant([[[0, 100, 200]]], tf.uint8)
    np.testing.assert_array_equal(augment.invert(image).numpy(), [[[255, 155, 55]]])
    np.testing.assert_array_equal(augment.solarize(image, 128).numpy(), [[[0, 100, 55]]])
    np.testing.assert_array_equal(augment.posterize(image, 2).numpy(), [[[0, 64, 192]]])
    flat = tf.constant([[[10, 10, 10], [20, 20, 20]]], tf.uint8)
    np.testing.assert_array_equal(augment.autocontrast(flat).numpy()[0, :, 0], [0, 255])
    # translate by 1 pixel moves content right and fills with grey 128
    row = tf.constant(np.arange(12, dtype=np.uint8).reshape(1, 4, 3))
    np.testing.assert_array_equal(augment.translate_x(row, 1.0).numpy()[0, :, 0], [128, 0, 3, 6])


@pytest.mark.slow
@pytest.mark.parametrize('magnitude', [0, 10, 20])
def test_randaugment_in_range_and_deterministic(magnitude):
    fn = tf.function(lambda im, s: augment.randaugment(im, s, 2, magnitude))
    image = _image()
    outs = [fn(image, tf.constant([k, 1], tf.int64)).numpy() for k in range(8)]
    assert all(o.shape == (20, 24, 3) and o.dtype == np.uint8 for o in outs)
    np.testing.assert_array_equal(outs[0], fn(image, tf.constant([0, 1], tf.int64)).numpy())
    if magnitude:
        assert sum(not np.array_equal(o, image.numpy()) for o in outs) >= 4


def _batch(n=8, size=16, classes=5, smoothing=0.0):
    rng = np.random.default_rng(1)
    # Example i is constant with value v_i, so the source of every pixel is known.
    values = np.linspace(-1, 1, n, dtype=np.float32)
    images = np.broadcast_to(values[:, None, None, None], (n, size, size, 3)).copy()
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    labels = labels * (1 - smoothing) + smoothing / classes
    return {'image': tf.constant(images), 'label': tf.constant(labels)}, values


@pytest.mark.parametrize('mixup,cutmix', [(0.2, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mix_keeps_label_sums_and_range(mixup, cutmix):
    batch, _ = _batch(smoothing=0.1)
    mixed_any = False
    for k in range(6):
        out = augment.mix_batch(batch, tf.constant([k, 9], tf.int64), mixup, cutmix)
        np.testing.assert_allclose(out['label'].numpy().sum(1), 1, rtol=1e-6)
        assert out['image'].shape == batch['image'].shape
        assert np.abs(out['image'].numpy()).max() <= 1
        mixed_any |= not np.allclose(out['label'].numpy(), batch['label'].numpy())
    assert mixed_any


def test_cutmix_label_weight_is_the_pasted_area():
    batch, values = _batch()
    labels = batch['label'].numpy()
    for k in range(5):
        out = augment.mix_batch(batch, tf.constant([k, 2], tf.int64), 0.0, 1.0)
        img, lab = out['image'].numpy(), out['label'].numpy()
        own = np.isclose(img[..., 0], values[:, None, None]).mean(axis=(1, 2))  # fraction of own pixels
        expected = own[:, None] * labels + (1 - own[:, None]) * labels[::-1]
        np.testing.assert_allclose(lab, expected, atol=1e-6)


def test_mixup_prob_zero_leaves_batch_alone():
    batch, _ = _batch()
    out = augment.mix_batch(batch, SEED, 0.5, 1.0, prob=0.0)
    np.testing.assert_array_equal(out['image'].numpy(), batch['image'].numpy())
    np.testing.assert_array_equal(out['label'].numpy(), batch['label'].numpy())


@pytest.mark.slow
def test_pipeline_with_all_augmentations_is_in_range_and_resumable():
    from vit_jax import input_pipeline as ip
    from vit_jax.configs import common
    cfg = common.with_dataset(common.get_config(), 'digits')
    cfg.update(dict(batch=8, batch_eval=8, seed=0))
    cfg.pp.update(dict(crop=16, train_crop='inception'))
    cfg.aug.update(dict(randaugment_layers=1, randaugment_magnitude=15.0, mixup_alpha=0.5, cutmix_alpha=1.0,
                        label_smoothing=0.1))
    train, evals, _ = ip.get_datasets(cfg)
    batches = [next(train) for _ in range(4)]
    for b in batches:
        assert b['image'].min() >= -1 and b['image'].max() <= 1
        np.testing.assert_allclose(b['label'].sum(1), 1, rtol=1e-6)
        assert b['label'].min() > 0  # label smoothing
    state = {'step': 2, **{k: v for k, v in train.get_state().items() if k != 'step'}}
    again, _, _ = ip.get_datasets(cfg)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)['image'], batches[2]['image'])
    eval_batch = next(iter(evals))  # eval is never augmented
    assert set(np.unique(eval_batch['label'])) == {0.0, 1.0}
