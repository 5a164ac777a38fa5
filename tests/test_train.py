"""The training loop end to end: digits accuracy, exact resume after SIGTERM, clear errors."""

import json
import os
import signal
import sys

import numpy as np
import pytest

from vit_jax import main, metrics, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits  # noqa: E402


def _tiny_config(**overrides):
    """Digits at 8x8 with a one-block ViT: a few seconds per run."""
    config = digits.get_config()
    config.pp.update(dict(crop=8, resize=9))
    config.model.update(dict(hidden_size=16, patches=dict(size=(4, 4))))
    config.model.transformer.update(dict(num_layers=1, num_heads=2, mlp_dim=16, dropout_rate=0.1))
    config.update(dict(batch=32, batch_eval=128, total_steps=6, warmup_steps=2, progress_every=1,
                       eval_every=3, checkpoint_every=3, progress_bar=False, shuffle_buffer=100))
    config.update(overrides)
    return config


def _npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_exact_resume_after_sigterm(tmp_path, monkeypatch):
    full = train.train_and_evaluate(_tiny_config(), str(tmp_path / 'full'))
    assert full['step'] == 6 and not full['preempted']

    # Same run, preempted: SIGTERM arrives while step 2's metrics are written.
    write = metrics.MetricWriter.write_scalars

    def write_and_kill(self, step, scalars):
        write(self, step, scalars)
        if step == 2 and 'train_loss' in scalars:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(metrics.MetricWriter, 'write_scalars', write_and_kill)
    part = train.train_and_evaluate(_tiny_config(), str(tmp_path / 'resumed'))
    assert part['preempted'] and part['step'] == 2
    assert not (tmp_path / 'resumed' / 'model.npz').exists()
    assert (tmp_path / 'resumed' / 'checkpoints' / '2').is_dir()
    monkeypatch.setattr(metrics.MetricWriter, 'write_scalars', write)
    resumed = train.train_and_evaluate(_tiny_config(), str(tmp_path / 'resumed'))
    assert resumed['step'] == 6

    a, b = _npz(tmp_path / 'full' / 'model.npz'), _npz(tmp_path / 'resumed' / 'model.npz')
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bitwise
    assert resumed['accuracy'] == full['accuracy']
    # The workdir loads back for prediction.
    model_config, num_classes, params, names = train.load_trained(str(tmp_path / 'resumed'))
    assert num_classes == 10 and names == [str(i) for i in range(10)] and model_config.hidden_size == 16


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    workdir = str(tmp_path / 'wd')
    train.train_and_evaluate(_tiny_config(total_steps=3, base_lr=0.0), workdir)
    with pytest.raises(train.TrainingError, match='non-finite loss.*last good checkpoint: step 3'):
        train.train_and_evaluate(_tiny_config(base_lr=1e38, warmup_steps=0), workdir)
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main.main(['vit-train', *argv])
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    cfg = os.path.join(ROOT, 'configs', 'digits.py')
    code, err = _cli([f'--config={cfg}', '--config.no_such_key=1', f'--workdir={tmp_path}'], capsys)
    assert code == 2 and 'no_such_key' in err and len(err.splitlines()) == 1

    code, err = _cli([f'--config={cfg}', f'--config.dataset={tmp_path}/missing', f'--workdir={tmp_path}/w'],
                     capsys)
    assert code == 2 and 'missing' in err and len(err.splitlines()) == 1

    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    code, err = _cli([f'--config={cfg}', f'--workdir={blocker}/w'], capsys)
    assert code == 2 and 'not writable' in err and len(err.splitlines()) == 1
    assert blocker.read_text() == 'not a directory'

    code, err = _cli([f'--config={tmp_path}/nope.py', f'--workdir={tmp_path}'], capsys)
    assert code == 2 and 'nope.py' in err and len(err.splitlines()) == 1

    code, err = _cli([f'--workdir={tmp_path}'], capsys)
    assert code == 2 and '--config is required' in err


@pytest.mark.slow
def test_digits_end_to_end_reaches_95_percent(tmp_path, capsys):
    workdir = tmp_path / 'digits'
    result = main.main(['vit-train', f'--config={ROOT}/configs/digits.py', f'--workdir={workdir}',
                        '--config.progress_bar=False'])
    out = capsys.readouterr().out
    assert result['accuracy'] >= 0.95, result
    assert 'Final test accuracy after 500 steps' in out
    files = os.listdir(workdir)
    assert {'config.json', 'labels.txt', 'metrics.jsonl', 'model.npz', 'checkpoints'} <= set(files)
    assert any(f.startswith('events.out.tfevents') for f in files)
    records = metrics.read_jsonl(workdir / 'metrics.jsonl')
    assert {'train_loss', 'lr', 'grad_norm', 'img_per_sec_per_core', 'step_time_ms'} <= set(records[0])
    assert records[-1]['accuracy'] == result['accuracy']
    saved = json.loads((workdir / 'config.json').read_text())
    assert saved['dataset_info']['num_classes'] == 10 and saved['model']['hidden_size'] == 64
    assert '500' in os.listdir(workdir / 'checkpoints')
