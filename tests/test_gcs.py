"""Workdirs, checkpoints, images and exports in a bucket, end to end against a Cloud Storage
emulator on 127.0.0.1: the same code path as a user's real gs:// bucket, nothing written locally."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.gcs_emulator import gcs  # noqa: F401  (the session fixture)
from vit_jax import metrics, paths
from vit_jax.checkpoint import loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ['--config.pp.crop=8', '--config.pp.resize=9', '--config.model.hidden_size=16',
              '--config.model.patches.size=(4,4)', '--config.model.transformer.num_layers=1',
              '--config.model.transformer.num_heads=2', '--config.model.transformer.mlp_dim=16',
              '--config.batch=32', '--config.batch_eval=128', '--config.warmup_steps=1',
              '--config.progress_bar=False', '--config.shuffle_buffer=100', '--config.eval_every=0']


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
                PYTHONPATH=ROOT)


def _run(module, *args, cwd):
    proc = subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True, env=_env(),
                          cwd=cwd, timeout=300)
    return proc


def _train(workdir, *args, cwd):
    return _run('vit_jax.main', f'--config={ROOT}/configs/digits.py', *TINY_FLAGS, f'--workdir={workdir}',
                *args, cwd=cwd)


@pytest.mark.slow
def test_train_kill_resume_predict_convert_analyze_and_fine_tune_in_a_bucket(gcs, tmp_path):  # noqa: F811
    bucket = gcs.bucket()
    run = f'{bucket}/runs/digits'
    cwd = tmp_path / 'cwd'
    cwd.mkdir()

    # Preempted (SIGTERM) while training: exit 75 with a checkpoint in the bucket.
    proc = subprocess.Popen([sys.executable, '-m', 'vit_jax.main', f'--config={ROOT}/configs/digits.py',
                             *TINY_FLAGS, f'--workdir={run}', '--config.total_steps=100000',
                             '--config.checkpoint_every=0'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=cwd)
    for line in proc.stdout:
        if line.startswith('Training '):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    names = paths.listdir(run)
    step = max(int(n.split('_')[1]) for n in names if n.startswith('checkpoint_'))
    assert {'config.json', 'metrics.jsonl'} <= set(names) and 'LOCK' not in names

    # The same command resumes from the bucket and finishes.
    proc = _train(run, f'--config.total_steps={step + 3}', '--config.checkpoint_every=0', cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'steps {step} -> {step + 3}' in proc.stdout
    objects = gcs.objects(bucket)
    assert 'runs/digits/model.npz' in objects and any('tfevents' in o for o in objects)
    assert any(o.startswith(f'runs/digits/checkpoint_{step + 3}/') for o in objects)
    steps = [r['step'] for r in metrics.read_jsonl(f'{run}/metrics.jsonl') if 'train_loss' in r]
    assert steps == sorted(set(steps)) and steps[-1] == step + 3     # each step once, in order
    assert json.loads(paths.read_text(f'{run}/config.json'))['model_npz_step'] == step + 3

    # Images in the bucket, classified with the workdir in the bucket.
    from vit_jax.input_pipeline import digits_splits
    _, (images, labels), _ = digits_splits(0.2)
    for i in range(3):
        buffer = tmp_path / f'{i}.png'
        Image.fromarray(images[i]).save(buffer)
        paths.write_atomic(f'{bucket}/imgs/digit_{i}.png', buffer.read_bytes())
    proc = _run('vit_jax.predict', f'{bucket}/imgs', '--checkpoint', run, '--json', '--top-k', '2', cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert [r['path'] for r in doc['results']] == [f'{bucket}/imgs/digit_{i}.png' for i in range(3)]
    assert all(len(r['predictions']) == 2 for r in doc['results'])

    # Converted to other formats, written to the bucket; the npz loads back to the same params.
    for dst in (f'{bucket}/export/model.npz', f'{bucket}/export/model.safetensors'):
        proc = _run('vit_jax.convert', run, dst, cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
    _, exported = loader.load(f'{bucket}/export/model.npz')
    _, trained = loader.load(run)
    np.testing.assert_array_equal(exported['head']['kernel'], trained['head']['kernel'])

    # The paper's figures, written to the bucket.
    proc = _run('vit_jax.analysis', '--checkpoint', run, '--image', f'{bucket}/imgs', '--output-dir',
                f'{bucket}/figures', cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {'analysis.json', 'attention_rollout.png', 'mean_attention_distance.png'} <= set(
        paths.listdir(f'{bucket}/figures'))

    # Fine-tuning from pretrained weights in the bucket.
    proc = _train(f'{bucket}/runs/ft', '--config.total_steps=1', '--config.warmup_steps=0',
                  '--config.base_lr=0.0', f'--config.pretrained_path={bucket}/export/model.npz', cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, tuned = loader.load(f'{bucket}/runs/ft')
    np.testing.assert_array_equal(tuned['embedding']['kernel'], trained['embedding']['kernel'])
    assert not tuned['head']['kernel'].any()

    # Nothing was written locally in the bucket's place.
    assert os.listdir(cwd) == []


def _tf_records(data: bytes) -> int:
    """How many TFRecord frames (length, crc, data, crc) `data` holds, checking they tile it."""
    import struct
    count, offset = 0, 0
    while offset < len(data):
        length, = struct.unpack('<Q', data[offset:offset + 8])
        offset += 8 + 4 + length + 4
        count += 1
    assert offset == len(data)
    return count


def test_metrics_and_events_grow_by_append_in_a_bucket(gcs, monkeypatch):  # noqa: F811
    """Each flush uploads what it adds (the object grows by server-side compose), never the whole
    file: the cost of a flush does not depend on how long the run has been logging."""
    run = f'{gcs.bucket()}/run'
    uploaded = []
    write = paths.write_atomic
    monkeypatch.setattr(paths, 'write_atomic', lambda p, d: uploaded.append((p, len(d))) or write(p, d))
    writer = metrics.MetricWriter(run, total_steps=40, progress=False, flush_secs=0.0)
    for step in range(1, 41):
        writer.write_scalars(step, {'loss': 1.0 / step})   # flushed at every row
    writer.close()
    rows = metrics.read_jsonl(f'{run}/metrics.jsonl')
    assert [r['step'] for r in rows] == list(range(1, 41))
    row_bytes = max(n for p, n in uploaded if 'metrics.jsonl' in p)
    assert row_bytes < 60, uploaded   # one row per upload, not 40
    events = [n for n in paths.listdir(run) if 'tfevents' in n]
    assert len(events) == 1 and not [n for n in paths.listdir(run) if '.part-' in n]
    assert _tf_records(paths.read_bytes(f'{run}/{events[0]}')) >= 41   # file version + 40 scalars

    # Resumed at step 30: the rows past it go (one rewrite), later ones are appended again.
    writer = metrics.MetricWriter(run, total_steps=40, initial_step=30, progress=False, flush_secs=0.0)
    writer.write_scalars(31, {'loss': 0.5})
    writer.close()
    assert [r['step'] for r in metrics.read_jsonl(f'{run}/metrics.jsonl')] == list(range(1, 32))


def test_a_torn_last_row_is_dropped_when_a_run_resumes(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')    # killed mid-append
    writer = metrics.MetricWriter(str(tmp_path), total_steps=5, initial_step=1, progress=False)
    writer.write_scalars(2, {'loss': 0.5})
    writer.close()
    assert metrics.read_jsonl(str(path)) == [{'step': 1, 'loss': 1.0}, {'step': 2, 'loss': 0.5}]
