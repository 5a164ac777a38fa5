"""vit_jax.convert: every source format gives the source's logits; exports load in their ecosystems.

The max relative logit errors are printed (run with `-s` to see them):
    max|ours - reference| / max|reference| per format.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.faults import full_disk
from vit_jax import checkpoint, convert, trees
from vit_jax.checkpoint import CheckpointError, adapt, arch, foreign, loader
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
    with pytest.raises(CheckpointError, match="classifier='map' cannot be exported to timm"):
        convert.export(loaded, config, str(tmp_path / 'x.safetensors'), format='timm')


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

def _timm_reference(sd, images, heads, eps=1e-6, pool=None):
    """timm's VisionTransformer forward, written out in PyTorch (timm is not a dependency)."""
    torch = _torch()
    F = torch.nn.functional
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
    patch = t['patch_embed.proj.weight'].shape[-1]
    x = F.conv2d(torch.from_numpy(images).permute(0, 3, 1, 2), t['patch_embed.proj.weight'],
                 t['patch_embed.proj.bias'], stride=patch).flatten(2).transpose(1, 2)
    patches_only = t['pos_embed'].shape[1] == x.shape[1]   # timm no_embed_class (or no prefix tokens)
    if patches_only:
        x = x + t['pos_embed']
    prefix = [t[k].expand(len(x), -1, -1) for k in ('cls_token', 'reg_token') if k in t]
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
        x = x + ls('ls2') * F.linear(F.gelu(F.linear(h, p('mlp.fc1.weight'), p('mlp.fc1.bias'))),
                                     p('mlp.fc2.weight'), p('mlp.fc2.bias'))
    if 'norm.weight' in t:   # Identity when timm uses fc_norm
        x = F.layer_norm(x, (d,), t['norm.weight'], t['norm.bias'], eps)
    num_prefix = sum(p.shape[1] for p in prefix)
    pool = pool or ('token' if 'cls_token' in t else 'avg')
    pooled = x[:, 0] if pool == 'token' else x[:, num_prefix:].mean(1)
    if 'fc_norm.weight' in t:
        pooled = F.layer_norm(pooled, (d,), t['fc_norm.weight'], t['fc_norm.bias'], eps)
    return F.linear(pooled, t['head.weight'], t['head.bias']).numpy()


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
                       r'\(--num-heads N\) nor the pooling \(--pool token\|avg\); give the timm '
                       r'architecture \(--arch NAME'):
        loader.load(tmp_path / 'plain.safetensors')
    with pytest.raises(CheckpointError, match='record neither the pooling'):
        loader.load(tmp_path / 'plain.safetensors', num_heads=2)
    # A class token with average pooling (timm class_token=True, global_pool='avg').
    config, loaded = loader.load(tmp_path / 'plain.safetensors', num_heads=2, pool='avg')
    assert (config.classifier, config.class_token) == ('gap', True)
    reference = _timm_reference(sd, IMAGES, heads=2, pool='avg')
    assert _rel_err(_ours(config, loaded), reference, 'timm cls + avg') <= TOLERANCE
    torch.save({'model': {k: torch.from_numpy(v) for k, v in sd.items()}}, tmp_path / 'plain.pth')
    for name in ('plain.safetensors', 'plain.pth'):
        assert loader.detect_format(str(tmp_path / name)) == 'timm'
        config, loaded = loader.load(tmp_path / name, num_heads=2, pool='token')
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
    config, loaded = loader.load(tmp_path / 'gap.safetensors', num_heads=2, pool='avg')
    assert config.classifier == 'gap'
    reference = _timm_reference(sd, IMAGES, heads=2)
    assert _rel_err(_ours(config, loaded), reference, 'timm gap') <= TOLERANCE
    with pytest.raises(CheckpointError, match='token pooling but the weights have no cls_token'):
        loader.load(tmp_path / 'gap.safetensors', num_heads=2, pool='token')

    with pytest.raises(CheckpointError, match='the weights have width 32 but timm architecture '
                                              'vit_base_patch16_gap_224 has 768'):
        loader.load(tmp_path / 'gap.safetensors', timm_arch='vit_base_patch16_gap_224.sam_in1k')
    with pytest.raises(CheckpointError, match="timm architecture 'vit_so400m_patch14_siglip_224' is not one"):
        loader.load(tmp_path / 'gap.safetensors', timm_arch='vit_so400m_patch14_siglip_224')
    with open(tmp_path / 'config.json', 'w') as f:   # timm hub checkpoints carry this beside the weights
        json.dump({'architecture': 'vit_small_patch16_224.augreg_in21k', 'num_classes': 5}, f)
    with pytest.raises(CheckpointError, match='the weights have width 32 but timm architecture '
                                              'vit_small_patch16_224 has 384'):
        loader.load(tmp_path / 'gap.safetensors')


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
        config, loaded = loader.load(tmp_path / f'{name}.safetensors', num_heads=2, pool=pool)
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
    config, loaded = loader.load(tmp_path / 'dinov2_reg4.safetensors', num_heads=2, pool='token')
    assert config.transformer.layer_scale is not None and config.num_registers == 4
    assert 'LayerScale_1' in loaded['Transformer']['encoderblock_1']
    assert 'blocks.1.ls2.gamma' in load_file(str(tmp_path / 'dinov2_reg4_back.safetensors'))
    with pytest.raises(CheckpointError, match='Hugging Face ViT has no layer scale'):
        convert.export(loaded, config, str(tmp_path / 'hf'), format='hf')
    # Fine-tuning at another resolution keeps the class and register rows and resizes the grid.
    config, loaded = loader.load(tmp_path / 'dinov2_reg4.safetensors', num_heads=2, pool='token')
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
        loader.load(tmp_path / 'ambiguous.safetensors', num_heads=2, pool='token')
    assert foreign.timm_arch('deit3_base_patch16_224.fb_in22k_ft_in1k')['num_heads'] == 12
    assert foreign.timm_arch('vit_base_patch16_224_miil.in21k_ft_in1k')['num_heads'] == 12
    assert foreign.timm_arch('flexivit_base.1200ep_in1k')['patch'] == 16


def test_timm_architecture_table():
    assert foreign.timm_arch('vit_base_patch16_224.augreg2_in21k_ft_in1k') == dict(
        name='vit_base_patch16_224', width=768, depth=12, num_heads=12, patch=16, pool='token')
    # Not the head_dim=64 rule: timm's own arguments (16 heads at width 768).
    assert foreign.timm_arch('vit_base_patch16_gap_224')['num_heads'] == 16
    assert foreign.timm_arch('vit_huge_patch14_224')['num_heads'] == 16
    listing = convert.list_archs()
    assert 'vit_base_patch16_gap_224' in listing and 'vit_large_patch16_384' in listing
    assert len(listing.splitlines()) == len(foreign.TIMM_ARCHS) + 1


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
