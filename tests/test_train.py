"""The training loop end to end: digits accuracy, exact resume after SIGTERM, few-shot probe, clear errors."""

import json
import os
import signal
import sys

import numpy as np
import pytest

from vit_jax import hub, io_util, main, metrics, train

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


def _sigterm_at_step(monkeypatch, at: int):
    """Sends this process SIGTERM (a preemption) right after the train metrics of step `at`;
    returns the unpatched `write_scalars` so the test can restore it."""
    write = metrics.MetricWriter.write_scalars

    def write_and_kill(self, step, scalars):
        write(self, step, scalars)
        if step == at and 'train_loss' in scalars:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(metrics.MetricWriter, 'write_scalars', write_and_kill)
    return write


def test_exact_resume_after_sigterm(tmp_path, monkeypatch):
    full = train.train_and_evaluate(_tiny_config(), str(tmp_path / 'full'))
    assert full['step'] == 6 and not full['preempted']

    # Same run, preempted: SIGTERM arrives while step 2's metrics are written.
    write = _sigterm_at_step(monkeypatch, 2)
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


def test_fine_tuning_starts_from_pretrained_params_with_a_zero_head(tmp_path):
    train.train_and_evaluate(_tiny_config(total_steps=3, checkpoint_every=0), str(tmp_path / 'pre'))
    pretrained = _npz(tmp_path / 'pre' / 'model.npz')
    config = _tiny_config(total_steps=1, warmup_steps=0, base_lr=0.0, checkpoint_every=0,
                          pretrained_path=str(tmp_path / 'pre' / 'model.npz'))
    train.train_and_evaluate(config, str(tmp_path / 'ft'))
    tuned = _npz(tmp_path / 'ft' / 'model.npz')
    assert tuned.keys() == pretrained.keys()
    for k in tuned:
        if k.startswith('head/'):
            assert not tuned[k].any(), k  # a new head, zero-initialised as in the original
        else:
            np.testing.assert_array_equal(tuned[k], pretrained[k], err_msg=k)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    workdir = str(tmp_path / 'wd')
    train.train_and_evaluate(_tiny_config(total_steps=3, base_lr=0.0), workdir)
    with pytest.raises(train.TrainingError, match='non-finite loss.*last good checkpoint: step 3'):
        train.train_and_evaluate(_tiny_config(base_lr=1e38, warmup_steps=0), workdir)
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main.run(['vit-train', *argv])
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


def test_cli_failed_download_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """A catalogue name with an empty cache and no network: the URL and what to do, no traceback."""
    monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(hub, 'HTTPS_ROOT', 'http://127.0.0.1:9')  # a closed port: never the network
    cfg = os.path.join(ROOT, 'configs', 'digits.py')
    code, err = _cli([f'--config={cfg}', '--config.pretrained_path=ViT-B_16', '--config.total_steps=2',
                      '--config.warmup_steps=1', '--config.progress_bar=False', f'--workdir={tmp_path}/w'],
                     capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith('vit-train: error: could not download') and 'ViT-B_16.npz' in err
    assert 'Traceback' not in err


def test_fewshot_probe_is_logged_during_training(tmp_path):
    config = _tiny_config(total_steps=4, eval_every=2, checkpoint_every=0)
    config.fewshot.update(dict(dataset='digits', shots=(1, 5), max_eval=200))
    train.train_and_evaluate(config, str(tmp_path))
    records = [r for r in metrics.read_jsonl(tmp_path / 'metrics.jsonl') if 'fewshot/5shot' in r]
    assert [r['step'] for r in records] == [2, 4]
    for r in records:
        assert 0.1 < r['fewshot/5shot'] <= 1.0 and 0.0 <= r['fewshot/1shot'] <= 1.0


def test_load_trained_prefers_the_newest_of_model_npz_and_checkpoints(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    train.train_and_evaluate(_tiny_config(total_steps=3, checkpoint_every=0), workdir)
    npz = _npz(tmp_path / 'model.npz')
    assert json.loads((tmp_path / 'config.json').read_text())['model_npz_step'] == 3
    # Resumed with more steps and preempted at step 4: model.npz (step 3) is now older.
    write = _sigterm_at_step(monkeypatch, 4)
    assert train.train_and_evaluate(_tiny_config(total_steps=6, checkpoint_every=0), workdir)['step'] == 4
    _, _, params, _ = train.load_trained(workdir)
    flat = io_util.flatten(params)
    assert flat.keys() == npz.keys()
    assert any(not np.array_equal(flat[k], npz[k]) for k in npz)  # the step-4 checkpoint, not model.npz
    # Finished: model.npz (step 6) is the newest again.
    monkeypatch.setattr(metrics.MetricWriter, 'write_scalars', write)
    train.train_and_evaluate(_tiny_config(total_steps=6, checkpoint_every=0), workdir)
    flat, npz = io_util.flatten(train.load_trained(workdir)[2]), _npz(tmp_path / 'model.npz')
    assert all(np.array_equal(flat[k], npz[k]) for k in npz)


@pytest.mark.slow
def test_digits_end_to_end_reaches_95_percent(tmp_path, capsys):
    workdir = tmp_path / 'digits'
    result = main.main(['vit-train', f'--config={ROOT}/configs/digits.py', f'--workdir={workdir}',
                        '--config.progress_bar=False'])
    out = capsys.readouterr().out
    assert result['accuracy'] >= 0.95, result
    assert 'Final test accuracy after 500 steps' in out
    files = os.listdir(workdir)
    assert {'config.json', 'metrics.jsonl', 'model.npz', 'checkpoints'} <= set(files)
    assert any(f.startswith('events.out.tfevents') for f in files)
    records = metrics.read_jsonl(workdir / 'metrics.jsonl')
    assert {'train_loss', 'lr', 'grad_norm', 'img_per_sec_per_core', 'step_time_ms'} <= set(records[0])
    assert records[-1]['accuracy'] == result['accuracy']
    saved = json.loads((workdir / 'config.json').read_text())
    assert saved['dataset_info']['num_classes'] == 10 and saved['model']['hidden_size'] == 64
    assert '500' in os.listdir(workdir / 'checkpoints')
