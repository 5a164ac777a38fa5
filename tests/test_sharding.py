"""Mesh / partition rules, and the same loss curve on 1 device, 4 devices (data and fsdp) and
2 processes x 2 devices with fsdp (jax.distributed over 127.0.0.1 with gloo), all fine-tuning from
the same pretrained npz (loaded onto abstract params, then sharded)."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vit_jax import checkpoint, models, sharding
from vit_jax.errors import ConfigError

WORKER = os.path.join(os.path.dirname(__file__), 'train_worker.py')


def test_partition_spec_shards_largest_divisible_dim():
    min_size = 2 ** 14   # the default config's mesh.fsdp_min_size
    assert sharding.partition_spec((768, 3072), 4, min_size) == P(None, 'fsdp')
    assert sharding.partition_spec((3072, 768), 4, min_size) == P('fsdp', None)
    assert sharding.partition_spec((16, 16, 3, 768), 8, min_size) == P(None, None, None, 'fsdp')
    assert sharding.partition_spec((769, 1001), 4, min_size) == P()  # nothing divisible: replicated
    assert sharding.partition_spec((768,), 4, min_size) == P()  # small: replicated
    assert sharding.partition_spec((768, 3072), 1, min_size) == P()


def test_mesh_shape_resolves_and_rejects():
    assert sharding.mesh_shape(-1, 2, 8) == (4, 2)
    assert sharding.mesh_shape(2, -1, 8) == (2, 4)
    with pytest.raises(ConfigError, match='mesh.data=3, mesh.fsdp=1 does not tile the 8 devices'):
        sharding.mesh_shape(3, 1, 8)
    mesh = sharding.create_mesh(-1, 1)
    assert dict(mesh.shape) == {'data': jax.device_count(), 'fsdp': 1}


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(devices, pretrained):
    return dict(os.environ, JAX_PLATFORMS='cpu', VIT_JAX_TEST_PRETRAINED=pretrained,
                XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def _pretrained(tmp_path):
    """An npz of train_worker's model (other seed, 5 classes: the head is replaced)."""
    model = models.get_model('testing', num_classes=5, **{'patches.size': (4, 4)})
    params = model.init(jax.random.PRNGKey(7), np.zeros((1, 8, 8, 3), np.float32), train=False)['params']
    path = str(tmp_path / 'pretrained.npz')
    checkpoint.save(params, path)
    return path


def _losses(output):
    line = [ln for ln in output.splitlines() if ln.startswith('LOSSES ')]
    assert line, output[-3000:]
    return json.loads(line[-1][len('LOSSES '):])


def _run(tmp_path, name, devices, fsdp):
    out = subprocess.run([sys.executable, WORKER, str(tmp_path / name), str(fsdp)],
                         env=_env(devices, _pretrained(tmp_path)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return _losses(out.stdout)


@pytest.mark.slow
def test_same_loss_curve_on_1_4_devices_fsdp_and_2_processes(tmp_path):
    one = _run(tmp_path, 'one', 1, 1)
    four = _run(tmp_path, 'four', 4, 1)
    fsdp = _run(tmp_path, 'fsdp', 4, 2)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, WORKER, str(tmp_path / 'multi'), '2', str(i), '2', port],
                              env=_env(2, _pretrained(tmp_path)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    multi = _losses(outs[0][0])
    layouts = (one['devices'], four['devices'], fsdp['fsdp'], multi['processes'], multi['devices'],
               multi['fsdp'])
    assert layouts == (1, 4, 2, 2, 4, 2)  # multi: 2 processes x 2 devices, params sharded over both
    assert len(one['losses']) == 4 and len(set(one['losses'])) > 1  # it trains
    for other in (four, fsdp, multi):
        np.testing.assert_allclose(other['losses'], one['losses'], rtol=1e-5)
    # Both processes wrote their shards of the checkpoint; only process 0 wrote logs and model.npz.
    state = tmp_path / 'multi' / 'checkpoint_4' / 'state'
    for pid in (0, 1):
        shards = list((state / f'ocdbt.process_{pid}' / 'd').iterdir())
        assert shards and all(f.stat().st_size > 0 for f in shards), pid
        assert (state / 'array_metadatas' / f'process_{pid}').is_file()
    files = sorted(os.listdir(tmp_path / 'multi'))
    events = [f for f in files if f.startswith('events.out.tfevents')]
    assert len(events) == 1 and files == sorted(['checkpoint_4', 'config.json', 'metrics.jsonl', 'model.npz',
                                                 *events]), files
