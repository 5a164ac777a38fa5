"""Optax recipes: the original schedule formulas, LLRD factors, decay mask, gradient accumulation."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import optim
from vit_jax.configs import common
from vit_jax.errors import ConfigError
from vit_jax.models import get_model


def _config(**fields):
    """The default config (every field of vit_jax/configs/common.py) without warm-up, clipping or the
    bfloat16 momentum, with `fields` set."""
    config = ml_collections.ConfigDict(common.get_config().to_dict())
    config.update(dict(warmup_steps=0, grad_norm_clip=None, optim_dtype=None))
    config.update(fields)
    return config


def _closed_form(step, base, total, warmup, decay, end=1e-5):
    progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    lr = {'cosine': base * 0.5 * (1 + math.cos(math.pi * progress)),
          'linear': end + (base - end) * (1 - progress), 'constant': base}[decay]
    return lr * min(1.0, step / warmup) if warmup else lr


@pytest.mark.parametrize('decay', ['cosine', 'linear', 'constant'])
def test_schedule_matches_closed_form(decay):
    fn = optim.create_learning_rate_schedule(1000, 0.03, decay, warmup_steps=100)
    for step in [0, 1, 50, 99, 100, 101, 500, 999, 1000, 2000]:
        np.testing.assert_allclose(float(fn(step)), _closed_form(step, 0.03, 1000, 100, decay),
                                   rtol=1e-6, atol=1e-9)
    assert float(fn(0)) == 0.0


def test_schedule_rejects_bad_config():
    with pytest.raises(ConfigError, match='decay_type'):
        optim.create_learning_rate_schedule(100, 0.1, 'exp')
    # warmup_steps >= total_steps is allowed, as in the original (its 500-step presets do it):
    # the rate only warms up, and stays finite (vit_jax.optim logs a warning).
    lr = optim.create_learning_rate_schedule(100, 0.1, 'cosine', warmup_steps=100)
    values = np.array([lr(s) for s in (0, 50, 99, 100)])
    assert np.all(np.isfinite(values))
    assert values[1] == pytest.approx(0.05) and values[3] == pytest.approx(0.1)


def _params(scan=False, layers=3):
    model = get_model('testing', num_classes=4, scan_layers=scan, **{'transformer.num_layers': layers})
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))[
        'params']


def test_layer_decay_multipliers_per_block():
    mult = optim.layer_lr_multipliers(_params(), 0.5)
    depth = 3
    for i in range(depth):
        block = mult['Transformer'][f'encoderblock_{i}']
        assert {float(x) for x in jax.tree_util.tree_leaves(block)} == {0.5 ** (depth - i)}
    assert float(mult['embedding']['kernel']) == 0.5 ** (depth + 1)
    assert float(mult['cls']) == 0.5 ** (depth + 1)
    assert float(mult['Transformer']['posembed_input']['pos_embedding']) == 0.5 ** (depth + 1)
    assert float(mult['Transformer']['encoder_norm']['scale']) == 1.0
    assert float(mult['head']['kernel']) == 1.0
    # Scan layout: the same factors along the stacked axis.
    scanned = optim.layer_lr_multipliers(_params(scan=True), 0.5)
    kernel = scanned['Transformer']['encoderblock']['MlpBlock_0']['Dense_0']['kernel']
    np.testing.assert_allclose(np.ravel(kernel), [0.125, 0.25, 0.5])


def test_layer_decay_scales_updates():
    params = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape), _params())
    config = _config(optimizer='sgd', momentum=0.0, base_lr=1.0, total_steps=10,
                                            decay_type='constant', layer_decay=0.5)
    tx, _ = optim.make_optimizer(config, params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates['Transformer']['encoderblock_0']['LayerNorm_0']['scale'], -0.125)
    np.testing.assert_allclose(updates['head']['bias'], -1.0)


def test_weight_decay_mask_and_decoupled_decay():
    params = _params()
    mask = optim.weight_decay_mask(params)
    assert mask['head']['kernel'] and mask['embedding']['kernel']
    assert not mask['head']['bias'] and not mask['cls']
    assert not mask['Transformer']['posembed_input']['pos_embedding']
    assert not mask['Transformer']['encoderblock_0']['LayerNorm_0']['scale']
    # Zero gradient: AdamW moves only the decayed leaves, by lr * wd * p.
    params = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape), params)
    config = _config(optimizer='adam', base_lr=0.1, total_steps=10,
                                            decay_type='constant', weight_decay=0.5)
    tx, _ = optim.make_optimizer(config, params)
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates['head']['kernel'], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates['cls'], 0.0)


def test_sgd_bfloat16_momentum_accumulator():
    params = {'w': jnp.ones((3,))}
    config = _config(optimizer='sgd', base_lr=0.1, total_steps=10,
                                            optim_dtype='bfloat16')
    tx, _ = optim.make_optimizer(config, params)
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves(tx.init(params)) if x.ndim}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    with pytest.raises(ConfigError, match='optimizer'):
        bad = _config(optimizer='lamb', base_lr=1, total_steps=2)
        optim.make_optimizer(bad, params)


@pytest.mark.slow
def test_accumulated_gradient_equals_large_batch():
    model = get_model('testing', num_classes=5, **{'transformer.dropout_rate': 0.0})
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)['params']
    params = jax.tree_util.tree_map(lambda x: x + 0.01 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
                                    params)
    batch = {'image': jax.random.uniform(jax.random.PRNGKey(2), (8, 32, 32, 3), minval=-1, maxval=1),
             'label': jax.nn.one_hot(jnp.arange(8) % 5, 5)}

    def loss_fn(p, b, rng):
        logits = model.apply({'params': p}, b['image'], train=True, rngs={'dropout': rng})
        return -jnp.mean(jnp.sum(b['label'] * jax.nn.log_softmax(logits), -1)), None

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    accumulate = jax.jit(lambda p, b, n: optim.accumulate_gradient(grad_fn, p, b, jax.random.PRNGKey(3), n),
                         static_argnums=2)
    one, four = accumulate(params, batch, 1), accumulate(params, batch, 4)
    np.testing.assert_allclose(one.loss, four.loss, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(one.grads), jax.tree_util.tree_leaves(four.grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match='accum_steps=3'):
        optim.accumulate_gradient(grad_fn, params, batch, jax.random.PRNGKey(3), 3)
