"""vit_jax.checkpoint: every published .npz layout loads to the same model, fine-tune adaptation."""

import io
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import scipy.ndimage

from vit_jax import checkpoint, paths, trees
from vit_jax.checkpoint import CheckpointError
from vit_jax.models import get_config, get_model

TINY = {'patches.size': (8, 8), 'hidden_size': 32, 'transformer.num_layers': 2, 'transformer.mlp_dim': 64}


def _random_params(model, image_size=32, seed=0):
    """Params of the model's shapes filled with noise (a zero head would hide most bugs)."""
    x = np.zeros((1, image_size, image_size, 3), np.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(seed), x, train=False))['params']
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        treedef, [rng.normal(0, 0.3, leaf.shape).astype(np.float32) for leaf in leaves])


def _images(n=2, size=32, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _logits(model, params, size=32):
    return np.asarray(model.apply({'params': params}, _images(size=size), train=False))


def _assert_same_tree(a, b):
    fa, fb = trees.flatten(a), trees.flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k], np.float32), np.asarray(fb[k], np.float32), err_msg=k)


def _savez(path, flat):
    np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


@pytest.fixture(scope='module')
def tiny():
    model = get_model('testing', num_classes=5, **TINY)
    params = _random_params(model)
    return model, params, _logits(model, params)


def test_save_load_round_trip_is_lossless(tiny, tmp_path):
    model, params, logits = tiny
    checkpoint.save(params, tmp_path / 'ckpt.npz')
    loaded = checkpoint.load(tmp_path / 'ckpt.npz')
    _assert_same_tree(loaded, params)
    np.testing.assert_array_equal(_logits(model, loaded), logits)
    # The file is the public flat format: '/'-joined names, no pickles.
    with np.load(tmp_path / 'ckpt.npz', allow_pickle=False) as f:
        assert 'Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel' in f.files


def _pre_linen(key):
    return (key.replace('MultiHeadDotProductAttention_0', 'MultiHeadDotProductAttention_1')
            .replace('LayerNorm_1', 'LayerNorm_2').replace('MlpBlock_0', 'MlpBlock_3'))


@pytest.mark.parametrize('prefix', ['', 'opt/target/'])
def test_pre_linen_names_and_opt_target_prefix(tiny, tmp_path, prefix):
    model, params, logits = tiny
    flat = {prefix + _pre_linen(k): v for k, v in trees.flatten(params).items()}
    assert any('MlpBlock_3' in k for k in flat)
    _savez(tmp_path / 'pre_linen.npz', flat)
    loaded = checkpoint.load(tmp_path / 'pre_linen.npz')
    _assert_same_tree(loaded, params)
    np.testing.assert_array_equal(_logits(model, loaded), logits)


def _big_vision_flat(params, scan=False, bf16=False):
    """The big_vision layout of the same function: posemb without the class slot is added before
    the class token is prepended, so the class token absorbs its position embedding."""
    p = jax.tree_util.tree_map(np.asarray, params)
    pos = p['Transformer'].pop('posembed_input')['pos_embedding']
    p['pos_embedding'] = pos[:, 1:]
    p['cls'] = p['cls'] + pos[:, :1]
    if scan:
        blocks = [p['Transformer'].pop(f'encoderblock_{i}') for i in range(2)]
        p['Transformer']['encoderblock'] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *blocks)
    flat = {'params/' + k: v for k, v in trees.flatten(p).items()}
    if bf16:
        flat = {k: v.astype(ml_dtypes.bfloat16) for k, v in flat.items()}
    return flat


@pytest.mark.parametrize('scan,bf16', [(False, False), (True, False), (True, True)])
def test_big_vision_layouts(tiny, tmp_path, scan, bf16):
    model, params, logits = tiny
    flat = _big_vision_flat(params, scan=scan, bf16=bf16)
    _savez(tmp_path / 'bv.npz', flat)
    if bf16:  # numpy stores bfloat16 as raw 2-byte voids, as big_vision files have them.
        with np.load(tmp_path / 'bv.npz') as f:
            assert f['params/cls'].dtype.kind == 'V'
    loaded = checkpoint.load(tmp_path / 'bv.npz')
    assert 'encoderblock_1' in loaded['Transformer'] and 'pos_embedding' not in loaded
    if bf16:
        assert loaded['cls'].dtype == ml_dtypes.bfloat16
        # The raw bytes are read back as the same bfloat16 values: same logits as a float32 file
        # holding those values, and close to the float32 model's.
        _savez(tmp_path / 'f32.npz', {k: v.astype(np.float32) for k, v in flat.items()})
        reference = checkpoint.load(tmp_path / 'f32.npz')
        loaded32 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), loaded)
        _assert_same_tree(loaded32, reference)
        np.testing.assert_array_equal(_logits(model, loaded32), _logits(model, reference))
        assert np.abs(_logits(model, loaded32) - logits).max() < 0.05 * np.abs(logits).max()
    else:
        np.testing.assert_allclose(_logits(model, loaded), logits, rtol=1e-5, atol=1e-5)


def test_hybrid_groupnorm_shapes(tmp_path):
    model = get_model('R+ViT-Ti_16', num_classes=3, **{
        'hidden_size': 16, 'transformer.num_layers': 1, 'transformer.mlp_dim': 16, 'transformer.num_heads': 2,
        'resnet.num_layers': (1,), 'patches.size': (2, 2)})
    params = _random_params(model)
    flat = trees.flatten(params)
    gn = [k for k in flat if '/' in k and k.split('/')[-2].startswith('gn') and k.endswith(('scale', 'bias'))]
    assert 'gn_root/scale' in gn and 'block1/unit1/gn_proj/bias' in gn
    old = {k: (v.reshape(1, 1, 1, -1) if k in gn else v) for k, v in flat.items()}  # Old Flax's shapes.
    _savez(tmp_path / 'hybrid.npz', old)
    loaded = checkpoint.load(tmp_path / 'hybrid.npz')
    _assert_same_tree(loaded, params)  # Same shapes and values as the model's own tree.


def test_inspect_params_lists_missing_extra_and_wrong_shapes(tiny):
    _, params, _ = tiny
    bad = trees.flatten(params)
    del bad['head/bias']
    bad['extra/kernel'] = np.zeros((2, 3))
    bad['Transformer/encoder_norm/scale'] = np.zeros(7)
    with pytest.raises(CheckpointError) as e:
        checkpoint.inspect_params(trees.unflatten(bad), params, source='ckpt.npz')
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('ckpt.npz')
    assert 'missing head/bias (5,)' in msg and 'extra extra/kernel (2, 3)' in msg
    assert 'Transformer/encoder_norm/scale (7,) (expected (32,))' in msg
    assert checkpoint.inspect_params(params, params) is params


# --- Broken files: one clear line, nothing written -------------------------------------------

def _npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize('case,expect', [
    ('truncated', 'corrupt or truncated'),
    ('garbage', 'not a .npz'),
    ('npy', 'single .npy'),
    ('pickle', 'pickled Python objects'),
    ('empty', 'no arrays'),
])
def test_broken_files_give_one_line_errors(tmp_path, case, expect):
    good = _npz_bytes(**{'embedding/kernel': np.ones((4, 4, 3, 8), np.float32)})
    data = {
        'truncated': good[:len(good) // 2],
        'garbage': b'\x00not a checkpoint' * 10,
        'pickle': _npz_bytes(x=np.array([{'a': 1}, None], dtype=object)),
        'empty': _npz_bytes(),
    }
    path = tmp_path / f'{case}.npz'
    if case == 'npy':
        np.save(tmp_path / 'x.npy', np.ones(3))
        os.replace(tmp_path / 'x.npy', path)
    else:
        path.write_bytes(data[case])
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path)
    assert expect in str(e.value) and str(path) in str(e.value) and '\n' not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == before


def test_save_is_atomic(tmp_path, tiny):
    _, params, _ = tiny
    checkpoint.save(params, tmp_path / 'a.npz')
    before = (tmp_path / 'a.npz').read_bytes()
    with pytest.raises(CheckpointError, match="'bad/x' is not a numeric array"):
        checkpoint.save({'bad': {'x': object()}}, tmp_path / 'a.npz')
    assert (tmp_path / 'a.npz').read_bytes() == before and os.listdir(tmp_path) == ['a.npz']


def test_written_files_are_readable_as_the_umask_allows(tmp_path, tiny):
    """A teammate or a TensorBoard server running as another user reads what vit_jax writes."""
    old = os.umask(0o022)
    try:
        checkpoint.save(tiny[1], tmp_path / 'a.npz')
        paths.write_dir_atomic(tmp_path / 'd', {'x.json': '{}'})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / 'a.npz').st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / 'd' / 'x.json').st_mode & 0o777 == 0o644


# --- Fine-tuning adaptation ----------------------------------------------------------------

def test_interpolate_posembed_224_to_384_matches_scipy_zoom():
    rng = np.random.default_rng(0)
    posemb = rng.normal(size=(1, 1 + 14 * 14, 64)).astype(np.float32)
    new = checkpoint.interpolate_posembed(posemb, 1 + 24 * 24)
    grid = posemb[0, 1:].reshape(14, 14, -1)
    reference = scipy.ndimage.zoom(grid, (24 / 14, 24 / 14, 1), order=1).reshape(1, 576, -1)
    assert new.shape == (1, 577, 64) and new.dtype == np.float32
    np.testing.assert_array_equal(new[:, :1], posemb[:, :1])  # Class-token row kept.
    np.testing.assert_allclose(new[:, 1:], reference, rtol=1e-6, atol=1e-6)
    # Without a class token (gap models) the whole sequence is the grid.
    gap = checkpoint.interpolate_posembed(posemb[:, 1:], 576, has_class_token=False)
    np.testing.assert_allclose(gap, reference, rtol=1e-6, atol=1e-6)


def test_resize_patch_embedding_preserves_tokens_of_upsampled_patches():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(8, 8, 3, 4)).astype(np.float32)
    new = checkpoint.resize_patch_embedding(kernel, (12, 12))
    assert new.shape == (12, 12, 3, 4)
    patches = rng.normal(size=(5, 8, 8, 3)).astype(np.float32)
    up = np.asarray(jax.image.resize(patches, (5, 12, 12, 3), 'linear', antialias=False))
    np.testing.assert_allclose(np.einsum('nhwc,hwcd->nd', up, new),
                               np.einsum('nhwc,hwcd->nd', patches, kernel), rtol=1e-4, atol=1e-4)
    assert checkpoint.resize_patch_embedding(kernel, (8, 8)) is kernel


def test_load_pretrained_new_head_drops_pre_logits_and_resizes(tmp_path):
    src = get_model('testing', num_classes=7, representation_size=16, **TINY)
    src_params = _random_params(src)
    checkpoint.save(src_params, tmp_path / 'pre.npz')

    dst = get_model('testing', num_classes=3, **TINY)  # 48 px: 6x6 grid instead of 4x4.
    init = _random_params(dst, image_size=48)
    params = checkpoint.load_pretrained(pretrained_path=str(tmp_path / 'pre.npz'), init_params=init,
                                        model_config=dst)
    assert 'pre_logits' not in params
    np.testing.assert_array_equal(params['head']['kernel'], init['head']['kernel'])  # New head.
    np.testing.assert_array_equal(params['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0']['kernel'],
                                  src_params['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0']['kernel'])
    pos = params['Transformer']['posembed_input']['pos_embedding']
    np.testing.assert_allclose(pos, checkpoint.interpolate_posembed(
        src_params['Transformer']['posembed_input']['pos_embedding'], 37))
    assert dst.apply({'params': params}, _images(size=48), train=False).shape == (2, 3)

    # Same representation_size: pre_logits kept; patch 8 -> 16 resizes the kernel.
    dst = get_model('testing', num_classes=3, representation_size=16, **{**TINY, 'patches.size': (16, 16)})
    init = _random_params(dst, image_size=64)
    params = checkpoint.load_pretrained(pretrained_path=str(tmp_path / 'pre.npz'), init_params=init,
                                        model_config=dst)
    np.testing.assert_array_equal(params['pre_logits']['kernel'], src_params['pre_logits']['kernel'])
    assert params['embedding']['kernel'].shape == (16, 16, 3, 32)


def test_load_pretrained_scan_layout_and_mismatch_error(tmp_path, tiny):
    model, params, logits = tiny
    checkpoint.save(params, tmp_path / 'a.npz')
    scan = get_model('testing', num_classes=5, scan_layers=True, **TINY)
    init = jax.eval_shape(lambda: scan.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), train=False))
    loaded = checkpoint.load_pretrained(pretrained_path=str(tmp_path / 'a.npz'), init_params=init['params'],
                                        model_config=scan)
    loaded['head'] = params['head']
    np.testing.assert_allclose(_logits(scan, loaded), logits, rtol=1e-5, atol=1e-5)

    wider = get_model('testing', num_classes=5, **{**TINY, 'transformer.mlp_dim': 48})
    init = jax.eval_shape(lambda: wider.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), train=False))
    with pytest.raises(CheckpointError, match=r'a.npz has another architecture than config.model '
                                              r'\(testing\): mlp_dim 64 \(config.model: 48\); set'):
        checkpoint.load_pretrained(pretrained_path=str(tmp_path / 'a.npz'), init_params=init['params'],
                                   model_config=wider)


def test_load_pretrained_from_a_training_workdir(tmp_path, tiny):
    """Fine-tuning can start from a vit-train workdir (its model.npz, read by workdir.load_trained)."""
    model, params, _ = tiny
    workdir = tmp_path / 'workdir'
    workdir.mkdir()
    checkpoint.save(params, workdir / 'model.npz')
    config = get_config('testing', **TINY).to_dict()
    config.update(dtype='bfloat16', remat=True)    # training choices stored as the trainer writes them
    (workdir / 'config.json').write_text(json.dumps({
        'model': config, 'dataset_info': {'num_classes': 5, 'class_names': list('abcde')}}))
    dst = get_model('testing', num_classes=3, **TINY)
    init = _random_params(dst, image_size=48)
    loaded = checkpoint.load_pretrained(pretrained_path=str(workdir), init_params=init, model_config=dst)
    np.testing.assert_array_equal(loaded['Transformer']['encoderblock_1']['LayerNorm_0']['scale'],
                                  params['Transformer']['encoderblock_1']['LayerNorm_0']['scale'])
    assert loaded['Transformer']['posembed_input']['pos_embedding'].shape == (1, 37, 32)
    np.testing.assert_array_equal(loaded['head']['kernel'], init['head']['kernel'])


def test_unflatten_error_names_the_key_and_the_file(tmp_path):
    np.savez(tmp_path / 'clash.npz', **{'cls': np.zeros(2), 'cls/x': np.zeros(2)})
    with pytest.raises(CheckpointError, match=r"clash\.npz: key 'cls/x' nests below the array 'cls'"):
        checkpoint.load(tmp_path / 'clash.npz')


def test_a_named_config_reads_the_tokens_and_pooling_of_the_parameters_as_a_read_config_does():
    """`loader.from_params` (a named config: --model) and `arch.infer_config` read what the parameters
    record by one rule (`arch.tree_fields`): a class token the named config does not pool is used, not
    dropped (the logits are the source's), and pooling a class token the parameters lack is refused."""
    from vit_jax.checkpoint import loader

    source = get_model('testing', num_classes=5, classifier='gap', class_token=True, **TINY)
    params = _random_params(source)
    named = get_config('testing', classifier='gap', **TINY)   # pools the average; no class token stated
    loaded = loader.from_params(named, params, 'cls+gap')
    np.testing.assert_allclose(_logits(loaded.model, params), _logits(source, params), atol=1e-5)
    gap = get_model('testing', num_classes=5, classifier='gap', **TINY)
    with pytest.raises(CheckpointError, match=r"no-cls: classifier='token' pools the class token, but the "
                                              r'parameters have none'):
        loader.from_params(get_config('testing', **TINY), _random_params(gap), 'no-cls')
