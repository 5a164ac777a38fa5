"""jax.export for serving: the exported computation gives the live model's logits."""

import json
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import checkpoint, export, serving
from vit_jax.checkpoint import loader
from vit_jax.errors import CheckpointError, UserError
from vit_jax.models import get_config, get_model


@pytest.fixture(scope='module')
def live():
    model = get_model('testing', num_classes=7, representation_size=5)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    params = jax.device_get(variables['params'])
    # A non-zero head, so that the logits differ between classes and images.
    params['head']['kernel'] = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    return model, params


@pytest.mark.slow
@pytest.mark.parametrize('bake_params', [True, False])
def test_exported_matches_live_model_for_two_batch_sizes(live, tmp_path, bake_params):
    model, params = live
    exported = export.export_inference(model, params, 32, bake_params=bake_params)
    path = export.save_exported(exported, str(tmp_path / 'm.vitx'), {'image_size': 32},
                                None if bake_params else params)
    served = serving.load_exported(path)
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        x = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
        want = np.asarray(model.apply({'params': params}, x, train=False))
        got = served(x)
        assert got.shape == (batch, 7)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.ptp(got) > 1e-3
    with zipfile.ZipFile(path) as z:
        assert ('params.npz' in z.namelist()) == (not bake_params)
    with pytest.raises(UserError, match=r'\[n, 32, 32, 3\]'):
        served(np.zeros((2, 64, 64, 3), np.float32))


@pytest.mark.slow
def test_cli_export_then_serve_without_model_code(live, tmp_path):
    model, params = live
    checkpoint.save(params, str(tmp_path / 'm.npz'))
    assert export.main(['--checkpoint', str(tmp_path / 'm.npz'), '--output', str(tmp_path / 'm.vitx')]) == 0
    x = np.random.default_rng(2).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / 'x.npy', x)
    serve = (
        'import sys, json, numpy as np\n'
        'from vit_jax.serving import load_exported\n'
        f'served = load_exported({str(tmp_path / "m.vitx")!r})\n'
        f'logits = served(np.load({str(tmp_path / "x.npy")!r}))\n'
        'print(json.dumps({"flax": "flax" in sys.modules, "logits": logits.tolist(),\n'
        '                  "image_size": served.metadata["image_size"]}))\n')
    proc = subprocess.run([sys.executable, '-c', serve], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out['flax'] is False and out['image_size'] == 32
    want = model.apply({'params': params}, x, train=False)
    np.testing.assert_allclose(out['logits'], want, rtol=1e-5, atol=1e-6)


def test_cli_bad_input_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.run(['--checkpoint', str(tmp_path / 'missing.npz'), '--output', str(tmp_path / 'm.vitx')])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith('vit-export: error:') and err.count('\n') == 1
    assert 'missing.npz' in err and not (tmp_path / 'm.vitx').exists()


def test_loader_rejects_other_files(tmp_path):
    (tmp_path / 'x.vitx').write_bytes(b'hello')
    with pytest.raises(CheckpointError, match='not a vit_jax export'):
        serving.load_exported(str(tmp_path / 'x.vitx'))


def test_export_of_loaded_model_records_metadata(tmp_path, live):
    model, params = live
    loaded = loader.from_params(get_config('testing'), params, 'mem', [f'c{i}' for i in range(7)])
    served = serving.load_exported(export.export_model(loaded, str(tmp_path / 'a.vitx')))
    assert served.metadata['class_names'][3] == 'c3' and served.metadata['num_classes'] == 7
    assert served.metadata['params_baked'] is True
