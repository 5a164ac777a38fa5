"""The model family: parameter tree, counts, initialisers, numerics and every option."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from vit_jax.errors import ConfigError
from vit_jax.models import (
    MODEL_CONFIGS,
    VisionTransformer,
    blocks_to_scan,
    get_config,
    get_model,
    num_params,
    scan_to_blocks,
)

# docs/DESIGN.md: exact counts with a 1000-class head at 224 px.
PARAM_COUNTS = {
    'ViT-Ti_16': 5_717_416, 'ViT-S_16': 22_050_664, 'ViT-S_32': 22_878_952,
    'ViT-B_8': 86_576_872, 'ViT-B_16': 86_567_656, 'ViT-B_32': 88_224_232,
    'ViT-L_16': 304_326_632, 'ViT-L_32': 306_535_400, 'ViT-H_14': 632_045_800,
    'R+ViT-Ti_16': 6_337_704, 'R26+ViT-S_32': 36_431_912, 'R26+ViT-B_32': 101_383_976,
    'R50+ViT-B_16': 98_659_112, 'R50+ViT-L_32': 328_994_856,
    # Global average pooling, no class token (one position fewer) and no representation layer.
    'ViT-S_16-gap-norep': 22_049_896, 'ViT-B_16-gap-norep': 86_566_120,
    'ViT-S_32-gap-norep': 22_878_184, 'ViT-B_32-gap-norep': 88_222_696,
    'testing': 21_390, 'testing-unpooled': 21_370,
}


def _tiny(num_classes=7, **overrides):
    """A 2-block ViT on 16x16 images with 4x4 patches."""
    overrides = {'patches.size': (4, 4), 'hidden_size': 16, 'transformer.mlp_dim': 32,
                 'transformer.num_heads': 2, 'transformer.num_layers': 2, **overrides}
    return get_model('testing', num_classes=num_classes, **overrides)


def _images(n=2, size=16, seed=0):
    return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, 3), minval=-1, maxval=1)


def _init(model, x):
    return model.init(jax.random.PRNGKey(0), x, train=False)


def _randomize(params, seed=1):
    """Non-zero head/cls so that tests see every parameter's effect."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)])


@pytest.mark.slow
@pytest.mark.parametrize('name', list(PARAM_COUNTS))
def test_parameter_count_matches_the_public_checkpoints(name):
    model = get_model(name, num_classes=1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                               train=False))
    assert num_params(shapes['params']) == PARAM_COUNTS[name]


# docs/DESIGN.md "Public contract": exactly the original's names.
ORIGINAL_NAMES = {
    'ViT-Ti_16', 'ViT-S_16', 'ViT-S_32', 'ViT-B_8', 'ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32',
    'ViT-H_14',
    'ViT-S_16-gap-norep', 'ViT-S_32-gap-norep', 'ViT-B_16-gap-norep', 'ViT-B_32-gap-norep', 'R+ViT-Ti_16',
    'R26+ViT-S_32', 'R26+ViT-B_32', 'R50+ViT-B_16', 'R50+ViT-L_32', 'Mixer-B_16', 'Mixer-B_32', 'Mixer-L_16',
    'LiT-B16B', 'LiT-B16B_2', 'LiT-L16L', 'LiT-L16S', 'LiT-L16Ti', 'testing', 'testing-unpooled'}


def test_every_listed_model_is_registered():
    assert set(MODEL_CONFIGS) == ORIGINAL_NAMES and set(PARAM_COUNTS) < ORIGINAL_NAMES


def test_b16_parameter_tree_has_the_original_names_and_shapes():
    model = get_model('ViT-B_16', num_classes=21843, representation_size=768)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 384, 384, 3)),
                                               train=False))
    flat = {'/'.join(k): v.shape for k, v in flatten_dict(shapes['params']).items()}
    block = 'Transformer/encoderblock_11/'
    assert flat['embedding/kernel'] == (16, 16, 3, 768)
    assert flat['cls'] == (1, 1, 768)
    assert flat['Transformer/posembed_input/pos_embedding'] == (1, 577, 768)
    assert flat[block + 'MultiHeadDotProductAttention_0/query/kernel'] == (768, 12, 64)
    assert flat[block + 'MultiHeadDotProductAttention_0/value/bias'] == (12, 64)
    assert flat[block + 'MultiHeadDotProductAttention_0/out/kernel'] == (12, 64, 768)
    assert flat[block + 'MlpBlock_0/Dense_0/kernel'] == (768, 3072)
    assert flat[block + 'MlpBlock_0/Dense_1/kernel'] == (3072, 768)
    assert flat[block + 'LayerNorm_0/scale'] == (768,)
    assert flat[block + 'LayerNorm_1/bias'] == (768,)
    assert flat['Transformer/encoder_norm/scale'] == (768,)
    assert flat['pre_logits/kernel'] == (768, 768)
    assert flat['head/kernel'] == (768, 21843)
    assert 'Transformer/encoderblock_12/LayerNorm_0/scale' not in flat


def test_hybrid_stem_names_and_forward():
    """Names and shapes, traced abstractly (a hybrid trains numerically in test_original_commands)."""
    model = get_model('R26+ViT-S_32', num_classes=5, **{'transformer.num_layers': 1})
    x = _images(size=64)
    variables = jax.eval_shape(lambda: _init(model, x))
    flat = {'/'.join(k): v.shape for k, v in flatten_dict(variables['params']).items()}
    assert flat['conv_root/kernel'] == (7, 7, 3, 64)
    assert flat['gn_root/scale'] == (64,)
    assert flat['block1/unit1/conv_proj/kernel'] == (1, 1, 64, 256)
    assert flat['block4/unit2/conv3/kernel'] == (1, 1, 512, 2048)
    assert flat['block4/unit2/gn3/scale'] == (2048,)
    assert flat['embedding/kernel'] == (1, 1, 2048, 384)
    # 64 px / 32 = 2x2 grid + class token.
    assert flat['Transformer/posembed_input/pos_embedding'] == (1, 5, 384)
    assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (2, 5)


@pytest.mark.parametrize('classifier,rep,shape', [
    ('token', None, (2, 7)), ('gap', None, (2, 7)), ('token', 12, (2, 7)),
    ('unpooled', None, (2, 16, 7)), ('token_unpooled', None, (2, 17, 7)),
])
@pytest.mark.slow
def test_output_shape_per_classifier(classifier, rep, shape):
    model = _tiny(classifier=classifier, representation_size=rep)
    x = _images()
    variables = _init(model, x)
    assert model.apply(variables, x, train=False).shape == shape
    assert ('cls' in variables['params']) == classifier.startswith('token')
    assert ('pre_logits' in variables['params']) == (rep is not None)


def test_no_head_returns_the_representation():
    model = _tiny(num_classes=None)
    x = _images()
    assert model.apply(_init(model, x), x, train=False).shape == (2, 16)


def test_initialisers_follow_the_original():
    model = get_model('testing', num_classes=10, hidden_size=64, **{'transformer.mlp_dim': 256})
    params = _init(model, jnp.zeros((1, 224, 224, 3)))['params']
    assert not np.any(params['head']['kernel']) and not np.any(params['head']['bias'])
    assert not np.any(params['cls'])
    pos = np.asarray(params['Transformer']['posembed_input']['pos_embedding'])
    assert pos.shape == (1, 197, 64)
    assert abs(pos.std() - 0.02) < 0.001
    mlp = params['Transformer']['encoderblock_0']['MlpBlock_0']
    assert 0 < np.abs(mlp['Dense_0']['bias']).max() < 1e-5
    kernel = np.asarray(mlp['Dense_0']['kernel'])
    bound = np.sqrt(6 / (64 + 256))  # Xavier uniform.
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    attn = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']
    assert not np.any(attn['query']['bias'])


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _reference_vit(params, images, patch, heads):
    """The original ViT forward written out in NumPy (float64), independent of Flax."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(images, np.float64)
    n, h, w, _ = x.shape
    g = h // patch
    tiles = x.reshape(n, g, patch, g, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, -1)
    kernel = p['embedding']['kernel'].reshape(-1, p['embedding']['kernel'].shape[-1])
    tokens = tiles @ kernel + p['embedding']['bias']
    cls = np.broadcast_to(p['cls'], (n, 1, tokens.shape[-1]))
    x = np.concatenate([cls, tokens], axis=1) + p['Transformer']['posembed_input']['pos_embedding']
    blocks = sorted((k for k in p['Transformer'] if k.startswith('encoderblock_')),
                    key=lambda k: int(k.split('_')[1]))
    for name in blocks:
        b = p['Transformer'][name]
        y = _layer_norm(x, b['LayerNorm_0'])
        a = b['MultiHeadDotProductAttention_0']
        q, k, v = (np.einsum('ntd,dhe->nthe', y, a[m]['kernel']) + a[m]['bias']
                   for m in ('query', 'key', 'value'))
        logits = np.einsum('nqhe,nkhe->nhqk', q / np.sqrt(q.shape[-1]), k)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        y = np.einsum('nhqk,nkhe->nqhe', weights, v)
        x = x + np.einsum('nqhe,hed->nqd', y, a['out']['kernel']) + a['out']['bias']
        m = b['MlpBlock_0']
        y = _layer_norm(x, b['LayerNorm_1'])
        y = _gelu_tanh(y @ m['Dense_0']['kernel'] + m['Dense_0']['bias'])
        x = x + y @ m['Dense_1']['kernel'] + m['Dense_1']['bias']
    x = _layer_norm(x, p['Transformer']['encoder_norm'])[:, 0]
    return x @ p['head']['kernel'] + p['head']['bias']


@pytest.mark.slow
def test_logits_match_an_independent_numpy_reference():
    model = _tiny()
    x = _images()
    params = _randomize(_init(model, x)['params'])
    want = _reference_vit(params, x, patch=4, heads=2)
    got = model.apply({'params': params}, x, train=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('classifier', ['token', 'gap', 'unpooled', 'token_unpooled'])
@pytest.mark.parametrize('dtype', [None, 'bfloat16'])
@pytest.mark.parametrize('impl', ['xla', 'auto'])
def test_fused_attention_matches_the_einsum_formula(impl, dtype, classifier):
    """The default ('auto': jax.nn.dot_product_attention) gives the original formula's outputs to
    float tolerance (1e-5 relative in float32; bfloat16 rounding in bfloat16)."""
    x = _images()
    kw = dict(classifier=classifier, dtype=dtype and jnp.bfloat16)
    params = _randomize(_init(_tiny(**kw), x)['params'])
    outputs = {i: np.asarray(_tiny(attention_impl=i, **kw).apply({'params': params}, x, train=False),
                             np.float32) for i in ('einsum', impl)}
    want, got = outputs['einsum'], outputs[impl]
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= (1e-5 if dtype is None else 2e-2) * scale


@pytest.mark.parametrize('overrides', [
    {}, pytest.param({'scan_layers': True, 'remat': True}, marks=pytest.mark.slow),
    pytest.param({'classifier': 'map'}, marks=pytest.mark.slow)])
def test_cpu_backwards_give_jax_grads_gradients_and_logits(overrides):
    """The defaults' own backward passes on CPU (the dense layers' `fast_weight_grad` and 'auto''s
    head-major attention) give the logits and gradients (parameters and images, dropout active) of
    jax.grad through jax.nn.dot_product_attention and plain dense layers to f32 rounding."""
    x = _images()
    kw = {'transformer.dropout_rate': 0.1, **overrides}
    params = _randomize(_init(_tiny(**kw), x)['params'])
    rngs = {'dropout': jax.random.PRNGKey(3)}

    def grads(fast):
        model = _tiny(**kw) if fast else _tiny(fast_weight_grad=False, attention_impl='xla', **kw)
        loss = lambda p, x: jnp.sum(model.apply({'params': p}, x, train=True, rngs=rngs) ** 2)  # noqa: E731
        return model.apply({'params': params}, x, train=False), jax.jit(jax.grad(loss, (0, 1)))(params, x)

    (want_logits, want), (got_logits, got) = grads(False), grads(True)
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-6, atol=1e-6)
    want, got = ({**flatten_dict(g[0]), 'images': g[1]} for g in (want, got))
    scale = max(float(np.abs(g).max()) for g in want.values())   # (some, e.g. key biases', are ~0)
    for key, g in got.items():
        np.testing.assert_allclose(g, want[key], rtol=1e-4, atol=1e-5 * scale, err_msg=str(key))


def test_attention_dropout_and_weights_use_the_formula_under_every_setting():
    x = _images()
    model = _tiny(**{'transformer.attention_dropout_rate': 0.5})
    params = _randomize(_init(model, x)['params'])
    rngs = {'dropout': jax.random.PRNGKey(3)}
    fused = model.apply({'params': params}, x, train=True, rngs=rngs)
    formula = _tiny(attention_impl='einsum', **{'transformer.attention_dropout_rate': 0.5}).apply(
        {'params': params}, x, train=True, rngs=rngs)
    np.testing.assert_array_equal(fused, formula)   # the same dropout mask: the same computation
    _, weights = model.apply({'params': params}, x, train=False, return_attention=True)
    assert weights.shape[-2:] == (17, 17)


def test_scan_layout_gives_the_same_outputs_after_converting_parameters():
    x = _images()
    params = _randomize(_init(_tiny(), x)['params'])
    want = _tiny().apply({'params': params}, x, train=False)
    scanned = blocks_to_scan(params)
    assert scanned['Transformer']['encoderblock']['MlpBlock_0']['Dense_0']['kernel'].shape == (2, 16, 32)
    scan_model = _tiny(scan_layers=True)
    expected_tree = jax.eval_shape(lambda: _init(scan_model, x))['params']
    assert jax.tree_util.tree_structure(expected_tree) == jax.tree_util.tree_structure(scanned)
    np.testing.assert_allclose(scan_model.apply({'params': scanned}, x, train=False), want,
                               rtol=1e-5, atol=1e-6)
    back = scan_to_blocks(scanned)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


@pytest.mark.slow
def test_remat_gives_the_same_outputs_and_gradients():
    x = _images()
    params = _randomize(_init(_tiny(), x)['params'])

    def loss_and_grad(model):
        loss = lambda p: jnp.sum(model.apply({'params': p}, x, train=False) ** 2)
        return jax.value_and_grad(loss)(params)

    want_loss, want_grad = loss_and_grad(_tiny())
    for kwargs in ({'remat': True}, {'remat': True, 'scan_layers': False}):
        loss, grad = loss_and_grad(_tiny(**kwargs))
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                               grad, want_grad)


def test_remat_under_scan_runs_and_matches():
    x = _images()
    params = _randomize(_init(_tiny(), x)['params'])
    want = _tiny().apply({'params': params}, x, train=False)
    got = _tiny(remat=True, scan_layers=True).apply({'params': blocks_to_scan(params)}, x, train=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
    x = _images()
    model = _tiny(dtype=jnp.bfloat16)
    variables = _init(model, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    params = _randomize(variables['params'])
    want = _tiny().apply({'params': params}, x, train=False)
    got = model.apply({'params': params}, x, train=False)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=0.05 * float(jnp.abs(want).max()))
    assert not np.allclose(got, want, atol=1e-7)  # really computed in bfloat16


def test_dropout_is_active_only_in_training():
    model = _tiny(**{'transformer.dropout_rate': 0.3, 'transformer.attention_dropout_rate': 0.3})
    x = _images()
    params = _randomize(_init(model, x)['params'])
    ev1 = model.apply({'params': params}, x, train=False)
    ev2 = model.apply({'params': params}, x, train=False)
    np.testing.assert_array_equal(ev1, ev2)
    tr = [model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(s)})
          for s in (0, 1)]
    assert not np.allclose(tr[0], ev1)
    assert not np.allclose(tr[0], tr[1])
    with pytest.raises(Exception, match='dropout'):
        model.apply({'params': params}, x, train=True)  # no dropout rng given


def test_stochastic_depth_drops_residual_branches_only_in_training():
    model = _tiny(**{'transformer.stochastic_depth': 0.5, 'transformer.dropout_rate': 0.0})
    x = _images(n=8)
    params = _randomize(_init(model, x)['params'])
    plain = _tiny(**{'transformer.dropout_rate': 0.0}).apply({'params': params}, x, train=False)
    np.testing.assert_array_equal(model.apply({'params': params}, x, train=False), plain)
    tr = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(0)})
    assert not np.allclose(tr, plain)
    # Same under scan (the per-block rates travel as a scanned input).
    scan = _tiny(scan_layers=True,
                 **{'transformer.stochastic_depth': 0.5, 'transformer.dropout_rate': 0.0})
    out = scan.apply({'params': blocks_to_scan(params)}, x, train=True,
                     rngs={'dropout': jax.random.PRNGKey(0)})
    assert out.shape == tr.shape and not np.allclose(out, plain)


def test_return_attention_gives_row_stochastic_weights_per_layer():
    x = _images()
    for scan in (False, True):
        model = _tiny(scan_layers=scan)
        logits, attn = model.apply(_init(model, x), x, train=False, return_attention=True)
        assert logits.shape == (2, 7)
        assert attn.shape == (2, 2, 2, 17, 17)  # layers, batch, heads, tokens, tokens
        np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-5)


def test_layer_norm_eps_and_exact_gelu_change_the_numerics():
    x = _images()
    params = _randomize(_init(_tiny(), x)['params'])
    base = _tiny().apply({'params': params}, x, train=False)
    for kwargs in ({'gelu_approximate': False}, {'layer_norm_eps': 1e-2}):
        other = _tiny(**kwargs).apply({'params': params}, x, train=False)
        assert not np.allclose(other, base, atol=1e-6)


@pytest.mark.parametrize('overrides,pattern', [
    ({'hidden_size': 15}, 'hidden_size=15 is not divisible by transformer.num_heads=2'),
    ({'classifier': 'cls'}, "classifier='cls' is unknown"),
    ({'attention_impl': 'flash'}, "attention_impl='flash' is unknown"),
    ({'transformer.num_head': 3}, 'transformer.num_head is not a transformer field'),
    ({'posemb': 'sincos'}, "posemb='sincos' is unknown"),
    ({'distillation_token': True, 'classifier': 'gap'}, "distillation_token needs classifier='token'"),
])
def test_bad_config_raises_a_clear_error_naming_the_field(overrides, pattern):
    with pytest.raises((ValueError, ConfigError), match=pattern.replace('(', r'\(').replace('[', r'\[')):
        _init(_tiny(**overrides), _images())


def test_image_not_divisible_by_patch_drops_the_remainder_as_the_original():
    """A VALID patch convolution, as the original: 18x18 with 4x4 patches sees the top-left 16x16."""
    model, x = _tiny(), _images(size=18)
    params = _randomize(_init(model, _images())['params'])
    np.testing.assert_array_equal(model.apply({'params': params}, x, train=False),
                                  model.apply({'params': params}, x[:, :16, :16], train=False))
    with pytest.raises(ValueError, match=r'3x3 .*smaller than patches.size=\(4, 4\)'):
        _init(model, _images(size=3))


def test_configs_are_locked_and_get_model_overrides_are_checked():
    with pytest.raises(AttributeError):   # locked, as the original's: no new fields
        MODEL_CONFIGS['ViT-B_16'].no_such_field = 1
    config = get_config('ViT-B_16')
    config.hidden_size = 1  # a mutable, deep copy
    config.patches.size = (2, 2)
    assert MODEL_CONFIGS['ViT-B_16'].hidden_size == 768
    assert get_config('ViT-B_16').patches.size == (16, 16)
    with pytest.raises(ConfigError, match='unknown model'):
        get_config('ViT-Z_16')
    with pytest.raises(ConfigError, match="'resnet' is not a field"):
        get_model('ViT-B_16', **{'resnet.num_layers': (3,)})
    model = get_model('ViT-B_16', num_classes=3, **{'transformer.dropout_rate': 0.2})
    assert model.transformer['dropout_rate'] == 0.2 and model.num_classes == 3


def test_original_style_construction_from_a_config_dict():
    config = ml_collections.ConfigDict(dict(
        model_name='custom', patches={'size': (4, 4)}, hidden_size=8, classifier='gap',
        representation_size=None,
        transformer=dict(mlp_dim=16, num_heads=2, num_layers=1, dropout_rate=0.0,
                         attention_dropout_rate=0.0)))
    model = VisionTransformer(num_classes=3, **config)
    x = _images()
    assert model.apply(_init(model, x), x, train=False).shape == (2, 3)


@pytest.mark.parametrize('name', ['ViT-B_16', 'ViT-H_14', 'R+ViT-Ti_16', 'R26+ViT-S_32', 'R50+ViT-B_16'])
def test_patch_stride_and_prefix_tokens_predict_the_position_embedding(name):
    model = get_model(name)
    shapes = jax.eval_shape(lambda: _init(model, jnp.zeros((1, 224, 224, 3))))
    tokens = shapes['params']['Transformer']['posembed_input']['pos_embedding'].shape[1]
    assert tokens == model.num_prefix_tokens + (224 // model.patch_stride[0]) ** 2
    assert _tiny(classifier='gap').num_prefix_tokens == 0
