"""Attention rollout, mean attention distance, the paper's figures and vit-analyze."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vit_jax import analysis, checkpoint
from vit_jax.checkpoint import loader
from vit_jax.images import find_images
from vit_jax.models import get_config, get_model


def test_rollout_of_identity_attention_is_diagonal():
    eye = np.broadcast_to(np.eye(5), (3, 2, 5, 5))          # 3 layers, 2 heads, 1 + 2x2 tokens
    rollout = analysis.attention_rollout(eye)
    np.testing.assert_allclose(rollout, np.eye(5), atol=1e-7)
    # Class token attends only to itself: nothing on the patches. Without one: uniform.
    np.testing.assert_allclose(analysis.token_map(rollout, 2, 1), np.zeros((2, 2)), atol=1e-7)
    np.testing.assert_allclose(analysis.token_map(rollout[1:, 1:], 2, 0), np.full((2, 2), 0.25))


def test_rollout_of_uniform_attention_matches_hand_computation():
    uniform = np.full((2, 1, 5, 5), 0.2)
    # Â = 0.5·I + 0.5·0.2; row 0 of Â² on a patch: 0.6·0.1 + 0.1·0.6 + 3·0.1·0.1 = 0.15.
    one_layer = analysis.token_map(analysis.attention_rollout(uniform[:1]), 2, 1)
    np.testing.assert_allclose(one_layer, 0.1, rtol=1e-6)
    np.testing.assert_allclose(analysis.token_map(analysis.attention_rollout(uniform), 2, 1), 0.15, rtol=1e-6)


def test_mean_attention_distance_on_constructed_pattern():
    grid, stride, n = 2, 16, 5                              # patches (0,0) (0,1) (1,0) (1,1)
    att = np.zeros((2, 2, n, n))
    for q in range(4):
        y, x = divmod(q, 2)
        neighbour, opposite = 1 + y * 2 + (1 - x), 1 + (1 - y) * 2 + (1 - x)
        att[0, 0, 1 + q, 1 + q] = att[0, 0, 1 + q, neighbour] = 0.5    # 0 and 16 px -> 8
        att[0, 1, 1 + q, 0] = att[0, 1, 1 + q, opposite] = 0.5        # class key ignored -> 16·√2
        att[1, :, 1 + q, 1:] = 0.25                                   # (0 + 16 + 16 + 16√2) / 4
    att[:, :, 0, :] = 0.2
    d = analysis.mean_attention_distance(att, grid, stride, num_prefix_tokens=1)
    np.testing.assert_allclose(d, [[8.0, 16 * 2 ** 0.5], [(32 + 16 * 2 ** 0.5) / 4] * 2], rtol=1e-6)
    # A batch axis averages over images.
    d2 = analysis.mean_attention_distance(np.stack([att, att], axis=1), grid, stride, 1)
    np.testing.assert_allclose(d2, d, rtol=1e-6)


def test_position_similarity_and_filter_components():
    rng = np.random.default_rng(0)
    pe = rng.normal(size=(1, 1 + 9, 8))
    sim = analysis.position_embedding_similarity(pe, 1)
    assert sim.shape == (3, 3, 3, 3)
    np.testing.assert_allclose([sim[i, j, i, j] for i in range(3) for j in range(3)], 1.0)
    np.testing.assert_allclose(sim, sim.transpose(2, 3, 0, 1))
    # Filters that are multiples of one pattern: that pattern is the first component.
    pattern = rng.normal(size=(4, 4, 3))
    kernel = pattern[..., None] * rng.normal(size=32) + 1e-6 * rng.normal(size=(4, 4, 3, 32))
    comps, ratio = analysis.embedding_filter_components(kernel, num=5)
    assert comps.shape == (5, 4, 4, 3) and ratio[0] > 0.999
    cos = abs(np.sum(comps[0] * pattern)) / np.linalg.norm(pattern)
    assert cos > 0.999


def _loaded(tmp_path, zero_queries: bool) -> loader.LoadedModel:
    model = get_model('testing', num_classes=4)
    params = jax.device_get(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 64, 64, 3)),
                                       train=False)['params'])
    if zero_queries:
        attn = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']
        for name in ('query', 'key'):
            attn[name] = jax.tree_util.tree_map(np.zeros_like, attn[name])
    return loader.from_params(get_config('testing'), params, 'test')


def test_model_with_uniform_attention_gives_uniform_rollout(tmp_path):
    loaded = _loaded(tmp_path, zero_queries=True)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    distance, maps, first, logits = analysis.make_attention_stats_fn(loaded, 4)(images)
    assert logits.shape == (2, loaded.num_classes)
    assert distance.shape == (1, 2, 2) and maps.shape == (2, 4, 4) and first.shape == (1, 2, 4, 4)
    np.testing.assert_allclose(maps, 0.5 / 17, rtol=1e-5)            # 1 layer: 0.5·(1/17) per patch
    np.testing.assert_allclose(first, 1 / 17, rtol=1e-5)              # raw attention: uniform
    # Uniform over a 4x4 grid of 16 px patches: the mean pairwise centre distance.
    np.testing.assert_allclose(distance, analysis.patch_distances(4, 16).mean(), rtol=1e-5)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp('analysis_images')
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 80, 3), dtype=np.uint8)).save(root / f'im{i}.png')
    return root


def test_analyze_writes_figures_and_numbers(tmp_path, images):
    loaded = _loaded(tmp_path, zero_queries=False)
    paths = find_images([str(images)])
    doc = analysis.analyze(loaded, paths, str(tmp_path / 'out'), batch_size=2, max_figure_images=2)
    expected = {'attention_rollout', 'attention_maps', 'mean_attention_distance',
                'position_embedding_similarity', 'embedding_filters'}
    assert set(doc['figures']) == expected
    for path in doc['figures'].values():
        with Image.open(path) as im:
            assert im.format == 'PNG' and min(im.size) > 100
            assert np.asarray(im.convert('L')).std() > 1      # not a blank canvas
    saved = json.loads((tmp_path / 'out' / 'analysis.json').read_text())
    assert saved['num_images'] == 3
    assert np.shape(saved['mean_attention_distance']) == (1, 2)
    # Any attention over a 4x4 grid of 16 px patches averages between 0 and the diagonal.
    distance = np.array(saved['mean_attention_distance'])
    assert 0 < distance.min() < distance.max() < 48 * 2 ** 0.5
    assert np.shape(saved['position_embedding_similarity']) == (4, 4, 4, 4)
    rollout = np.array(saved['attention_rollout'][str(images / 'im0.png')])
    assert rollout.shape == (4, 4) and np.all(rollout > 0)


def test_cli(tmp_path, images, capsys):
    params = _loaded(tmp_path, zero_queries=False).params
    checkpoint.save(params, str(tmp_path / 'm.npz'))
    (images / 'bad.jpg').write_bytes(b'not a jpeg')
    try:
        rc = analysis.main(['--checkpoint', str(tmp_path / 'm.npz'), '--image', str(images),
                            '--output-dir', str(tmp_path / 'fig')])
    finally:
        (images / 'bad.jpg').unlink()
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert 'bad.jpg' in out.err
    assert (tmp_path / 'fig' / 'mean_attention_distance.png').stat().st_size > 1000
    assert 'mean attention distance' in out.out


def test_cli_takes_images_positionally_writes_beside_the_checkpoint_and_names_predictions(tmp_path, images,
                                                                                         capsys):
    from vit_jax import predict
    params = _loaded(tmp_path, zero_queries=False).params
    checkpoint.save(params, str(tmp_path / 'm.npz'))
    rc = analysis.main([str(images / 'im0.png'), str(images / 'im1.png'),
                        '--checkpoint', str(tmp_path / 'm.npz')])
    out = capsys.readouterr()
    assert rc == 0, out.err
    saved = json.loads((tmp_path / 'm_analysis' / 'analysis.json').read_text())
    assert saved['num_images'] == 2 and (tmp_path / 'm_analysis' / 'attention_rollout.png').exists()
    expected = predict.predict_files(loader.load_model(str(tmp_path / 'm.npz')),
                                     [str(images / 'im0.png'), str(images / 'im1.png')], k=1)['results']
    assert {p: v['label'] for p, v in saved['predictions'].items()} == \
        {r['path']: r['predictions'][0]['label'] for r in expected}
    assert analysis.default_output_dir('ViT-B_16') == 'ViT-B_16_analysis'
