"""vit_jax.convert: every source format gives the source's logits; exports load in their ecosystems.

The max relative logit errors are printed (run with `-s` to see them):
    max|ours - reference| / max|reference| per format.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from tests.faults import full_disk
from vit_jax import analysis, checkpoint, convert, trees
from vit_jax.checkpoint import CheckpointError, adapt, arch, loader, timm
from vit_jax.checkpoint.facts import Facts
from vit_jax.checkpoint.hf import hf_preprocessor
from vit_jax.models import VisionTransformer, get_config, get_model, num_params

HAS_TORCH = importlib.util.find_spec('torch') is not None


def _torch():
    """torch, for the PyTorch cross-checks only (the other tests run without it)."""
    return pytest.importorskip('torch')


def _transformers():
    _torch()
    return pytest.importorskip('transformers')

TINY = {'patches.size': (8, 8), 'hidden_size': 32, 'transformer.num_layers': 2, 'transformer.mlp_dim': 64}
TOLERANCE = 1e-4  # Relative, on logits.


def _random_params(model, seed=0):
    x = np.zeros((1, 32, 32, 3), np.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))['params']
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        treedef, [rng.normal(0, 0.3, leaf.shape).astype(np.float32) for leaf in leaves])


IMAGES = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


def _ours(config, params, classes=5):
    return np.asarray(VisionTransformer(num_classes=classes, **config).apply({'params': params}, IMAGES,
                                                                              train=False))


def _rel_err(got, want, label):
    err = float(np.abs(got - want).max() / np.abs(want).max())
    print(f'\nmax relative logit error [{label}]: {err:.2e}')
    return err


def _assert_same_tree(a, b):
    fa, fb = trees.flatten(a), trees.flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def exact_model():
    """A tiny model with timm/HF numerics (exact GELU, eps 1e-6), random weights, and its logits."""
    model = get_model('testing', num_classes=5, gelu_approximate=False, **TINY)
    params = _random_params(model)
    return model, params, np.asarray(model.apply({'params': params}, IMAGES, train=False))


@pytest.fixture(scope='module')
def exact():
    return exact_model()


# --- npz ------------------------------------------------------------------------------------

def test_npz_pre_linen_detected_and_config_inferred(exact, tmp_path):
    _, params, _ = exact
    flat = {'opt/target/' + k.replace('MlpBlock_0', 'MlpBlock_3'): v
            for k, v in trees.flatten(params).items()}
    np.savez(tmp_path / 'x.npz', **flat)
    assert loader.detect_format(str(tmp_path / 'x.npz')) == 'npz'
    config, loaded = loader.load(tmp_path / 'x.npz')
    _assert_same_tree(loaded, params)
    assert (config.hidden_size, config.transformer.num_heads, config.transformer.num_layers,
            config.transformer.mlp_dim, tuple(config.patches.size)) == (32, 2, 2, 64, (8, 8))
    assert config.classifier == 'token' and config.representation_size is None and config.model_name is None
    assert (config.layer_norm_eps, config.gelu_approximate) == (1e-6, True)  # The original numerics.


def test_big_vision_detected(exact, tmp_path):
    _, params, _ = exact
    p = jax.tree_util.tree_map(np.asarray, params)
    pos = p['Transformer'].pop('posembed_input')['pos_embedding']
    p['pos_embedding'], p['cls'] = pos[:, 1:], p['cls'] + pos[:, :1]
    np.savez(tmp_path / 'bv.npz', **{'params/' + k: v for k, v in trees.flatten(p).items()})
    assert loader.detect_format(str(tmp_path / 'bv.npz')) == 'big_vision'
    config, loaded = loader.load(tmp_path / 'bv.npz')
    config.gelu_approximate = False
    ref = _ours(config, params)
    assert _rel_err(_ours(config, loaded), ref, 'big_vision npz') <= TOLERANCE


def test_big_vision_map_head(tmp_path):
    """A big_vision ViT with multihead attention pooling (pool_type='map': SigLIP image towers), in
    big_vision's npz layout, loads and matches a NumPy MAP head on the encoder's tokens."""
    model = get_model('testing', num_classes=5, classifier='map', **TINY)
    params = jax.tree_util.tree_map(np.asarray, _random_params(model))
    assert set(params['MAPHead_0']) == {'probe', 'MultiHeadDotProductAttention_0', 'LayerNorm_0',
                                        'MlpBlock_0'}
    p = {**params, 'Transformer': dict(params['Transformer'])}
    p['pos_embedding'] = p['Transformer'].pop('posembed_input')['pos_embedding']   # no class token
    np.savez(tmp_path / 'bv_map.npz', **{'params/' + k: v for k, v in trees.flatten(p).items()})
    config, loaded = loader.load(tmp_path / 'bv_map.npz')
    assert config.classifier == 'map' and 'cls' not in loaded
    logits = _ours(config, loaded)

    # The reference: the encoder's tokens (the model without pooling), then big_vision's MAPHead
    # in NumPy.
    unpooled = VisionTransformer(num_classes=None, **{**config.to_dict(), 'classifier': 'unpooled'})
    encoder = {k: v for k, v in loaded.items() if k not in ('MAPHead_0', 'head')}
    tokens = np.asarray(unpooled.apply({'params': encoder}, IMAGES, train=False))
    m = params['MAPHead_0']
    attn = m['MultiHeadDotProductAttention_0']
    proj = lambda x, n: np.einsum('bld,dhk->blhk', x, attn[n]['kernel']) + attn[n]['bias']  # noqa: E731
    probe = np.broadcast_to(m['probe'], (len(tokens), 1, 32))
    q, k, v = proj(probe, 'query'), proj(tokens, 'key'), proj(tokens, 'value')
    w = np.einsum('bqhd,bkhd->bhqk', q / np.sqrt(q.shape[-1]), k)
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    x = np.einsum('bhqk,bkhd->bqhd', w, v)
    x = np.einsum('bqhd,hdo->bqo', x, attn['out']['kernel']) + attn['out']['bias']
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    y = y * m['LayerNorm_0']['scale'] + m['LayerNorm_0']['bias']
    mlp = m['MlpBlock_0']
    h = y @ mlp['Dense_0']['kernel'] + mlp['Dense_0']['bias']
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))   # Flax's (tanh) GELU
    pooled = (x + h @ mlp['Dense_1']['kernel'] + mlp['Dense_1']['bias'])[:, 0]
    reference = pooled @ params['head']['kernel'] + params['head']['bias']
    assert _rel_err(logits, reference, 'big_vision MAP head') <= TOLERANCE
    # timm's AttentionPoolLatent (attn_pool: latent, q, kv, proj, norm, mlp) is the same head.
    from safetensors.numpy import load_file
    exported = load_file(convert.export(loaded, config, str(tmp_path / 'map.safetensors'), format='timm'))
    assert exported['attn_pool.kv.weight'].shape == (64, 32)
    # Its tanh GELU is timm's act_layer='gelu_tanh', recorded in the model_args of the timm export.
    assert timm.timm_config(loaded, config)['model_args']['act_layer'] == 'gelu_tanh'
    assert _rel_err(_timm_reference(exported, IMAGES, heads=2, tanh=True), reference,
                    'big_vision MAP head -> timm attn_pool') <= TOLERANCE
    _assert_same_tree(loader.load(tmp_path / 'map.safetensors')[1], loaded)
    with pytest.raises(CheckpointError, match='Hugging Face ViT has no attention-pooling head'):
        convert.export(loaded, config, str(tmp_path / 'hf'), format='hf')


def test_big_vision_sincos_position_embedding(tmp_path):
    """big_vision's fixed 2-D sin-cos position embedding (posemb='sincos2d'; no parameters, none for
    the class token): equal to big_vision's formula given as a learned table; a big_vision file
    without a position embedding loads as such, and its input size must be stated."""
    model = get_model('testing', num_classes=5, posemb='sincos2d', **TINY)
    params = jax.tree_util.tree_map(np.asarray, _random_params(model))
    assert 'posembed_input' not in params['Transformer']
    # big_vision's posemb_sincos_2d (big_vision/models/vit.py), transcribed, for the 4x4 grid of 32 px.
    y, x = np.mgrid[:4, :4]
    omega = 1.0 / 10_000 ** (np.arange(32 // 4) / (32 // 4 - 1))
    y, x = np.einsum('m,d->md', y.flatten(), omega), np.einsum('m,d->md', x.flatten(), omega)
    table = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None].astype(np.float32)
    learned = get_model('testing', num_classes=5, **TINY)
    as_table = {**params, 'Transformer': {**params['Transformer'], 'posembed_input': {
        'pos_embedding': np.concatenate([np.zeros((1, 1, 32), np.float32), table], axis=1)}}}
    reference = np.asarray(learned.apply({'params': as_table}, IMAGES, train=False))
    assert _rel_err(np.asarray(model.apply({'params': params}, IMAGES, train=False)), reference,
                    'sin-cos position embedding') <= 1e-5

    np.savez(tmp_path / 'bv.npz', **{'params/' + k: v for k, v in trees.flatten(params).items()})
    # Also without big_vision's `params/` prefix (a bare parameter tree): no position embedding at all.
    np.savez(tmp_path / 'bv_bare.npz', **trees.flatten(params))
    for name in ('bv_bare.npz', 'bv.npz'):
        assert loader.detect_format(str(tmp_path / name)) == 'big_vision'
        with pytest.raises(CheckpointError, match=rf'{name}: a fixed sin-cos position embedding records no '
                                                  r'image size; give it \(--image-size N\)'):
            loader.load_model(str(tmp_path / name))
        loaded = loader.load_model(str(tmp_path / name), Facts(image_size=32))
        assert _rel_err(np.asarray(loaded.model.apply({'params': loaded.params}, IMAGES, train=False)),
                        reference, f'big_vision sin-cos {name}') <= 1e-5
    assert convert.main([str(tmp_path / 'bv_bare.npz'), str(tmp_path / 'b.npz'), '--image-size', '32']) == 0
    loaded = loader.load_model(str(tmp_path / 'bv.npz'), Facts(image_size=32))
    assert loaded.model.posemb == 'sincos2d' and loaded.image_size == 32
    # the paper's position-similarity figure, of the fixed table
    doc = analysis.analyze(loaded, [], str(tmp_path / 'figures'))
    np.testing.assert_allclose(np.asarray(doc['position_embedding_similarity'])[1, 2],
                               analysis.position_embedding_similarity(table, 0)[1, 2], atol=1e-3)
    assert _rel_err(np.asarray(loaded.model.apply({'params': loaded.params}, IMAGES, train=False)),
                    reference, 'big_vision sin-cos npz') <= 1e-5
    # npz export keeps big_vision's layout (an original-layout file without posembed is damaged);
    # timm and Hugging Face have no fixed sin-cos embedding.
    config = loader.read(str(tmp_path / 'bv.npz')).model_config
    assert config.posemb == 'sincos2d'
    convert.export(loaded.params, config, str(tmp_path / 'again.npz'), format='npz')
    assert loader.read(str(tmp_path / 'again.npz')).model_config.to_dict() == config.to_dict()
    for fmt, target in (('timm', 'timm'), ('hf', 'Hugging Face ViT')):
        with pytest.raises(CheckpointError, match=f'{target} has no fixed sin-cos position embedding'):
            convert.export(loaded.params, config, str(tmp_path / f'x.{fmt}'), format=fmt)
    checkpoint.save(as_table, tmp_path / 'learned.npz')
    with pytest.raises(CheckpointError, match='--image-size 64, but the position embedding is for 32-pixel'):
        loader.load_model(str(tmp_path / 'learned.npz'), Facts(image_size=64))


def test_hf_export_of_pre_logits_is_a_vitmodel_with_its_pooler(tmp_path):
    """A model with a pre_logits layer exports to Hugging Face as a ViTModel whose pooler is that layer
    (how HF publishes the ImageNet-21k ViTs), once its head is removed; timm has no such layer."""
    torch, transformers = _torch(), _transformers()
    model = get_model('testing', num_classes=5, representation_size=24, gelu_approximate=False, **TINY)
    params = _random_params(model)
    config = arch.infer_config(params, gelu_approximate=False)
    with pytest.raises(CheckpointError, match='Hugging Face ViT has no model with both a pooler'):
        convert.export(params, config, str(tmp_path / 'hf'), format='hf')
    with pytest.raises(CheckpointError, match='timm has no pre_logits'):
        convert.export(params, config, str(tmp_path / 'x.safetensors'), format='timm')
    headless = {k: v for k, v in params.items() if k != 'head'}
    convert.export(headless, config, str(tmp_path / 'hf'), format='hf')
    hf = transformers.ViTModel.from_pretrained(str(tmp_path / 'hf')).eval()
    with torch.no_grad():
        pooled = hf(pixel_values=torch.from_numpy(IMAGES).permute(0, 3, 1, 2)).pooler_output.numpy()
    ours = _ours(config, headless, classes=0)
    assert ours.shape == pooled.shape == (2, 24)
    assert _rel_err(pooled, ours, 'pre_logits -> HF ViTModel pooler') <= TOLERANCE
    _assert_same_tree(loader.load(tmp_path / 'hf')[1], headless)


def test_hf_siglip_vision_models(tmp_path):
    """transformers' SiglipVisionModel (and the vision tower of a two-tower SiglipModel, read with its text
    tower) loads with its attention-pooling head as the MAP head and gives its pooled output."""
    torch, transformers = _torch(), _transformers()
    torch.manual_seed(0)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=32, patch_size=8)
    pixels = torch.from_numpy(IMAGES).permute(0, 3, 1, 2)
    models = {
        'vision': transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision)),
        'two_tower': transformers.SiglipModel(transformers.SiglipConfig(
            vision_config=vision, text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32, vocab_size=50)))}
    for name, hf in models.items():
        hf.eval()
        with torch.no_grad():
            for p in hf.parameters():
                p.normal_(0, 0.3)
            tower = hf if name == 'vision' else hf.vision_model
            reference = tower(pixel_values=pixels).pooler_output.numpy()
        hf.save_pretrained(tmp_path / name)
        config, params = loader.load(tmp_path / name)
        if name == 'two_tower':   # both towers (tests/test_siglip.py); the vision tower's pooled output here
            config, params = config.image, params['img']
        assert config.classifier == 'map' and config.gelu_approximate and arch.num_classes(params) == 0
        assert _rel_err(_ours(config, params, classes=0), reference, f'HF SigLIP {name}') <= TOLERANCE
    bad = json.loads((tmp_path / 'vision' / 'config.json').read_text())
    (tmp_path / 'vision' / 'config.json').write_text(json.dumps({**bad, 'vision_use_head': False}))
    with pytest.raises(CheckpointError, match='vision_use_head=false'):
        loader.load(tmp_path / 'vision')


def test_config_inference_names_public_models():
    """Shapes of the public checkpoints (abstract, nothing is computed) map to their names."""
    for name, rep, classes in (('ViT-B_16', 768, 21843), ('R50+ViT-B_16', None, 1000)):
        model = get_model(name, num_classes=classes, representation_size=rep)
        params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), np.zeros((1, 224, 224, 3)),
                                                       train=False))['params']
        config = arch.infer_config(params)
        assert config.model_name == name and config.representation_size == rep
        assert arch.num_classes(params) == classes
        arch.check_params(params, config)
        if name == 'ViT-B_16':
            assert arch.image_size(params, config) == 224
            assert tuple(params['Transformer']['posembed_input']['pos_embedding'].shape) == (1, 197, 768)
            del params['pre_logits']
            assert num_params(adapt.replace_head(params, 1000)) == 86_567_656


# --- timm -----------------------------------------------------------------------------------

def _timm_reference(sd, images, heads, eps=1e-6, pool=None, tanh=False):
    """timm's VisionTransformer forward (and VisionTransformerDistilled's, AttentionPoolLatent's),
    written out in PyTorch (timm is not a dependency); `tanh`: act_layer='gelu_tanh'."""
    torch = _torch()
    F = torch.nn.functional
    gelu = lambda h: F.gelu(h, approximate='tanh' if tanh else 'none')  # noqa: E731
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
    patch = t['patch_embed.proj.weight'].shape[-1]
    x = F.conv2d(torch.from_numpy(images).permute(0, 3, 1, 2), t['patch_embed.proj.weight'],
                 t['patch_embed.proj.bias'], stride=patch).flatten(2).transpose(1, 2)
    patches_only = t['pos_embed'].shape[1] == x.shape[1]   # timm no_embed_class (or no prefix tokens)
    if patches_only:
        x = x + t['pos_embed']
    prefix = [t[k].expand(len(x), -1, -1) for k in ('cls_token', 'dist_token', 'reg_token') if k in t]
    x = torch.cat([*prefix, x], dim=1)
    if not patches_only:
        x = x + t['pos_embed']
    b, n, d = x.shape
    layers = len({k.split('.')[1] for k in t if k.startswith('blocks.')})
    for i in range(layers):
        p = lambda name, i=i: t[f'blocks.{i}.{name}']  # noqa: E731
        h = F.layer_norm(x, (d,), p('norm1.weight'), p('norm1.bias'), eps)
        ls = lambda n, i=i: t.get(f'blocks.{i}.{n}.gamma', 1.0)  # noqa: E731  (layer scale, timm init_values)
        qkv_bias = t.get(f'blocks.{i}.attn.qkv.bias')    # None: timm qkv_bias=False
        qkv = F.linear(h, p('attn.qkv.weight'), qkv_bias).reshape(b, n, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, d)
        x = x + ls('ls1') * F.linear(y, p('attn.proj.weight'), p('attn.proj.bias'))
        h = F.layer_norm(x, (d,), p('norm2.weight'), p('norm2.bias'), eps)
        x = x + ls('ls2') * F.linear(gelu(F.linear(h, p('mlp.fc1.weight'), p('mlp.fc1.bias'))),
                                     p('mlp.fc2.weight'), p('mlp.fc2.bias'))
    if 'norm.weight' in t:   # Identity when timm uses fc_norm
        x = F.layer_norm(x, (d,), t['norm.weight'], t['norm.bias'], eps)
    num_prefix = sum(p.shape[1] for p in prefix)
    pool = pool or ('map' if 'attn_pool.latent' in t else 'token' if 'cls_token' in t else 'avg')
    if pool == 'map':   # AttentionPoolLatent: a latent query attends over the tokens, then x + MLP(LN(x))
        a = lambda name: t[f'attn_pool.{name}']  # noqa: E731
        q = F.linear(a('latent').expand(b, -1, -1), a('q.weight'), a('q.bias'))
        q = q.reshape(b, 1, heads, d // heads).transpose(1, 2)
        kv = F.linear(x, a('kv.weight'), a('kv.bias')).reshape(b, n, 2, heads, d // heads)
        k, v = kv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
        y = F.linear((attn @ v).transpose(1, 2).reshape(b, 1, d), a('proj.weight'), a('proj.bias'))
        h = F.layer_norm(y, (d,), a('norm.weight'), a('norm.bias'), eps)
        y = y + F.linear(gelu(F.linear(h, a('mlp.fc1.weight'), a('mlp.fc1.bias'))), a('mlp.fc2.weight'),
                         a('mlp.fc2.bias'))
        pooled = y[:, 0]
    else:
        pooled = x[:, 0] if pool == 'token' else x[:, num_prefix:].mean(1)
    if 'fc_norm.weight' in t:
        pooled = F.layer_norm(pooled, (d,), t['fc_norm.weight'], t['fc_norm.bias'], eps)
    logits = F.linear(pooled, t['head.weight'], t['head.bias'])
    if 'dist_token' in t:   # DeiT: the mean of the class-token head and the distillation-token head
        logits = (logits + F.linear(x[:, 1], t['head_dist.weight'], t['head_dist.bias'])) / 2
    return logits.numpy()


def test_timm_safetensors_matches_timm_forward_and_round_trips(exact, tmp_path):
    from safetensors.numpy import load_file, save_file

    torch = _torch()
    model, params, logits = exact
    config = arch.infer_config(params, gelu_approximate=False)
    dst = convert.export(params, config, str(tmp_path / 'vit.safetensors'), format='timm')
    sd = load_file(dst)
    assert sd['blocks.0.attn.qkv.weight'].shape == (96, 32)  # q, k, v concatenated, [out, in].
    assert sd['patch_embed.proj.weight'].shape == (32, 3, 8, 8)  # OIHW.
    assert _rel_err(_timm_reference(sd, IMAGES, heads=2), logits, 'export -> timm forward') <= TOLERANCE

    loaded_config, loaded = loader.load(dst)
    _assert_same_tree(loaded, params)  # Lossless round trip.
    assert (loaded_config.layer_norm_eps, loaded_config.gelu_approximate) == (1e-6, False)

    # A plain timm file (no vit_jax metadata; heads from the standard head_dim=64 rule fail for
    # width 32, so they are passed), also as a .pth read with weights_only=True.
    save_file(sd, str(tmp_path / 'plain.safetensors'))
    with pytest.raises(CheckpointError, match=r'record neither the number of attention heads '
                       r'\(--num-heads N\) nor the pooling \(--pool token\|avg\|map\); give the timm '
                       r'architecture \(--arch NAME'):
        loader.load(tmp_path / 'plain.safetensors')
    with pytest.raises(CheckpointError, match='record neither the pooling'):
        loader.load(tmp_path / 'plain.safetensors', Facts(num_heads=2))
    # A class token with average pooling (timm class_token=True, global_pool='avg').
    config, loaded = loader.load(tmp_path / 'plain.safetensors', Facts(num_heads=2, pool='avg'))
    assert (config.classifier, config.class_token) == ('gap', True)
    reference = _timm_reference(sd, IMAGES, heads=2, pool='avg')
    assert _rel_err(_ours(config, loaded), reference, 'timm cls + avg') <= TOLERANCE
    torch.save({'model': {k: torch.from_numpy(v) for k, v in sd.items()}}, tmp_path / 'plain.pth')
    for name in ('plain.safetensors', 'plain.pth'):
        assert loader.detect_format(str(tmp_path / name)) == 'timm'
        config, loaded = loader.load(tmp_path / name, Facts(num_heads=2, pool='token'))
        assert (config.layer_norm_eps, config.gelu_approximate) == (1e-6, False)
        reference = _timm_reference(sd, IMAGES, heads=2)
        assert _rel_err(_ours(config, loaded), reference, f'timm {name}') <= TOLERANCE


def test_timm_average_pooling_and_architecture_names(exact, tmp_path):
    """No class token + global_pool='avg' (timm's *_gap_* models) matches timm's forward; the
    architecture comes from --arch or the config.json beside the weights, checked against them."""
    from safetensors.numpy import save_file

    model, params, logits = exact
    config = arch.infer_config(params, gelu_approximate=False)
    dst = convert.export(params, config, str(tmp_path / 'vit.safetensors'), format='timm')
    from safetensors.numpy import load_file
    sd = load_file(dst)
    del sd['cls_token']
    sd['pos_embed'] = np.ascontiguousarray(sd['pos_embed'][:, 1:])
    save_file(sd, str(tmp_path / 'gap.safetensors'))
    config, loaded = loader.load(tmp_path / 'gap.safetensors', Facts(num_heads=2, pool='avg'))
    assert config.classifier == 'gap'
    reference = _timm_reference(sd, IMAGES, heads=2)
    assert _rel_err(_ours(config, loaded), reference, 'timm gap') <= TOLERANCE
    with pytest.raises(CheckpointError, match='token pooling but the weights have no cls_token'):
        loader.load(tmp_path / 'gap.safetensors', Facts(num_heads=2, pool='token'))

    with pytest.raises(CheckpointError, match='the weights have width 32 but timm architecture '
                                              'vit_base_patch16_gap_224 has 768'):
        loader.load(tmp_path / 'gap.safetensors', Facts(arch='vit_base_patch16_gap_224.sam_in1k'))
    with pytest.raises(CheckpointError, match="timm architecture 'vit_base_patch16_clip_224' is not one"):
        loader.load(tmp_path / 'gap.safetensors', Facts(arch='vit_base_patch16_clip_224'))   # pre_norm
    with open(tmp_path / 'config.json', 'w') as f:   # timm hub checkpoints carry this beside the weights
        json.dump({'architecture': 'vit_small_patch16_224.augreg_in21k', 'num_classes': 5}, f)
    with pytest.raises(CheckpointError, match='the weights have width 32 but timm architecture '
                                              'vit_small_patch16_224 has 384'):
        loader.load(tmp_path / 'gap.safetensors')


@pytest.mark.slow
def test_timm_qkv_bias_false_no_embed_class_and_layer_scale(exact, tmp_path):
    """timm's qkv_bias=False (vit_base_patch16_224_miil) and no_embed_class=True (flexivit_*) load
    exactly as zero q/k/v biases and a zero class-token slot; layer scale (DeiT-3, DINOv2) as the
    model's `transformer.layer_scale` (LayerScale_{0,1}/scale)."""
    from safetensors.numpy import load_file, save_file

    _, params, _ = exact
    config = arch.infer_config(params, gelu_approximate=False)
    sd = load_file(convert.export(params, config, str(tmp_path / 'vit.safetensors'), format='timm'))
    rng = np.random.default_rng(0)
    no_slot = {**sd, 'pos_embed': np.ascontiguousarray(sd['pos_embed'][:, 1:])}
    variants = {
        'no_qkv_bias': {k: v for k, v in sd.items() if not k.endswith('attn.qkv.bias')},
        'no_embed_class': no_slot,
        # DeiT-3: layer scale (blocks.i.ls{1,2}.gamma) and no class slot.
        'deit3': {**no_slot, **{f'blocks.{i}.ls{n}.gamma': rng.uniform(0.1, 1.0, 32).astype(np.float32)
                                for i in range(2) for n in (1, 2)}},
    }
    # DINOv2 with registers: class token, 4 register tokens, layer scale, position embeddings for
    # the patches only; and the average-pooled register models (no class token, registers not pooled).
    registers = rng.normal(0, 1, (1, 4, 32)).astype(np.float32)
    variants['dinov2_reg4'] = {**variants['deit3'], 'reg_token': registers}
    variants['reg4_gap'] = {k: v for k, v in variants['dinov2_reg4'].items() if k != 'cls_token'}
    # timm's fc_norm (its default for average pooling): no `norm`, a LayerNorm after the pooling.
    fc = lambda sd: {('fc_' + k if k.startswith('norm.') else k): v for k, v in sd.items()}  # noqa: E731
    variants['reg4_gap_fc_norm'] = fc(variants['reg4_gap'])
    variants['mae_cls_avg_fc_norm'] = fc(sd)
    for name, variant in variants.items():
        save_file(variant, str(tmp_path / f'{name}.safetensors'))
        pool = 'avg' if 'gap' in name or 'avg' in name else 'token'
        config, loaded = loader.load(tmp_path / f'{name}.safetensors', Facts(num_heads=2, pool=pool))
        reference = _timm_reference(variant, IMAGES, heads=2, pool=pool)
        assert _rel_err(_ours(config, loaded), reference, f'timm {name}') <= TOLERANCE
        # Exported back as a plain timm ViT that computes the same.
        back = load_file(convert.export(loaded, config, str(tmp_path / f'{name}_back.safetensors'),
                                        format='timm'))
        assert _rel_err(_timm_reference(back, IMAGES, heads=2, pool=pool), reference,
                        f'{name} re-exported') <= TOLERANCE
        assert loader.load(tmp_path / f'{name}_back.safetensors')[0].to_dict() == config.to_dict()
    # The fc_norm / class-token variants: config fields, and what cannot hold them says so.
    assert (config.fc_norm, config.class_token, config.classifier) == (True, True, 'gap')
    with pytest.raises(CheckpointError, match='an .npz does not record the pooling'):
        convert.export(loaded, config, str(tmp_path / 'mae.npz'), format='npz')
    with pytest.raises(CheckpointError, match='Hugging Face ViT normalises before the pooling'):
        convert.export(loaded, config, str(tmp_path / 'hf'), format='hf')
    with pytest.raises(CheckpointError, match='a class token and an fc_norm, but the weights do not record'):
        arch.infer_config(loaded)
    assert not os.path.exists(tmp_path / 'mae.npz')
    config, loaded = loader.load(tmp_path / 'dinov2_reg4.safetensors', Facts(num_heads=2, pool='token'))
    assert config.transformer.layer_scale is not None and config.num_registers == 4
    assert 'LayerScale_1' in loaded['Transformer']['encoderblock_1']
    assert 'blocks.1.ls2.gamma' in load_file(str(tmp_path / 'dinov2_reg4_back.safetensors'))
    with pytest.raises(CheckpointError, match='Hugging Face ViT has no layer scale'):
        convert.export(loaded, config, str(tmp_path / 'hf'), format='hf')
    # Fine-tuning at another resolution keeps the class and register rows and resizes the grid.
    config, loaded = loader.load(tmp_path / 'dinov2_reg4.safetensors', Facts(num_heads=2, pool='token'))
    checkpoint.save(loaded, str(tmp_path / 'dinov2_reg4.npz'))
    pos = loaded['Transformer']['posembed_input']['pos_embedding']
    grid = int(np.sqrt(pos.shape[1] - 5))
    model = VisionTransformer(num_classes=3, **config.to_dict())
    size = 2 * grid * config.patches.size[0]
    init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3)),
                                             train=False))
    tuned = adapt.load_pretrained(pretrained_path=str(tmp_path / 'dinov2_reg4.npz'),
                                  init_params=init['params'], model_config=config)
    new_pos = tuned['Transformer']['posembed_input']['pos_embedding']
    assert new_pos.shape == (1, 5 + 4 * grid * grid, 32)
    np.testing.assert_array_equal(new_pos[:, :5], pos[:, :5])     # class token + 4 registers kept
    # 8 registers + a class token before a 4x4 grid: 25 position rows are a 5x5 grid too; refused.
    ambiguous = {**sd, 'reg_token': rng.normal(0, 1, (1, 8, 32)).astype(np.float32),
                 'pos_embed': rng.normal(0, 1, (1, 25, 32)).astype(np.float32)}
    save_file(ambiguous, str(tmp_path / 'ambiguous.safetensors'))
    with pytest.raises(CheckpointError, match='pos_embed has 25 rows: a square grid with or without the 9'):
        loader.load(tmp_path / 'ambiguous.safetensors', Facts(num_heads=2, pool='token'))
    assert timm.timm_arch('deit3_base_patch16_224.fb_in22k_ft_in1k')['num_heads'] == 12
    assert timm.timm_arch('vit_base_patch16_224_miil.in21k_ft_in1k')['num_heads'] == 12
    assert timm.timm_arch('flexivit_base.1200ep_in1k')['patch'] == 16


def test_timm_siglip_attention_pooling_and_deit_distillation(exact, tmp_path, monkeypatch):
    """timm's SigLIP image towers (no class token, attention pooling `attn_pool`, some with tanh
    GELU) and DeiT's distilled ViTs (`dist_token`, `head_dist`; the mean of the two heads) load
    exactly and export back bit-exactly; their facts come from the architecture table."""
    from safetensors.numpy import load_file, save_file

    _, params, _ = exact
    sd = load_file(convert.export(params, arch.infer_config(params, gelu_approximate=False),
                                  str(tmp_path / 'vit.safetensors'), format='timm'))
    rng = np.random.default_rng(0)
    r = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)  # noqa: E731
    siglip = {**{k: v for k, v in sd.items() if k != 'cls_token'}, 'pos_embed': sd['pos_embed'][:, 1:].copy()}
    siglip.update({
        'attn_pool.latent': r(1, 1, 32), 'attn_pool.q.weight': r(32, 32), 'attn_pool.q.bias': r(32),
        'attn_pool.kv.weight': r(64, 32), 'attn_pool.kv.bias': r(64), 'attn_pool.proj.weight': r(32, 32),
        'attn_pool.proj.bias': r(32), 'attn_pool.norm.weight': r(32), 'attn_pool.norm.bias': r(32),
        'attn_pool.mlp.fc1.weight': r(64, 32), 'attn_pool.mlp.fc1.bias': r(64),
        'attn_pool.mlp.fc2.weight': r(32, 64), 'attn_pool.mlp.fc2.bias': r(32)})
    deit = {**sd, 'dist_token': r(1, 1, 32), 'head_dist.weight': r(5, 32), 'head_dist.bias': r(5),
            'pos_embed': np.concatenate([sd['pos_embed'][:, :1], r(1, 1, 32), sd['pos_embed'][:, 1:]], 1)}
    # Tiny entries in the table's own format (the real ones are 768+ wide).
    monkeypatch.setitem(timm.TIMM_ARCHS, 'tiny_siglip', (32, 2, 2, 8, 'map', 'gelu_tanh'))
    monkeypatch.setitem(timm.TIMM_ARCHS, 'tiny_distilled', (32, 2, 2, 8, 'token', 'gelu'))
    for name, variant, arch_name, tanh in (('siglip', siglip, 'tiny_siglip', True),
                                          ('deit_distilled', deit, 'tiny_distilled', False)):
        save_file(variant, str(tmp_path / f'{name}.safetensors'))
        config, loaded = loader.load(tmp_path / f'{name}.safetensors', Facts(arch=arch_name))
        assert config.gelu_approximate == tanh
        reference = _timm_reference(variant, IMAGES, heads=2, tanh=tanh)
        assert _rel_err(_ours(config, loaded), reference, f'timm {name}') <= TOLERANCE
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')   # tanh GELU: "logits in timm will differ" (timm's default)
            back = load_file(convert.export(loaded, config, str(tmp_path / f'{name}_back.safetensors'),
                                            format='timm'))
        assert back.keys() == variant.keys()
        for key, value in variant.items():
            np.testing.assert_array_equal(back[key], value, err_msg=key)
    assert config.distillation_token and config.classifier == 'token'
    # Hugging Face's layout of a distilled DeiT (tests/test_hf_deit_dinov2.py: checked against transformers).
    convert.export(loaded, config, str(tmp_path / 'hf'), format='hf')
    assert json.loads((tmp_path / 'hf' / 'config.json').read_text())['architectures'] == [
        'DeiTForImageClassificationWithTeacher']
    hf_config, hf_params = loader.load(tmp_path / 'hf')
    assert _rel_err(_ours(hf_config, hf_params), reference, 'timm deit_distilled -> HF DeiT') <= TOLERANCE
    # Fine-tuning a distilled DeiT at twice the resolution: both heads new, both prefix rows kept.
    checkpoint.save(loaded, str(tmp_path / 'deit.npz'))
    model = VisionTransformer(num_classes=3, **config.to_dict())
    init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3)), train=False))
    tuned = adapt.load_pretrained(pretrained_path=str(tmp_path / 'deit.npz'), init_params=init['params'],
                                  model_config=config)
    assert tuned['head_dist']['kernel'].shape == (32, 3) and not tuned['head_dist']['kernel'].any()
    pos = tuned['Transformer']['posembed_input']['pos_embedding']
    assert pos.shape == (1, 2 + 64, 32)
    np.testing.assert_array_equal(pos[:, :2], loaded['Transformer']['posembed_input']['pos_embedding'][:, :2])
    # Without a name: the pooling is in the weights (attn_pool), the heads must be given; the GELU is
    # then timm's default (exact).
    config, _ = loader.load(tmp_path / 'siglip.safetensors', Facts(num_heads=2))
    assert config.classifier == 'map' and not config.gelu_approximate
    with pytest.raises(CheckpointError, match='--pool token but the weights have an attention-pooling head'):
        loader.load(tmp_path / 'siglip.safetensors', Facts(num_heads=2, pool='token'))
    save_file(sd, str(tmp_path / 'plain.safetensors'))   # without the record of our export's metadata
    with pytest.raises(CheckpointError, match='the weights have no distillation token but timm architecture '
                                              'tiny_distilled has one'):
        loader.load(tmp_path / 'plain.safetensors', Facts(arch='tiny_distilled'))
    with pytest.raises(CheckpointError, match=r'vit.safetensors: --arch tiny_distilled but .*vit.safetensors '
                                              r'\(metadata\) records architecture vit_base_patch16_224'):
        loader.load(tmp_path / 'vit.safetensors', Facts(arch='tiny_distilled'))
    save_file({k: v for k, v in siglip.items() if not k.startswith('attn_pool.')},
              str(tmp_path / 'gap.safetensors'))
    with pytest.raises(CheckpointError, match='the weights have pool avg but timm architecture tiny_siglip '
                                              'has map'):
        loader.load(tmp_path / 'gap.safetensors', Facts(arch='tiny_siglip'))
    assert timm.timm_arch('vit_so400m_patch14_siglip_384') == dict(
        name='vit_so400m_patch14_siglip_384', width=1152, depth=27, num_heads=16, patch=14, pool='map',
        act='gelu')
    assert timm.timm_arch('vit_so400m_patch16_siglip_256.webli_i18n')['act'] == 'gelu_tanh'
    assert timm.timm_arch('deit_base_distilled_patch16_384')['num_heads'] == 12


def test_timm_architecture_table():
    assert timm.timm_arch('vit_base_patch16_224.augreg2_in21k_ft_in1k') == dict(
        name='vit_base_patch16_224', width=768, depth=12, num_heads=12, patch=16, pool='token', act='gelu')
    # Not the head_dim=64 rule: timm's own arguments (16 heads at width 768).
    assert timm.timm_arch('vit_base_patch16_gap_224')['num_heads'] == 16
    assert timm.timm_arch('vit_huge_patch14_224')['num_heads'] == 16
    listing = convert.list_archs()
    assert 'vit_base_patch16_gap_224' in listing and 'vit_large_patch16_384' in listing
    assert len(listing.splitlines()) == len(timm.TIMM_ARCHS) + 1


# --- timm's config.json: model_args are the source of truth ------------------------------------------

def _timm_hub(directory, sd, architecture, model_args=None, **root):
    """A timm hub snapshot as `timm.models.save_for_hf` writes it: model.safetensors and config.json
    (architecture, num_classes, num_features, global_pool, model_args, pretrained_cfg)."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    save_file(sd, os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
    config = {'architecture': architecture, 'num_classes': int(sd['head.weight'].shape[0]),
              'num_features': int(sd['patch_embed.proj.weight'].shape[0]), **root}
    if model_args is not None:
        config['model_args'] = model_args
    config['pretrained_cfg'] = {'tag': 'augreg2_in21k_ft_in1k', 'custom_load': False,
                                'input_size': [3, 32, 32], 'fixed_input_size': True,
                                'interpolation': 'bicubic', 'crop_pct': 0.9, 'crop_mode': 'center',
                                'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5],
                                'num_classes': 1000, 'first_conv': 'patch_embed.proj', 'classifier': 'head'}
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(config, f)
    return directory


# The registered model_args of the timm architectures the tests name (timm's vision_transformer.py).
_TIMM_REGISTERED = {'vit_base_patch16_224': dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)}


def _timm_layout(architecture, model_args):
    """{name: shape} of the state dict of timm.create_model(architecture, **model_args): timm's
    VisionTransformer.__init__ transcribed (token / avg pooling; its defaults, then the registered
    arguments, then model_args)."""
    a = dict(img_size=224, patch_size=16, num_classes=1000, global_pool='token', embed_dim=768, depth=12,
             num_heads=12, mlp_ratio=4.0, qkv_bias=True, init_values=None, class_token=True,
             no_embed_class=False, reg_tokens=0, fc_norm=None)
    a.update(_TIMM_REGISTERED[architecture.split('.')[0]], **model_args)
    d, p, h = a['embed_dim'], a['patch_size'], int(a['embed_dim'] * a['mlp_ratio'])
    patches = (a['img_size'] // p) ** 2
    prefix = int(a['class_token']) + a['reg_tokens']
    s = {'patch_embed.proj.weight': (d, 3, p, p), 'patch_embed.proj.bias': (d,),
         'pos_embed': (1, patches if a['no_embed_class'] else patches + prefix, d)}
    if a['class_token']:
        s['cls_token'] = (1, 1, d)
    if a['reg_tokens']:
        s['reg_token'] = (1, a['reg_tokens'], d)
    for i in range(a['depth']):
        b = f'blocks.{i}.'
        s.update({b + 'norm1.weight': (d,), b + 'norm1.bias': (d,), b + 'attn.qkv.weight': (3 * d, d),
                  b + 'attn.proj.weight': (d, d), b + 'attn.proj.bias': (d,), b + 'norm2.weight': (d,),
                  b + 'norm2.bias': (d,), b + 'mlp.fc1.weight': (h, d), b + 'mlp.fc1.bias': (h,),
                  b + 'mlp.fc2.weight': (d, h), b + 'mlp.fc2.bias': (d,)})
        if a['qkv_bias']:
            s[b + 'attn.qkv.bias'] = (3 * d,)
        if a['init_values']:
            s[b + 'ls1.gamma'] = s[b + 'ls2.gamma'] = (d,)
    use_fc_norm = a['global_pool'] in ('avg', 'avgmax', 'max') if a['fc_norm'] is None else a['fc_norm']
    norm = 'fc_norm' if use_fc_norm else 'norm'
    s[f'{norm}.weight'] = s[f'{norm}.bias'] = (d,)
    if a['num_classes']:
        s['head.weight'], s['head.bias'] = (a['num_classes'], d), (a['num_classes'],)
    return s


def _timm_sd(exact, tmp_path):
    from safetensors.numpy import load_file

    _, params, _ = exact
    return load_file(convert.export(params, arch.infer_config(params, gelu_approximate=False),
                                    str(tmp_path / 'vit.safetensors'), format='timm'))


TINY_TIMM_ARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def test_timm_config_json_model_args_override_the_architecture(exact, tmp_path):
    """A timm model saved by save_for_hf with model_args other than its architecture's defaults (here
    global_pool='avg', 2 blocks of width 32, 2 or 4 heads, not vit_base's 12 x 768 / 12) loads as
    those model_args say, by its directory, its config.json or its weights."""
    sd = _timm_sd(exact, tmp_path)
    avg = _timm_hub(tmp_path / 'avg', sd, 'vit_base_patch16_224.augreg2_in21k_ft_in1k',
                    {**TINY_TIMM_ARGS, 'global_pool': 'avg', 'fc_norm': False}, global_pool='avg')
    reference = _timm_reference(sd, IMAGES, heads=2, pool='avg')
    assert _rel_err(_timm_reference(sd, IMAGES, heads=2), reference, 'token vs avg pooling') > 0.1
    for source in (avg, avg / 'config.json', avg / 'model.safetensors'):
        assert loader.detect_format(str(source)) == 'timm'
        config, loaded = loader.load(source)
        assert (config.classifier, config.class_token, config.transformer.num_heads) == ('gap', True, 2)
        assert _rel_err(_ours(config, loaded), reference, 'timm model_args global_pool=avg') <= TOLERANCE
    heads4 = _timm_hub(tmp_path / 'heads4', sd, 'vit_base_patch16_224', {**TINY_TIMM_ARGS, 'num_heads': 4},
                       global_pool='token')
    config, loaded = loader.load(heads4)
    assert config.transformer.num_heads == 4 and config.classifier == 'token'
    reference = _timm_reference(sd, IMAGES, heads=4)
    assert _rel_err(_timm_reference(sd, IMAGES, heads=2), reference, '2 vs 4 heads') > 0.01
    assert _rel_err(_ours(config, loaded), reference, 'timm model_args num_heads=4') <= TOLERANCE
    # A caller's statement that contradicts the file is an error, not an override.
    contradictions = {
        'pool': (dict(pool='token'),
                 r'avg.model.safetensors: --pool token but .*avg.config\.json global_pool has avg'),
        'heads': (dict(num_heads=4), r'--num-heads 4 but .*avg.config\.json model_args has 2 heads'),
        'arch': (dict(arch='vit_small_patch16_224'),
                 r'--arch vit_small_patch16_224 but .*avg.config\.json records architecture '
                 r'vit_base_patch16_224\.augreg2_in21k_ft_in1k'),
    }
    for facts, message in contradictions.values():
        with pytest.raises(CheckpointError, match=message):
            loader.load(avg, Facts(**facts))
    stated = Facts(pool='avg', num_heads=2, arch='vit_base_patch16_224')
    assert loader.load(avg, stated)[0].classifier == 'gap'
    # The labels it records are the class names; a normalisation other than vit_jax's is said.
    names = ['cat', 'dog', 'eel', 'fox', 'gnu']
    record = json.loads((avg / 'config.json').read_text())
    record['label_names'] = names
    record['pretrained_cfg'].update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    (avg / 'config.json').write_text(json.dumps(record))
    with pytest.warns(UserWarning, match=r'config\.json: pretrained_cfg normalises pixels with mean \[0\.4'):
        assert loader.read(avg).class_names == names
    (avg / 'config.json').write_text(json.dumps({**record, 'label_names': names[:3]}))
    with pytest.raises(CheckpointError, match=r"config\.json: label_names must be 5 strings \(the head's"):
        loader.read(avg)


@pytest.mark.parametrize('config, message', [
    (dict(architecture=7), r'config\.json: architecture must be a timm model name \(a string\), got 7'),
    (dict(architecture='vit_base_patch16_clip_224'),
     r"config\.json: timm architecture 'vit_base_patch16_clip_224' is not one vit_jax loads exactly"),
    (dict(model_args=[1]), r'config\.json: model_args must be a JSON object, got \[1\]'),
    (dict(model_args={'num_heads': 3}), r'config\.json: num_heads=3 does not divide embed_dim=32'),
    (dict(model_args={'num_heads': '2'}), r"config\.json: model_args num_heads='2' is not an integer >= 1"),
    (dict(model_args={'mlp_layer': 'SwiGLUPacked'}),
     r"config\.json: model_args mlp_layer='SwiGLUPacked': SwiGLU MLP is not supported"),
    (dict(model_args={'rope_type': 'axial'}), r'rotary position embedding is not supported'),
    (dict(model_args={'pre_norm': True}), r"model_args pre_norm=True: a LayerNorm before the blocks"),
    (dict(model_args={'dynamic_img_pad': True}), r'model_args dynamic_img_pad=True: padding'),
    (dict(model_args={'act_layer': 'quick_gelu'}), r"act_layer='quick_gelu': an activation other than gelu"),
    (dict(model_args={'act_layer': ['gelu']}), r"act_layer=\['gelu'\]: an activation other than gelu"),
    (dict(model_args={'global_pool': 'avgmax'}), r"global_pool='avgmax': a pooling other than token"),
    (dict(model_args={'frobnicate': 1}), r'model_args frobnicate=1 is not a timm VisionTransformer argument'),
    (dict(model_args={'qkv_bias': False}),
     r'the weights have qkv_bias True but .*config\.json model_args has False'),
    (dict(model_args={'depth': 3}), r'the weights have depth 2 but .*config\.json model_args has 3'),
    (dict(model_args={'mlp_ratio': 4.0}),
     r'the weights have mlp_dim 64 but .*config\.json model_args has 128'),
    (dict(model_args={'img_size': 64}), r'position embedding is for 32-pixel images but .*config\.json '
                                        r'model_args has img_size 64'),
    (dict(model_args={'global_pool': 'token'}, global_pool='avg'),
     r"config\.json: global_pool 'avg' but its model_args record global_pool='token'"),
    (dict(num_classes=10), r'the weights have num_classes 5 but .*config\.json num_classes has 10'),
])
def test_timm_config_json_refusals_name_the_file_and_field(exact, tmp_path, capsys, config, message):
    """What a config.json states that vit_jax cannot express, or that contradicts the weights, is one
    line naming the file and the field; the CLI exits 2 with it."""
    sd = _timm_sd(exact, tmp_path)
    root = {k: v for k, v in config.items() if k != 'model_args'}
    root.setdefault('architecture', 'vit_base_patch16_224')
    hub = _timm_hub(tmp_path / 'hub', sd, model_args={**TINY_TIMM_ARGS, **config.get('model_args', {})}
                    if isinstance(config.get('model_args', {}), dict) else config['model_args'], **root)
    with pytest.raises(CheckpointError, match=message) as e:
        loader.load(hub)
    assert '\n' not in str(e.value)
    with pytest.raises(SystemExit) as exit_info:
        convert.run([str(hub), str(tmp_path / 'out.npz')])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count('\n') == 1
    assert not os.path.exists(tmp_path / 'out.npz')


def test_timm_export_strict_loads_into_the_architecture_it_names(exact, tmp_path, capsys):
    """`--to timm DIR` writes timm's hub layout: the state dict has exactly the keys and shapes of
    timm.create_model(architecture, **model_args) for the architecture and model_args of its config.json
    (no qkv bias for qkv_bias=False, no class slot for no_embed_class=True), which compute the source's
    logits, and vit_jax reads it back to the same tree."""
    from safetensors.numpy import load_file, save_file

    sd = _timm_sd(exact, tmp_path)
    rng = np.random.default_rng(0)
    no_slot = {**sd, 'pos_embed': np.ascontiguousarray(sd['pos_embed'][:, 1:])}
    scales = {f'blocks.{i}.ls{n}.gamma': rng.uniform(0.1, 1.0, 32).astype(np.float32) for i in range(2)
              for n in (1, 2)}
    registers = {'reg_token': rng.normal(0, 1, (1, 4, 32)).astype(np.float32)}
    reg_gap = {k: v for k, v in {**no_slot, **scales, **registers}.items() if k != 'cls_token'}
    variants = {   # name: (weights, pooling), as in test_timm_qkv_bias_false_no_embed_class_and_layer_scale
        'plain': (sd, 'token'),
        'no_qkv_bias': ({k: v for k, v in sd.items() if not k.endswith('attn.qkv.bias')}, 'token'),
        'no_embed_class': (no_slot, 'token'),
        'deit3': ({**no_slot, **scales}, 'token'),
        'dinov2_reg4': ({**no_slot, **scales, **registers}, 'token'),
        'reg4_gap_fc_norm': ({('fc_' + k if k.startswith('norm.') else k): v for k, v in reg_gap.items()},
                             'avg'),
    }
    for name, (variant, pool) in variants.items():
        save_file(variant, str(tmp_path / f'{name}.safetensors'))
        config, loaded = loader.load(tmp_path / f'{name}.safetensors', Facts(num_heads=2, pool=pool))
        out = convert.export(loaded, config, str(tmp_path / f'{name}_timm'), format='timm')
        record = json.loads((tmp_path / f'{name}_timm' / 'config.json').read_text())
        exported = load_file(os.path.join(out, 'model.safetensors'))
        layout = _timm_layout(record['architecture'], record['model_args'])
        assert {k: v.shape for k, v in exported.items()} == layout, name
        assert record['global_pool'] == record['model_args']['global_pool'] == pool
        reference = _timm_reference(variant, IMAGES, heads=2, pool=pool)
        assert _rel_err(_timm_reference(exported, IMAGES, heads=record['model_args']['num_heads'], pool=pool),
                        reference, f'{name} -> timm hub directory') <= TOLERANCE
        assert exported.keys() == variant.keys(), name   # the same layout the timm file had
        _assert_same_tree(loader.load(out)[1], loaded)
    # The CLI: --to timm with a directory writes the same, and says how timm builds the model.
    assert convert.main([str(tmp_path / 'deit3.safetensors'), str(tmp_path / 'cli'), '--to', 'timm',
                         '--num-heads', '2', '--pool', 'token']) == 0
    out = capsys.readouterr().out
    assert "timm.create_model('vit_base_patch16_224', **model_args) loads it strictly" in out
    assert sorted(os.listdir(tmp_path / 'cli')) == ['config.json', 'model.safetensors']
    # A file exported before the metadata recorded model_args (only heads and pooling) still loads.
    save_file(exported, str(tmp_path / 'old.safetensors'),
              metadata={'format': 'pt', 'vit_jax.num_heads': '2', 'vit_jax.classifier': 'gap'})
    old_config, _ = loader.load(tmp_path / 'old.safetensors')
    assert (old_config.transformer.num_heads, old_config.classifier) == (2, 'gap')
    # The class names travel as timm's label_names.
    out = convert.export(loaded, config, str(tmp_path / 'named'), format='timm', class_names=list('abcde'))
    assert loader.read(out).class_names == list('abcde')
    assert (record['model_args']['no_embed_class'], record['model_args']['qkv_bias'],
            record['model_args']['reg_tokens'], record['model_args']['fc_norm']) == (True, True, 4, True)


def test_timm_features_without_an_architecture_are_refused_by_name(exact, tmp_path):
    """A plain timm state dict (no config.json) with rotary embeddings or a SwiGLU MLP is refused naming
    the feature, not as unknown keys or a shape mismatch."""
    from safetensors.numpy import save_file

    sd = _timm_sd(exact, tmp_path)
    rng = np.random.default_rng(0)
    r = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)  # noqa: E731
    swiglu = {k: v for k, v in sd.items() if '.mlp.fc1.' not in k}
    for i in range(2):
        swiglu.update({f'blocks.{i}.mlp.fc1_g.weight': r(64, 32), f'blocks.{i}.mlp.fc1_g.bias': r(64),
                       f'blocks.{i}.mlp.fc1_x.weight': r(64, 32), f'blocks.{i}.mlp.fc1_x.bias': r(64)})
    packed = {**sd, **{f'blocks.{i}.mlp.fc1.{p}': r(128, 32) if p == 'weight' else r(128)
                       for i in range(2) for p in ('weight', 'bias')}}
    cases = {
        'rope': ({**sd, 'rope.freqs': r(8)}, 'rotary position embedding is not supported (rope.freqs)'),
        'swiglu': (swiglu, 'SwiGLU MLP is not supported (blocks.0.mlp.fc1_g.bias'),
        'swiglu_packed': (packed, 'SwiGLU MLP is not supported (block 0: fc1 has 128 outputs, twice the 64'),
        # What timm's Eva (EVA-02, the rope ViTs) saves: its rotary embedding is in unsaved buffers.
        'eva': ({**{k: v for k, v in sd.items() if not k.endswith('attn.qkv.bias')},
                 **{f'blocks.{i}.attn.{b}_bias': r(32) for i in range(2) for b in 'qv'}},
                "an EVA block (timm's Eva: separate q/v biases, gamma_1/2; with rotary position embedding) "
                'is not supported (blocks.0.attn.q_bias'),
        'clip_pre_norm': ({**sd, 'norm_pre.weight': r(32), 'norm_pre.bias': r(32)},
                          "a LayerNorm before the blocks (timm's pre_norm, CLIP's) is not supported"),
        'qk_norm': ({**sd, 'blocks.0.attn.q_norm.weight': r(16), 'blocks.0.attn.k_norm.weight': r(16)},
                    'query/key normalisation (qk_norm) is not supported'),
    }
    for name, (variant, message) in cases.items():
        save_file(variant, str(tmp_path / f'{name}.safetensors'))
        with pytest.raises(CheckpointError, match=re.escape(message)):
            loader.load(tmp_path / f'{name}.safetensors', Facts(num_heads=2, pool='token'))


# --- Hugging Face -----------------------------------------------------------------------------

def _hf_model(hidden_act='gelu'):
    torch, transformers = _torch(), _transformers()
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, image_size=32, patch_size=8, num_labels=5,
                                 hidden_act=hidden_act)
    model = transformers.ViTForImageClassification(cfg).eval()
    with torch.no_grad():  # Non-trivial weights everywhere (HF inits LayerNorms to 1/0).
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _hf_logits(model):
    torch = _torch()
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(IMAGES).permute(0, 3, 1, 2)).logits.numpy()


def test_hf_directory_matches_transformers(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / 'hf')
    reference = _hf_logits(hf)
    assert loader.detect_format(str(tmp_path / 'hf')) == 'hf'
    config, params = loader.load(tmp_path / 'hf')
    assert (config.layer_norm_eps, config.gelu_approximate) == (1e-12, False)  # Carried from config.json.
    assert _rel_err(_ours(config, params), reference, 'HF directory -> vit_jax') <= TOLERANCE

    # transformers-5 in-memory key names (vit.layers.i.attention.q_proj ...) are read too.
    from safetensors.torch import save_file

    keys = list(hf.state_dict())
    assert any('.q_proj.' in k for k in keys), keys[:8]
    os.makedirs(tmp_path / 'v5')
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()},
              str(tmp_path / 'v5' / 'model.safetensors'))
    hf.config.to_json_file(str(tmp_path / 'v5' / 'config.json'))
    config5, params5 = loader.load(tmp_path / 'v5' / 'model.safetensors')
    _assert_same_tree(params5, params)


@pytest.mark.parametrize('field, value, message', [
    ('num_attention_heads', 5, 'num_attention_heads=5 does not divide the hidden size 32'),
    ('num_attention_heads', 2.5, 'num_attention_heads=2.5 is not an integer >= 1'),
    ('num_attention_heads', '2', "num_attention_heads='2' is not an integer >= 1"),
    ('num_attention_heads', 0, 'num_attention_heads=0 is not an integer >= 1'),
    ('layer_norm_eps', 'x', "layer_norm_eps='x' is not a number > 0"),
    ('hidden_act', ['gelu'], "hidden_act=['gelu'] is not a string"),
    ('id2label', 3, 'id2label=3 is not a JSON object'),
])
def test_hf_config_json_fields_are_checked(exact, tmp_path, capsys, field, value, message):
    """A Hugging Face config.json field of the wrong type or value is one line naming the file, the field
    and its value (not a TypeError / ValueError traceback, nor a float of heads silently truncated)."""
    _, params, _ = exact
    hf = convert.export(params, arch.infer_config(params, gelu_approximate=False), str(tmp_path / 'hf'),
                        format='hf')
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    (tmp_path / 'hf' / 'config.json').write_text(json.dumps({**config, field: value}))
    with pytest.raises(CheckpointError, match=re.escape(f'hf/config.json: {message}')):
        loader.read(hf)
    with pytest.raises(SystemExit) as exit_info:
        convert.run([hf, str(tmp_path / 'out.npz')])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count('\n') == 1


def test_hf_export_loads_with_from_pretrained(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / 'src')
    transformers = _transformers()
    config, params = loader.load(tmp_path / 'src')
    convert.export(params, config, str(tmp_path / 'out'), format='hf')
    back = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / 'out')).eval()
    assert back.config.layer_norm_eps == 1e-12 and back.config.hidden_act == 'gelu'
    assert _rel_err(_hf_logits(back), _hf_logits(hf), 'vit_jax -> HF export (from_pretrained)') <= TOLERANCE
    _, again = loader.load(tmp_path / 'out')
    _assert_same_tree(again, params)  # Lossless round trip.


def test_original_numerics_survive_hf_export(tmp_path):
    """A model with the original tanh GELU exports as gelu_pytorch_tanh, so HF gives its logits."""
    model = get_model('testing', num_classes=5, **TINY)
    params = _random_params(model, seed=3)
    config = arch.infer_config(params)
    convert.export(params, config, str(tmp_path / 'out'), format='hf')
    transformers = _transformers()
    back = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / 'out')).eval()
    assert back.config.hidden_act == 'gelu_pytorch_tanh'
    ours = np.asarray(model.apply({'params': params}, IMAGES, train=False))
    assert _rel_err(_hf_logits(back), ours, 'original numerics -> HF export') <= TOLERANCE


@pytest.mark.slow
def test_hf_export_runs_in_the_transformers_pipeline_with_its_labels(tmp_path):
    """`transformers.pipeline('image-classification', model=export)` as is: our class names, our
    preprocessing ((x - 127.5) / 127.5 at the model's size), our probabilities; and vit-predict reads
    the names back."""
    from PIL import Image

    from vit_jax import predict
    transformers = _transformers()
    model = get_model('testing', num_classes=5, **TINY)
    params = _random_params(model, seed=4)
    names = ['cat', 'dog', 'bird', 'fish', 'frog']
    convert.export(params, arch.infer_config(params), str(tmp_path / 'hf'), format='hf', class_names=names)
    pixels = np.random.default_rng(5).integers(0, 256, (32, 32, 3), np.uint8)   # the model's size: no resize
    Image.fromarray(pixels).save(tmp_path / 'x.png')
    pipe = transformers.pipeline('image-classification', model=str(tmp_path / 'hf'))
    theirs = pipe(Image.open(tmp_path / 'x.png').convert('RGB'), top_k=5)
    ours = predict.predict_files(loader.load_model(str(tmp_path / 'hf')), [str(tmp_path / 'x.png')], k=5)
    ours = ours['results'][0]['predictions']
    assert [t['label'] for t in theirs] == [o['label'] for o in ours]
    assert {o['label'] for o in ours} == set(names)
    np.testing.assert_allclose([t['score'] for t in theirs], [o['probability'] for o in ours], atol=1e-5)
    # A vit-train workdir that evaluated with a center crop exports that crop.
    crop = hf_preprocessor(32, {'crop': 32, 'eval_crop': 'center', 'resize': 36})
    assert (crop['image_processor_type'], crop['size'], crop['crop_size']) == (
        'DeiTImageProcessor', {'height': 36, 'width': 36}, {'height': 32, 'width': 32})
    # ... and reading such an export back applies it (what the file records about itself).
    convert.export(params, arch.infer_config(params), str(tmp_path / 'crop'), format='hf',
                   eval_pp={'crop': 32, 'eval_crop': 'center', 'resize': 36})
    assert loader.load_model(str(tmp_path / 'crop')).crop_fraction == 32 / 36
    with pytest.raises(CheckpointError, match='3 class names for a 5-class head'):
        convert.export(params, arch.infer_config(params), str(tmp_path / 'bad'), format='hf',
                       class_names=names[:3])


# --- Errors: one line, nothing written --------------------------------------------------------

class _Evil:
    """Unpickling this runs code (creates a directory) — a loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_error_cases(exact, tmp_path, capsys):
    _, params, _ = exact
    marker = str(tmp_path / 'pwned')
    if HAS_TORCH:
        torch = _torch()
        torch.save({'model': {'cls_token': torch.zeros(1, 1, 4)}, 'x': _Evil(marker)}, tmp_path / 'evil.pth')
    np.save(tmp_path / 'evil.npy', np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    (tmp_path / 'notes.txt').write_text('hello')
    (tmp_path / 'broken.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    bad = trees.flatten(params)
    bad['Transformer/encoderblock_1/MlpBlock_0/Dense_1/kernel'] = np.zeros((64, 31), np.float32)
    np.savez(tmp_path / 'shapes.npz', **bad)

    cases = {
        'evil.pth': 'pickled objects other than tensors',
        'evil.npy': 'unknown checkpoint format',
        'notes.txt': 'unknown checkpoint format',
        'broken.safetensors': 'corrupt or truncated safetensors',
        'shapes.npz': 'wrong shape Transformer/encoderblock_1/MlpBlock_0/Dense_1/kernel (64, 31)',
        'missing.npz': 'no such file',
    }
    if not HAS_TORCH:
        del cases['evil.pth']
    for name, expect in cases.items():
        with pytest.raises((CheckpointError, FileNotFoundError)) as e:
            loader.load(tmp_path / name)
        assert expect in str(e.value) and '\n' not in str(e.value), (name, str(e.value))
    assert not os.path.exists(marker)

    # The CLI: exit 2 (bad input), one line on stderr, no output file.
    before = sorted(os.listdir(tmp_path))
    for name in cases:
        with pytest.raises(SystemExit) as exit_info:
            convert.run([str(tmp_path / name), str(tmp_path / 'out.npz')])
        assert exit_info.value.code == 2, name
        err = capsys.readouterr().err
        assert err.startswith('vit-convert: error:') and err.count('\n') == 1, err
    assert sorted(os.listdir(tmp_path)) == before and not os.path.exists(marker)
    # A ValueError from the arguments is a one-line error too (no traceback).
    with pytest.raises(SystemExit) as exit_info:
        convert.run([str(tmp_path / 'shapes.npz'), str(tmp_path / 'out.npz'), '--num-classes', '-1'])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count('\n') == 1


def test_export_refuses_what_the_target_cannot_hold(exact, tmp_path):
    _, params, _ = exact
    config = arch.infer_config(params)
    with_pre_logits = dict(params, pre_logits={'kernel': np.zeros((32, 16)), 'bias': np.zeros(16)})
    with pytest.raises(CheckpointError, match='pre_logits'):
        convert.export(with_pre_logits, config, str(tmp_path / 'x.safetensors'), format='timm')
    with pytest.raises(CheckpointError, match='needs a head'):
        convert.export(adapt.replace_head(params, 0), config, str(tmp_path / 'hf'), format='hf')
    with pytest.raises(CheckpointError, match='unknown export format'):
        convert.export(params, config, str(tmp_path / 'x.onnx'), format='onnx')
    assert os.listdir(tmp_path) == []


# --- CLI ------------------------------------------------------------------------------------

def test_cli_converts_as_a_new_user_would(exact, tmp_path, capsys):
    _, params, _ = exact
    checkpoint.save(params, tmp_path / 'model.npz')
    assert convert.main([str(tmp_path / 'model.npz'), str(tmp_path / 'model.safetensors')]) == 0
    out = capsys.readouterr().out
    assert 'detected: original/AugReg .npz' in out and f'parameters: {num_params(params):,}' in out
    assert 'wrote: timm state dict' in out

    assert convert.main([str(tmp_path / 'model.safetensors'), str(tmp_path / 'hf'), '--num-classes', '3'
                         ]) == 0
    out = capsys.readouterr().out
    assert 'detected: timm state dict' in out and '3 classes' in out
    with open(tmp_path / 'hf' / 'config.json') as f:
        assert len(json.load(f)['id2label']) == 3
    config, loaded = loader.load(tmp_path / 'hf')
    assert loaded['head']['kernel'].shape == (32, 3) and not loaded['head']['kernel'].any()

    help_text = subprocess.run([sys.executable, '-m', 'vit_jax.convert', '--help'], capture_output=True,
                               text=True, check=True).stdout
    assert 'usage: vit-convert' in help_text and '--num-classes' in help_text


def test_named_model_summary(tmp_path, capsys):
    """A file whose shapes match a known config is reported by name."""
    config = get_config('ViT-Ti_16')
    model = get_model('ViT-Ti_16', num_classes=10, **{'transformer.num_layers': 12})
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), train=False))
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), params['params'])
    checkpoint.save(params, tmp_path / 'ti.npz')
    assert convert.main([str(tmp_path / 'ti.npz'), str(tmp_path / 'ti2.npz')]) == 0
    out = capsys.readouterr().out
    assert 'model: ViT-Ti_16' in out and config.model_name == 'ViT-Ti_16'


def test_load_pretrained_from_a_hugging_face_directory(tmp_path):
    """Fine-tuning can start from a timm / HF checkpoint: converted, new head, resized grid."""
    hf = _hf_model()
    hf.save_pretrained(tmp_path / 'hf')
    config, source = loader.load(tmp_path / 'hf')
    model = VisionTransformer(num_classes=3, **config)
    init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 48, 48, 3)), train=False))
    params = checkpoint.load_pretrained(pretrained_path=str(tmp_path / 'hf'), init_params=init['params'],
                                        model_config=config)
    assert params['head']['kernel'].shape == (32, 3) and not params['head']['kernel'].any()
    assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 37, 32)
    np.testing.assert_array_equal(params['Transformer']['encoderblock_1']['LayerNorm_0']['scale'],
                                  source['Transformer']['encoderblock_1']['LayerNorm_0']['scale'])


def test_hf_vitmodel_pooler_becomes_pre_logits(tmp_path):
    """A headless HF ViTModel: its pooler (Dense + tanh on the class token) is the pre_logits layer."""
    torch, transformers = _torch(), _transformers()
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, image_size=32, patch_size=8)
    hf = transformers.ViTModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.3)
        reference = hf(pixel_values=torch.from_numpy(IMAGES).permute(0, 3, 1, 2)).pooler_output.numpy()
    hf.save_pretrained(tmp_path / 'hf')
    config, params = loader.load(tmp_path / 'hf')
    assert config.representation_size == 32 and arch.num_classes(params) == 0
    assert _rel_err(_ours(config, params, classes=0), reference, 'HF ViTModel pooler') <= TOLERANCE


def test_gap_model_timm_round_trip(tmp_path):
    model = get_model('testing', num_classes=5, classifier='gap', gelu_approximate=False, **TINY)
    params = _random_params(model)
    config = arch.infer_config(params, gelu_approximate=False)
    assert config.classifier == 'gap' and 'cls' not in params
    convert.export(params, config, str(tmp_path / 'gap.safetensors'), format='timm')
    loaded_config, loaded = loader.load(tmp_path / 'gap.safetensors')
    _assert_same_tree(loaded, params)
    assert loaded_config.classifier == 'gap'
    np.testing.assert_array_equal(_ours(loaded_config, loaded),
                                  np.asarray(model.apply({'params': params}, IMAGES, train=False)))


def test_hf_export_over_an_existing_directory_on_a_full_disk_keeps_the_old_one_whole(exact, tmp_path):
    """A directory export is written beside its destination and swapped in whole: when the disk
    fills up (here RLIMIT_FSIZE: writes over 20 kB fail) the old export stays as it was."""
    model, params, _ = exact
    config = arch.infer_config(params, gelu_approximate=False)
    convert.export(params, config, str(tmp_path / 'hf'), format='hf')
    before = {f: (tmp_path / 'hf' / f).read_bytes() for f in os.listdir(tmp_path / 'hf')}
    bigger = get_model('testing', num_classes=5, gelu_approximate=False,
                       **{**TINY, 'transformer.num_layers': 4})
    checkpoint.save(_random_params(bigger), tmp_path / 'bigger.npz')
    command = full_disk(20000, 'vit_jax.convert', str(tmp_path / 'bigger.npz'), str(tmp_path / 'hf'))
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err == [f"vit-convert: error: {tmp_path / 'hf'}: File too large"], proc.stderr
    assert {f: (tmp_path / 'hf' / f).read_bytes() for f in os.listdir(tmp_path / 'hf')} == before
    assert sorted(os.listdir(tmp_path)) == ['bigger.npz', 'hf']   # no temporary directory left behind


@pytest.mark.parametrize('eval_pp,crop_pct,resize', [
    (None, 1.0, 32),                                                     # a whole-image resize
    ({'crop': 32, 'eval_crop': 'center', 'resize': 36}, 32 / 36, 36),    # a workdir's center crop
    ({'crop': 32, 'eval_crop': 'center', 'resize': 37}, None, 37),
])
def test_timm_export_pretrained_cfg_is_vit_jax_preprocessing(exact, tmp_path, eval_pp, crop_pct, resize):
    """timm's eval transform of the exported pretrained_cfg, 'squash': both sides resized to
    floor(size / crop_pct), aspect not kept, then the central crop — vit_jax's eval preprocessing."""
    import math

    from safetensors.numpy import save_file
    save_file(_timm_sd(exact, tmp_path), str(tmp_path / 'm.safetensors'))
    config, params = loader.load(tmp_path / 'm.safetensors', Facts(num_heads=2, pool='token'))
    convert.export(params, config, str(tmp_path / 'out'), format='timm', eval_pp=eval_pp)
    cfg = json.loads((tmp_path / 'out' / 'config.json').read_text())['pretrained_cfg']
    size = cfg['input_size'][1]
    assert cfg['crop_mode'] == 'squash' and cfg['interpolation'] == 'bilinear' and size == 32
    assert math.floor(size / cfg['crop_pct']) == resize   # timm's scale_size
    if crop_pct is not None:
        assert cfg['crop_pct'] == pytest.approx(crop_pct)
    assert cfg['mean'] == cfg['std'] == [0.5, 0.5, 0.5]
