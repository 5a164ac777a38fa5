"""The training loop end to end: exact resume, the workdir's single writer and damaged checkpoints,
preemption and full-disk exit codes, few-shot probe, clear errors."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.faults import full_disk
from vit_jax import config_util, main, metrics, train, trees
from vit_jax.checkpoint import workdir as workdir_lib
from vit_jax.errors import TrainingError, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, 'configs', 'digits.py')
# The tiny run of `_tiny_config`, as vit-train command-line overrides.
TINY_FLAGS = ['--config.pp.crop=8', '--config.pp.resize=9', '--config.model.hidden_size=16',
              '--config.model.patches.size=(4,4)', '--config.model.transformer.num_layers=1',
              '--config.model.transformer.num_heads=2', '--config.model.transformer.mlp_dim=16',
              '--config.batch=32', '--config.batch_eval=128', '--config.warmup_steps=2',
              '--config.progress_bar=False', '--config.shuffle_buffer=100']


def _tiny_config(**overrides):
    """Digits at 8x8 with a one-block ViT: a few seconds per run."""
    config = config_util.load_file(DIGITS)
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


def _sigterm_at(at: int):
    """A hook that sends this process SIGTERM (a preemption) right after step `at`."""
    def hook(step):
        if step == at:
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def _steps(workdir, key='train_loss'):
    return [r['step'] for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if key in r]


@pytest.mark.slow
def test_exact_resume_after_sigterm_and_after_a_crash(tmp_path):
    full = train.train_and_evaluate(_tiny_config(), str(tmp_path / 'full'))
    assert full['step'] == 6 and not full['preempted']

    # Preempted: SIGTERM arrives during step 2; the state is saved there, no model.npz yet.
    resumed = str(tmp_path / 'resumed')
    part = train.train_and_evaluate(_tiny_config(), resumed, hooks=[_sigterm_at(2)])
    assert part['preempted'] and part['step'] == 2
    assert not (tmp_path / 'resumed' / 'model.npz').exists()
    assert (tmp_path / 'resumed' / 'checkpoint_2').is_dir()
    assert not (tmp_path / 'resumed' / 'LOCK').exists()     # released

    # Crashed at step 5 (last checkpoint: 3): its rows for steps 4-5 are dropped on resume.
    def crash(step):
        if step == 5:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(_tiny_config(), resumed, hooks=[crash])
    assert _steps(resumed)[-1] == 5
    final = train.train_and_evaluate(_tiny_config(), resumed)
    assert final['step'] == 6

    a, b = _npz(tmp_path / 'full' / 'model.npz'), _npz(tmp_path / 'resumed' / 'model.npz')
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bitwise
    assert final['accuracy'] == full['accuracy']
    # Every step logged exactly once, in order, as in the uninterrupted run.
    assert _steps(resumed) == _steps(str(tmp_path / 'full')) == [1, 2, 3, 4, 5, 6]
    assert _steps(resumed, 'accuracy') == [3, 6]
    # The workdir loads back for prediction.
    saved, params = workdir_lib.load_trained(resumed)
    assert saved['dataset_info']['class_names'] == [str(i) for i in range(10)]
    assert saved['model']['hidden_size'] == 16 and trees.flatten(params).keys() == a.keys()


def _damage(checkpoint_dir):
    """Truncates every array data file of a checkpoint (what a dying disk or a bad copy leaves)."""
    damaged = 0
    for root, _, files in os.walk(checkpoint_dir):
        for f in files:
            if '/d/' in os.path.join(root, f) + '/' or root.endswith('/d'):
                with open(os.path.join(root, f), 'r+b') as fh:
                    fh.truncate(8)
                damaged += 1
    assert damaged


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    workdir = str(tmp_path)
    train.train_and_evaluate(_tiny_config(checkpoint_every=2, total_steps=4), workdir)
    _damage(tmp_path / 'checkpoint_4')
    with caplog.at_level(logging.WARNING):
        result = train.train_and_evaluate(_tiny_config(checkpoint_every=2, total_steps=5), workdir)
    assert result['step'] == 5
    assert any('checkpoint_4 is damaged' in r.getMessage() and 'damaged_checkpoint_4' in r.getMessage()
               for r in caplog.records)
    assert (tmp_path / 'damaged_checkpoint_4').is_dir() and (tmp_path / 'checkpoint_5').is_dir()
    # Resumed from step 2: steps 3-4 were trained again, each logged once.
    assert _steps(workdir) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    workdir = tmp_path / 'wd'
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        lock = {'host': socket.gethostname(), 'pid': holder.pid, 'token': 'x', 'heartbeat': 0}
        (workdir / 'LOCK').write_text(json.dumps(lock))
        with pytest.raises(UserError, match=rf'in use by vit-train PID {holder.pid} on this host'):
            train.train_and_evaluate(_tiny_config(total_steps=2, warmup_steps=1), str(workdir))
        assert sorted(os.listdir(workdir)) == ['LOCK']     # nothing of the refused run was written
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level(logging.WARNING):
        result = train.train_and_evaluate(_tiny_config(total_steps=2, warmup_steps=1), str(workdir))
    assert result['step'] == 2
    assert any(f'stale lock of PID {holder.pid}' in r.getMessage() for r in caplog.records)
    # Another host's lock counts as held while its heartbeat is fresh.
    lock = {'host': 'other-host', 'pid': 1, 'token': 'y', 'heartbeat': 1e12}
    (workdir / 'LOCK').write_text(json.dumps(lock))
    with pytest.raises(UserError, match=r'PID 1 on host other-host'):
        train.train_and_evaluate(_tiny_config(total_steps=3), str(workdir))


@pytest.mark.slow
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
    # The original's pretrained_dir: {pretrained_dir}/{model_name}.npz.
    os.rename(tmp_path / 'pre' / 'model.npz', tmp_path / 'pre' / 'ViT-digits.npz')
    config = _tiny_config(total_steps=1, warmup_steps=0, base_lr=0.0, checkpoint_every=0,
                          pretrained_dir=str(tmp_path / 'pre'))
    train.train_and_evaluate(config, str(tmp_path / 'ft2'))
    np.testing.assert_array_equal(_npz(tmp_path / 'ft2' / 'model.npz')['embedding/kernel'],
                                  pretrained['embedding/kernel'])


@pytest.mark.slow
def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    workdir = str(tmp_path / 'wd')
    train.train_and_evaluate(_tiny_config(total_steps=3, base_lr=0.0), workdir)
    with pytest.raises(TrainingError, match='non-finite loss.*last good checkpoint: step 3'):
        train.train_and_evaluate(_tiny_config(base_lr=1e38, warmup_steps=0), workdir)
    assert sorted(d for d in os.listdir(workdir) if d.startswith('checkpoint_')) == ['checkpoint_3']


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main.run(['vit-train', *argv])
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    code, err = _cli([f'--config={DIGITS}', '--config.no_such_key=1', f'--workdir={tmp_path}'], capsys)
    assert code == 2 and 'no_such_key' in err and len(err.splitlines()) == 1

    code, err = _cli([f'--config={DIGITS}', f'--config.dataset={tmp_path}/missing',
                      f'--workdir={tmp_path}/w', *TINY_FLAGS], capsys)
    assert code == 2 and 'missing' in err and len(err.splitlines()) == 1

    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    code, err = _cli([f'--config={DIGITS}', f'--workdir={blocker}/w', *TINY_FLAGS], capsys)
    assert code == 2 and 'not writable' in err and len(err.splitlines()) == 1
    assert blocker.read_text() == 'not a directory'

    code, err = _cli([f'--config={tmp_path}/nope.py', f'--workdir={tmp_path}'], capsys)
    assert code == 2 and 'nope.py' in err and len(err.splitlines()) == 1

    code, err = _cli([f'--workdir={tmp_path}'], capsys)
    assert code == 2 and '--config is required' in err

    bad = tmp_path / 'bad.py'
    bad.write_text('def get_config():\n    return {"batch": 8}\n')
    code, err = _cli([f'--config={bad}', f'--workdir={tmp_path}'], capsys)
    assert code == 2 and 'returned dict, not an ml_collections.ConfigDict' in err


@pytest.mark.slow
def test_cli_failed_download_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """A catalogue name with an empty cache and no network: the URL and what to do, no traceback."""
    monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('VIT_JAX_HUB_URL', 'http://127.0.0.1:9')  # a closed port: never the network
    code, err = _cli([f'--config={DIGITS}', '--config.pretrained_path=ViT-B_16', '--config.total_steps=2',
                      '--config.warmup_steps=1', '--config.progress_bar=False', f'--workdir={tmp_path}/w'],
                     capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith('vit-train: error: could not download') and 'ViT-B_16.npz' in err
    assert 'Traceback' not in err


def _vit_train(args, command=(sys.executable, '-m', 'vit_jax.main')):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
    return subprocess.Popen([*command, f'--config={DIGITS}', *TINY_FLAGS, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


@pytest.mark.slow
def test_sigterm_saves_and_exits_75_then_the_same_command_resumes(tmp_path):
    args = [f'--workdir={tmp_path}', '--config.total_steps=100000', '--config.checkpoint_every=0']
    proc = _vit_train(args)
    for line in proc.stdout:
        if line.startswith('Training '):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert 'rerun the same command to resume' in out
    step = max(int(d.split('_')[1]) for d in os.listdir(tmp_path) if d.startswith('checkpoint_'))
    assert step >= 1 and not (tmp_path / 'model.npz').exists() and not (tmp_path / 'LOCK').exists()
    proc = _vit_train([f'--workdir={tmp_path}', f'--config.total_steps={step + 2}',
                       '--config.checkpoint_every=0'])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert f'steps {step} -> {step + 2}' in out and (tmp_path / 'model.npz').exists()


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_workdir_and_keeps_what_was_written(tmp_path):
    """Writes beyond 3 kB fail (RLIMIT_FSIZE: what a full disk does to a write) inside Orbax's
    background save threads: one line naming the workdir and the reason, no traceback, exit 2."""
    proc = _vit_train([f'--workdir={tmp_path}', '--config.total_steps=4', '--config.checkpoint_every=2'],
                      command=full_disk(3000, 'vit_jax.main'))
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f'vit-train: error: {tmp_path}: saving a checkpoint failed: File too large'], err[-3000:]
    saved = json.loads((tmp_path / 'config.json').read_text())
    assert saved['total_steps'] == 4 and not (tmp_path / 'LOCK').exists()


@pytest.mark.slow
def test_fewshot_probe_is_logged_during_training(tmp_path):
    config = _tiny_config(total_steps=4, eval_every=2, checkpoint_every=0)
    config.fewshot.update(dict(dataset='digits', shots=(1, 5), max_eval=200))
    train.train_and_evaluate(config, str(tmp_path))
    records = [r for r in metrics.read_jsonl(str(tmp_path / 'metrics.jsonl')) if 'fewshot/5shot' in r]
    assert [r['step'] for r in records] == [2, 4]
    for r in records:
        assert 0.1 < r['fewshot/5shot'] <= 1.0 and 0.0 <= r['fewshot/1shot'] <= 1.0


@pytest.mark.slow
def test_load_trained_prefers_the_newest_of_model_npz_and_checkpoints(tmp_path, caplog):
    workdir = str(tmp_path)
    train.train_and_evaluate(_tiny_config(total_steps=3, checkpoint_every=0), workdir)
    npz = _npz(tmp_path / 'model.npz')
    assert json.loads((tmp_path / 'config.json').read_text())['model_npz_step'] == 3
    # Resumed with more steps and preempted at step 4: model.npz (step 3) is now older.
    with caplog.at_level(logging.WARNING, logger='vit_jax.train'):
        result = train.train_and_evaluate(_tiny_config(total_steps=6, checkpoint_every=0), workdir,
                                          hooks=[_sigterm_at(4)])
    assert result['step'] == 4 and result['preempted']
    changed = [r.getMessage() for r in caplog.records if 'differs from its config.json' in r.getMessage()]
    assert len(changed) == 1 and changed[0].endswith(': total_steps 3 -> 6'), changed   # said, named, once
    flat = trees.flatten(workdir_lib.load_trained(workdir)[1])
    assert flat.keys() == npz.keys()
    assert any(not np.array_equal(flat[k], npz[k]) for k in npz)  # the step-4 checkpoint, not model.npz
    # Finished: model.npz (step 6) is the newest again.
    train.train_and_evaluate(_tiny_config(total_steps=6, checkpoint_every=0), workdir)
    flat, npz = trees.flatten(workdir_lib.load_trained(workdir)[1]), _npz(tmp_path / 'model.npz')
    assert all(np.array_equal(flat[k], npz[k]) for k in npz)


@pytest.mark.slow
def test_fine_tuning_from_a_workdir_says_what_it_loaded_and_refuses_another_architecture(tmp_path, capsys):
    from vit_jax.errors import CheckpointError
    pre = str(tmp_path / 'pre')
    train.train_and_evaluate(_tiny_config(total_steps=1, eval_every=0, checkpoint_every=0), pre)
    capsys.readouterr()
    # configs/custom.py:SOURCE,FOLDER takes the source's architecture and resolution.
    custom = config_util.load_file(f'{ROOT}/configs/custom.py:{pre},digits')
    assert custom.model.hidden_size == 16 and custom.model.transformer.num_layers == 1
    assert custom.pp.crop == 8 and custom.pretrained_path == pre and custom.batch == 64
    config = _tiny_config(total_steps=1, eval_every=0, checkpoint_every=0, pretrained_path=pre)
    train.train_and_evaluate(config, str(tmp_path / 'ft'))
    loaded = [line for line in capsys.readouterr().out.splitlines() if line.startswith('Loaded ')]
    assert loaded == [f'Loaded 22 of 24 tensors from {pre} (vit-train workdir); head re-initialised to '
                      "zeros for 10 classes (the checkpoint's: 10 classes)"], loaded
    # Another architecture: one line naming the facts; the run leaves no (empty) workdir behind.
    config.model.update(dict(hidden_size=32))
    with pytest.raises(CheckpointError, match=r'has another architecture than config.model \(ViT-digits\): '
                                              r'hidden_size 16 \(config.model: 32\); set config.model'):
        train.train_and_evaluate(config, str(tmp_path / 'bad'))
    assert not os.path.exists(tmp_path / 'bad')
