"""MLP-Mixer as the original: parameter tree and counts, numerics, the public npz layout, timm's
MlpMixer layout, training, prediction and analysis."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from vit_jax import checkpoint, config_util, convert, predict, train, trees
from vit_jax.checkpoint import arch, loader
from vit_jax.errors import ConfigError, UserError
from vit_jax.models import MlpMixer, build_model, complete_config, get_config, get_model, num_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_blocks=2, hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=32, patches={'size': (4, 4)})


def _tiny(num_classes=5, **overrides):
    return get_model('Mixer-B_16', num_classes=num_classes, **{**TINY, **overrides})


def _random_params(model, size=16, seed=0):
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                               train=False))['params']
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(treedef,
                                        [rng.normal(0, 0.3, x.shape).astype(np.float32) for x in leaves])


IMAGES = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)


@pytest.mark.parametrize('name,count', [('Mixer-B_16', 59_880_472), ('Mixer-B_32', 60_293_428),
                                        ('Mixer-L_16', 208_196_168)])
def test_parameter_counts_are_the_originals(name, count):
    model = get_model(name, num_classes=1000)
    images = jnp.zeros((2, 224, 224, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))
    assert isinstance(model, MlpMixer) and num_params(shapes['params']) == count
    flat = {k: v.shape for k, v in trees.flatten(shapes['params']).items()}
    assert flat['stem/kernel'] == (16 if name.endswith('16') else 32,) * 2 + (3, model.hidden_dim)
    assert flat['MixerBlock_0/token_mixing/Dense_0/kernel'] == ((224 // model.patch_stride[0]) ** 2,
                                                                 model.tokens_mlp_dim)
    assert {'MixerBlock_0/LayerNorm_0/scale', 'MixerBlock_0/LayerNorm_1/bias', 'pre_head_layer_norm/scale',
            'head/kernel', 'MixerBlock_0/channel_mixing/Dense_1/bias'} <= set(flat)


def _numpy_mixer(p, x, gelu_tanh=True, eps=1e-6):
    """The original forward in float64 NumPy: patch conv, (token MLP over patches, channel MLP)
    per block, pre-LayerNorm and residual, final LayerNorm, mean over tokens, head."""
    def ln(z, q):
        mean, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
        return (z - mean) / np.sqrt(var + eps) * q['scale'] + q['bias']

    def gelu(z):
        if gelu_tanh:
            return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
        from scipy.special import erf
        return 0.5 * z * (1 + erf(z / np.sqrt(2)))

    def mlp(z, q):
        hidden = gelu(z @ q['Dense_0']['kernel'] + q['Dense_0']['bias'])
        return hidden @ q['Dense_1']['kernel'] + q['Dense_1']['bias']

    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    k = p['stem']['kernel']
    ph, pw = k.shape[:2]
    n, h, w, _ = x.shape
    patches = x.reshape(n, h // ph, ph, w // pw, pw, 3).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, -1, ph * pw * 3)
    z = patches @ k.reshape(-1, k.shape[-1]) + p['stem']['bias']
    i = 0
    while f'MixerBlock_{i}' in p:
        b = p[f'MixerBlock_{i}']
        z = z + mlp(ln(z, b['LayerNorm_0']).swapaxes(1, 2), b['token_mixing']).swapaxes(1, 2)
        z = z + mlp(ln(z, b['LayerNorm_1']), b['channel_mixing'])
        i += 1
    z = ln(z, p['pre_head_layer_norm']).mean(1)
    return z @ p['head']['kernel'] + p['head']['bias']


def test_logits_equal_an_independent_numpy_forward():
    model = _tiny()
    params = _random_params(model)
    got = np.asarray(model.apply({'params': params}, IMAGES, train=False))
    np.testing.assert_allclose(got, _numpy_mixer(params, IMAGES.astype(np.float64)), rtol=1e-4, atol=1e-5)
    exact = _tiny(gelu_approximate=False)
    np.testing.assert_allclose(np.asarray(exact.apply({'params': params}, IMAGES, train=False)),
                               _numpy_mixer(params, IMAGES.astype(np.float64), gelu_tanh=False),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='no attention'):
        model.apply({'params': params}, IMAGES, train=False, return_attention=True)


def test_public_npz_layout_loads_with_its_architecture_read_from_the_shapes(tmp_path):
    model = _tiny()
    params = _random_params(model)
    checkpoint.save(params, tmp_path / 'mixer.npz')
    found = loader.read(str(tmp_path / 'mixer.npz'))
    assert found.format == 'npz'
    c = found.model_config
    assert (c.num_blocks, c.hidden_dim, c.tokens_mlp_dim, c.channels_mlp_dim, tuple(c.patches.size)) == \
        (2, 16, 8, 32, (4, 4))
    loaded = loader.load_model(str(tmp_path / 'mixer.npz'))
    assert (loaded.image_size, loaded.num_classes, loaded.num_prefix_tokens) == (16, 5, 0)
    np.testing.assert_array_equal(loaded.model.apply({'params': loaded.params}, IMAGES, train=False),
                                  model.apply({'params': params}, IMAGES, train=False))
    # A full-size tree is recognised by name.
    big = get_model('Mixer-L_16', num_classes=1000)
    shapes = jax.eval_shape(lambda: big.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
    assert arch.infer_config(shapes['params']).model_name == 'Mixer-L_16'


class _TorchMixer:
    """timm's MlpMixer forward (mixer_b16_224 layout: stem.proj, blocks.i.{norm1, mlp_tokens,
    norm2, mlp_channels}, norm, head; exact GELU, LayerNorm eps 1e-6), written here in PyTorch."""

    def __init__(self, sd, patch):
        self.sd, self.patch = sd, patch

    def __call__(self, x):
        import torch.nn.functional as F
        sd = self.sd

        def lin(z, name):
            return F.linear(z, sd[f'{name}.weight'], sd[f'{name}.bias'])

        def ln(z, name):
            return F.layer_norm(z, z.shape[-1:], sd[f'{name}.weight'], sd[f'{name}.bias'], eps=1e-6)

        z = F.conv2d(x, sd['stem.proj.weight'], sd['stem.proj.bias'], stride=self.patch)
        z = z.flatten(2).transpose(1, 2)
        i = 0
        while f'blocks.{i}.norm1.weight' in sd:
            b = f'blocks.{i}'
            y = ln(z, f'{b}.norm1').transpose(1, 2)
            z = z + lin(F.gelu(lin(y, f'{b}.mlp_tokens.fc1')), f'{b}.mlp_tokens.fc2').transpose(1, 2)
            z = z + lin(F.gelu(lin(ln(z, f'{b}.norm2'), f'{b}.mlp_channels.fc1')), f'{b}.mlp_channels.fc2')
            i += 1
        return lin(ln(z, 'norm').mean(1), 'head')


def test_timm_mixer_layout_matches_a_torch_forward_and_round_trips(tmp_path):
    torch = pytest.importorskip('torch')
    from safetensors.numpy import save_file
    exact = _tiny(gelu_approximate=False)
    params = _random_params(exact)
    sd = convert.timm.timm_mixer_state_dict(params)
    assert {'stem.proj.weight', 'blocks.1.mlp_tokens.fc2.bias', 'blocks.0.norm2.weight', 'norm.bias',
            'head.weight'} <= set(sd)
    save_file(sd, str(tmp_path / 'mixer.safetensors'))
    config, loaded = loader.load(str(tmp_path / 'mixer.safetensors'))
    assert config.gelu_approximate is False and config.num_blocks == 2
    reference = _TorchMixer({k: torch.from_numpy(v) for k, v in sd.items()}, 4)(
        torch.from_numpy(IMAGES.transpose(0, 3, 1, 2)).double().float()).numpy()
    ours = np.asarray(build_model(config, 5).apply({'params': loaded}, IMAGES, train=False))
    err = float(np.abs(ours - reference).max() / np.abs(reference).max())
    print(f'\nmax relative logit error [timm MlpMixer]: {err:.2e}')
    assert err < 1e-5
    out = convert.export(loaded, config, str(tmp_path / 'back.safetensors'), format='timm')
    from safetensors.numpy import load_file
    again = load_file(out)
    assert again.keys() == sd.keys() and all(np.array_equal(again[k], sd[k]) for k in sd)   # bitwise
    # A timm hub directory names a registered mixer_* (whose size timm fixes): this tiny one has none.
    with pytest.raises(UserError, match=r'timm registers no MlpMixer with patch 4, 2 blocks and width 16 '):
        convert.export(loaded, config, str(tmp_path / 'timm_dir'), format='timm')
    b16 = ml_collections.ConfigDict({**config.to_dict(), 'hidden_dim': 768, 'num_blocks': 12,
                                     'patches': {'size': (16, 16)}, 'tokens_mlp_dim': 384,
                                     'channels_mlp_dim': 3072})
    record = convert.timm.timm_config(loaded, b16)   # (the record only: shapes are not checked here)
    assert (record['architecture'], record['model_args']['mlp_ratio']) == ('mixer_b16_224', [0.5, 4.0])
    with pytest.raises(UserError, match='Hugging Face ViT has no MLP-Mixer'):
        convert.export(loaded, config, str(tmp_path / 'hf'), format='hf')


@pytest.mark.slow
def test_a_mixer_trains_with_the_same_loop_and_predicts(tmp_path):
    config = config_util.load_file(os.path.join(ROOT, 'configs', 'digits.py'))
    config.model_type = 'Mixer'
    config.model = get_config('Mixer-B_16', **TINY)
    config.update(dict(total_steps=4, warmup_steps=1, eval_every=0, progress_bar=False, checkpoint_every=0))
    config.pp.update(dict(crop=8, resize=9))
    result = train.train_and_evaluate(config, str(tmp_path / 'wd'))
    assert result['step'] == 4 and 0 <= result['accuracy'] <= 1
    saved = json.loads((tmp_path / 'wd' / 'config.json').read_text())
    assert saved['model_type'] == 'Mixer'
    assert saved['model'] == json.loads(json.dumps(complete_config(config.model).to_dict()))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / 'white.png')
    doc = predict.predict_files(loader.load_model(str(tmp_path / 'wd')), [str(tmp_path / 'white.png')], k=1)
    assert doc['results'][0]['predictions'][0]['label'] in [str(i) for i in range(10)]
    # The model family must be the one the config says.
    config.model_type = 'ViT'
    with pytest.raises(ConfigError, match="config.model_type='ViT' but config.model describes a Mixer"):
        train.train_and_evaluate(config, str(tmp_path / 'other'))


@pytest.mark.slow
def test_analyze_draws_the_stem_filters_and_refuses_attention_figures_in_one_line(tmp_path):
    model = get_model('Mixer-B_16', num_classes=5, **{**TINY, 'patches': {'size': (4, 4)}})
    checkpoint.save(_random_params(model), tmp_path / 'mixer.npz')
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / 'x.png')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
    base = [sys.executable, '-m', 'vit_jax.analysis', '--checkpoint', str(tmp_path / 'mixer.npz'),
            '--output-dir', str(tmp_path / 'fig')]
    run = lambda *args: subprocess.run([*base, *args], capture_output=True, text=True,  # noqa: E731
                                       env=env, timeout=300)
    proc = run('--image', str(tmp_path / 'x.png'))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f'vit-analyze: error: {tmp_path / "mixer.npz"}: an MLP-Mixer has no attention maps (an MLP mixes its '
        'tokens); run vit-analyze without --image for its patch-embedding figure']
    proc = run()
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / 'fig')) == ['analysis.json', 'embedding_filters.png']
