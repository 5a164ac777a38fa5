"""Hugging Face DeiT (with and without teacher, DeiTModel) and DINOv2 directories load exactly through
the one loader, and DeiT exports back into the transformers class that wrote it (strict keys, same logits).

Tiny random models are built with the real transformers classes and saved with `save_pretrained`, as
users publish them; every parameter is random (transformers zero-initialises DeiT's tokens and sets
layer scale to a constant, which would hide a swapped or dropped one). The max relative errors are
printed (`-s`).
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import convert
from vit_jax.checkpoint import CheckpointError, loader
from vit_jax.models import VisionTransformer

TOLERANCE = 1e-5   # relative, on logits / features
IMAGES = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)


@pytest.fixture(scope='module')
def tf():
    """(torch, transformers), imported once for the module."""
    torch = pytest.importorskip('torch')
    return torch, pytest.importorskip('transformers')


def _randomize(torch, model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model.eval()


def _save(tf, tmp_path, name, cls, config, seed=0):
    torch, transformers = tf
    model = _randomize(torch, getattr(transformers, cls)(config), seed)
    model.save_pretrained(str(tmp_path / name))
    return model, str(tmp_path / name)


def _theirs(tf, model, images=IMAGES):
    torch = tf[0]
    with torch.no_grad():
        out = model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    return (out.logits if getattr(out, 'logits', None) is not None else out.pooler_output).numpy()


def _ours(source, images=IMAGES):
    loaded = loader.load_model(source)
    return np.asarray(loaded.model.apply({'params': loaded.params}, jnp.asarray(images), train=False))


def _rel_err(got, want, label):
    assert got.shape == want.shape, (got.shape, want.shape)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    print(f'\nmax relative error [{label}]: {err:.2e}')
    return err


def _deit_config(transformers, **kw):
    return transformers.DeiTConfig(**{**TINY, 'intermediate_size': 64, 'num_labels': 5, **kw})


def _dinov2_config(transformers, **kw):
    return transformers.Dinov2Config(**{**TINY, **kw})


@pytest.mark.parametrize('cls', ['DeiTForImageClassification', 'DeiTForImageClassificationWithTeacher',
                                 'DeiTModel'])
def test_hf_deit_loads_exactly(tf, tmp_path, cls):
    """WithTeacher: the mean of the class and distillation heads; DeiTForImageClassification: the class
    token's head alone; DeiTModel: its pooler (tanh(dense(class token))) as pre_logits features."""
    model, path = _save(tf, tmp_path, 'deit', cls, _deit_config(tf[1], layer_norm_eps=1e-6))
    found = loader.read(path)
    assert found.format == 'hf' and 'dist' in found.params
    assert ('head_dist' in found.params) == (cls == 'DeiTForImageClassificationWithTeacher')
    assert found.model_config.layer_norm_eps == 1e-6 and found.model_config.gelu_approximate is False
    assert _rel_err(_ours(path), _theirs(tf, model), f'HF {cls}') <= TOLERANCE


def test_hf_deit_with_teacher_averages_the_two_heads(tf, tmp_path):
    """transformers' logits are (cls_logits + distillation_logits) / 2; ours are too, and each head
    alone differs (the distillation head is not dropped or duplicated)."""
    model, path = _save(tf, tmp_path, 'deit', 'DeiTForImageClassificationWithTeacher', _deit_config(tf[1]))
    torch = tf[0]
    with torch.no_grad():
        out = model(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(out.logits.numpy(), (out.cls_logits + out.distillation_logits).numpy() / 2,
                               rtol=1e-6)
    ours = _ours(path)
    assert _rel_err(ours, out.logits.numpy(), 'HF DeiT with teacher') <= TOLERANCE
    assert np.abs(ours - out.cls_logits.numpy()).max() > 1e-2


def test_hf_dinov2_model_features_load_exactly(tf, tmp_path):
    """Dinov2Model's pooler_output (the class token after the final LayerNorm) with its layer scale, MLP
    ratio, LayerNorm eps and qkv_bias from config.json, at its native size."""
    config = _dinov2_config(tf[1], mlp_ratio=3, layer_norm_eps=1e-5, layerscale_value=0.5, qkv_bias=False)
    model, path = _save(tf, tmp_path, 'dinov2', 'Dinov2Model', config)
    found = loader.read(path)
    assert found.model_config.transformer.mlp_dim == 96
    assert found.model_config.transformer.layer_scale == 0.5
    assert found.model_config.layer_norm_eps == 1e-5
    assert not np.any(found.params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']
                      ['query']['bias'])
    assert _rel_err(_ours(path), _theirs(tf, model), 'HF Dinov2Model') <= TOLERANCE


@pytest.mark.parametrize('cls', ['DeiTForImageClassification', 'DeiTForImageClassificationWithTeacher',
                                 'DeiTModel'])
def test_hf_deit_exports_back_strict_loading(tf, tmp_path, cls):
    """vit-convert DIR OUT --to hf writes the same transformers class, which loads it with no missing,
    unexpected or mismatched keys and gives the source's logits."""
    torch, transformers = tf
    model, path = _save(tf, tmp_path, 'deit', cls, _deit_config(transformers))
    assert convert.main([path, str(tmp_path / 'out'), '--to', 'hf']) == 0
    written = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert written['architectures'] == [cls] and written['model_type'] == 'deit'
    back, info = getattr(transformers, cls).from_pretrained(str(tmp_path / 'out'), output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
    assert _rel_err(_theirs(tf, back.eval()), _theirs(tf, model), f'HF {cls} exported back') <= TOLERANCE


def _distilled_vit_jax(seed=0):
    """A random vit_jax (timm-style) distilled model: (config, params, logits: the mean of its two heads)."""
    config = ml_collections.ConfigDict(dict(
        patches={'size': (8, 8)}, hidden_size=32, classifier='token', distillation_token=True,
        transformer=dict(num_layers=2, num_heads=2, mlp_dim=64, dropout_rate=0.0, attention_dropout_rate=0.0),
        layer_norm_eps=1e-6, gelu_approximate=False))
    model = VisionTransformer(num_classes=5, **config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), IMAGES, train=False))['params']
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), shapes)
    return config, params, np.asarray(model.apply({'params': params}, IMAGES, train=False))


def test_distilled_vit_jax_model_exports_to_deit_with_teacher(tf, tmp_path):
    """A vit_jax (timm-style) distilled model, whose logits are the mean of its two heads, is
    DeiTForImageClassificationWithTeacher in transformers."""
    config, params, ours = _distilled_vit_jax()
    convert.export(params, config, str(tmp_path / 'out'), 'hf')
    back, info = tf[1].DeiTForImageClassificationWithTeacher.from_pretrained(
        str(tmp_path / 'out'), output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
    assert _rel_err(_theirs(tf, back.eval()), ours, 'vit_jax distilled -> HF DeiT with teacher') <= TOLERANCE


@pytest.mark.parametrize('cls', ['Dinov2WithRegistersModel', 'Dinov2WithRegistersForImageClassification'])
def test_hf_dinov2_with_registers_loads_exactly(tf, tmp_path, cls):
    """model_type='dinov2_with_registers': register tokens after the class token, without position
    embedding (zero rows); its classifier pools the patch tokens after the registers."""
    config = tf[1].Dinov2WithRegistersConfig(**TINY, num_register_tokens=3, num_labels=5, layer_norm_eps=1e-5)
    model, path = _save(tf, tmp_path, 'dinov2_reg', cls, config)
    found = loader.read(path)
    assert found.model_config.num_registers == 3 and found.model_config.layer_norm_eps == 1e-5
    assert found.model_config.classifier == ('token_gap' if cls.endswith('Classification') else 'token')
    assert _rel_err(_ours(path), _theirs(tf, model), f'HF {cls}') <= TOLERANCE
    _edit_config(tmp_path / 'dinov2_reg', num_register_tokens=4)
    _refused(path, f'{path}/config.json', 'num_register_tokens=4')


def test_hf_dinov2_for_image_classification_loads_exactly(tf, tmp_path):
    """Dinov2ForImageClassification's head reads the class token concatenated with the mean of the patch
    tokens: vit_jax's classifier='token_gap'. No export format records that head: refused in one line."""
    model, path = _save(tf, tmp_path, 'dinov2', 'Dinov2ForImageClassification',
                        _dinov2_config(tf[1], num_labels=5))
    found = loader.read(path)
    assert found.model_config.classifier == 'token_gap'
    assert found.params['head']['kernel'].shape == (64, 5)
    assert _rel_err(_ours(path), _theirs(tf, model), 'HF Dinov2ForImageClassification') <= TOLERANCE
    with pytest.raises(CheckpointError, match='an .npz does not record the pooling'):
        convert.export(found.params, found.model_config, str(tmp_path / 'out.npz'), 'npz')
    with pytest.raises(CheckpointError, match="classifier='token_gap' cannot be exported to timm"):
        convert.export(found.params, found.model_config, str(tmp_path / 'out.safetensors'), 'timm')


@pytest.mark.parametrize('cls', ['DeiTForImageClassificationWithTeacher', 'DeiTForImageClassification',
                                 'Dinov2ForImageClassification'])
def test_hf_classifiers_without_labels_give_their_features(tf, tmp_path, cls):
    """num_labels=0 (Identity heads, no head weights): the class named by config.json `architectures`
    decides the features: the mean of the class and distillation tokens (WithTeacher), the class token
    (DeiTForImageClassification), or [class token, mean patch token] (Dinov2ForImageClassification)."""
    make = _dinov2_config if cls.startswith('Dinov2') else _deit_config
    model, path = _save(tf, tmp_path, 'model', cls, make(tf[1], num_labels=0))
    assert _rel_err(_ours(path), _theirs(tf, model), f'HF {cls} without labels') <= TOLERANCE


def _refused(path, *needles):
    with pytest.raises(CheckpointError) as e:
        loader.read(path)
    message = str(e.value)
    assert '\n' not in message and all(n in message for n in needles), message
    return message


def _edit_config(directory, **fields):
    path = directory / 'config.json'
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return str(path)


def test_hf_dinov2_refusals_name_the_file_and_field(tf, tmp_path):
    """SwiGLU (use_swiglu_ffn, or its weights under a config that denies it) and an mlp_ratio that
    contradicts the weights."""
    transformers = tf[1]
    _, swiglu = _save(tf, tmp_path, 'swiglu', 'Dinov2Model',
                      _dinov2_config(transformers, use_swiglu_ffn=True))
    _refused(swiglu, f'{swiglu}/config.json', 'use_swiglu_ffn=true', 'SwiGLU')
    _edit_config(tmp_path / 'swiglu', use_swiglu_ffn=False)
    _refused(swiglu, 'model.safetensors', 'SwiGLU MLP is not supported')
    _, plain = _save(tf, tmp_path, 'plain', 'Dinov2Model', _dinov2_config(transformers))
    _edit_config(tmp_path / 'plain', mlp_ratio=2)
    _refused(plain, f'{plain}/config.json', 'mlp_ratio=2')


def _deit_dir(tmp_path, name='deit', distillation_head=True):
    """A DeiT directory written by our export (no transformers needed): (path, the model's logits)."""
    config, params, ours = _distilled_vit_jax()
    if not distillation_head:   # DeiTForImageClassification: the class token's head alone
        params = {k: v for k, v in params.items() if k != 'head_dist'}
        config.distillation_head = False
        ours = np.asarray(VisionTransformer(num_classes=5, **config).apply({'params': params}, IMAGES,
                                                                            train=False))
    convert.export(params, config, str(tmp_path / name), 'hf')
    return str(tmp_path / name), ours


def test_hf_deit_round_trip_and_refusals_without_transformers(tmp_path):
    """Fast tier: both DeiT classifier layouts go to HF and back exactly; the class-token-only one is
    refused by timm (whose distilled DeiT averages two heads); config.json facts that contradict the
    weights (image_size, patch_size, qkv_bias) and unknown model types are refused naming file and field."""
    for teacher in (True, False):
        path, ours = _deit_dir(tmp_path, f'deit_{teacher}', teacher)
        config = json.loads((tmp_path / f'deit_{teacher}' / 'config.json').read_text())
        assert config['architectures'] == [
            'DeiTForImageClassificationWithTeacher' if teacher else 'DeiTForImageClassification']
        found = loader.read(path)
        assert bool(found.model_config.get('distillation_head', True)) == teacher
        assert _rel_err(_ours(path), ours, f'DeiT (teacher={teacher}) -> HF -> vit_jax') <= 1e-6
        # Its weights file alone (the config.json beside it is read): the `deit.` names say Hugging Face.
        assert loader.detect_format(f'{path}/model.safetensors') == 'hf'
        assert _rel_err(_ours(f'{path}/model.safetensors'), ours, 'DeiT weights file') <= 1e-6
    with pytest.raises(CheckpointError, match='class token alone'):
        convert.export(found.params, found.model_config, str(tmp_path / 'deit.safetensors'), 'timm')
    directory = tmp_path / 'deit_True'
    for field, value in (('image_size', 48), ('patch_size', 16), ('qkv_bias', False),
                         ('model_type', 'beit')):
        original = (directory / 'config.json').read_text()
        config_path = _edit_config(directory, **{field: value})
        _refused(str(directory), config_path, f'{field}=')
        (directory / 'config.json').write_text(original)


def test_token_gap_pools_the_class_token_and_the_mean_patch_token():
    """classifier='token_gap' (Dinov2ForImageClassification's head input) is [class token, mean of the
    patch tokens] of the normalised tokens that classifier='token_unpooled' returns."""
    config = dict(patches={'size': (8, 8)}, hidden_size=32,
                  transformer=dict(num_layers=1, num_heads=2, mlp_dim=64, dropout_rate=0.0,
                                   attention_dropout_rate=0.0, layer_scale=1.0))
    pooled = VisionTransformer(num_classes=None, classifier='token_gap', **config)
    params = pooled.init(jax.random.PRNGKey(0), IMAGES, train=False)
    tokens = np.asarray(VisionTransformer(num_classes=None, classifier='token_unpooled', **config).apply(
        params, IMAGES, train=False))
    want = np.concatenate([tokens[:, 0], tokens[:, 1:].mean(axis=1)], axis=-1)
    np.testing.assert_allclose(np.asarray(pooled.apply(params, IMAGES, train=False)), want, rtol=1e-6,
                               atol=1e-6)


def test_hf_image_processor_with_other_normalisation_warns(tmp_path):
    """DeiT and DINOv2 publish ImageNet's mean/std; vit_jax scales pixels to [-1, 1]: reading such a
    directory says so (the weights still load exactly)."""
    path, _ = _deit_dir(tmp_path)
    processor = tmp_path / 'deit' / 'preprocessor_config.json'
    processor.write_text(json.dumps({**json.loads(processor.read_text()), 'image_mean': [0.485, 0.456, 0.406],
                                     'image_std': [0.229, 0.224, 0.225]}))
    with pytest.warns(UserWarning, match='image_mean .* vit_jax scales them to'):
        loader.read(path)
