"""The README's main job end to end: configs/digits.py reaches its accuracy, on the built-in digits
and on a folder of PNG files holding the same digits, identically (no config edit: every
preprocessing value is in the config, none depends on the data set's name)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vit_jax import main, metrics, predict
from vit_jax.checkpoint import loader
from vit_jax.configs.common import DATASET_PRESETS
from vit_jax.input_pipeline import digits_splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(workdir, *overrides):
    return main.main(['vit-train', f'--config={ROOT}/configs/digits.py', f'--workdir={workdir}',
                      '--config.progress_bar=False', *overrides])


@pytest.fixture(scope='module')
def builtin(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('digits')
    return workdir, _train(workdir)


@pytest.mark.slow
def test_digits_end_to_end_reaches_95_percent(builtin, capsys):
    workdir, result = builtin
    assert result['accuracy'] >= 0.95, result
    files = os.listdir(workdir)
    assert {'config.json', 'metrics.jsonl', 'model.npz', 'checkpoint_500'} <= set(files)
    assert any(f.startswith('events.out.tfevents') for f in files)
    records = metrics.read_jsonl(str(workdir / 'metrics.jsonl'))
    assert {'train_loss', 'lr', 'grad_norm', 'img_per_sec_per_core', 'step_time_ms'} <= set(records[0])
    assert records[-1]['accuracy'] == result['accuracy']
    saved = json.loads((workdir / 'config.json').read_text())
    assert saved['dataset_info']['num_classes'] == 10 and saved['model']['hidden_size'] == 64
    assert saved['pp']['flip'] is False and saved['model']['layer_norm_eps'] == 1e-6   # every value shown


@pytest.mark.slow
def test_the_demo_classifies_its_ten_samples_right(builtin, tmp_path):
    """What scripts/demo.sh shows after training: vit-predict on scripts/digits_samples.py's images."""
    workdir, _ = builtin
    subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'digits_samples.py'), str(tmp_path)],
                   check=True)
    files = sorted(str(p) for p in tmp_path.glob('digit_*_heldout_*.png'))
    doc = predict.predict_files(loader.load_model(str(workdir)), files, k=1)
    got = [(os.path.basename(r['path'])[6], r['predictions'][0]['label']) for r in doc['results']]
    assert got == [(str(d), str(d)) for d in range(10)]
    assert min(r['predictions'][0]['probability'] for r in doc['results']) > 0.95   # not borderline


@pytest.mark.slow
def test_the_same_config_on_a_folder_of_digit_pngs_matches_the_builtin_source(tmp_path):
    (train_x, train_y), (test_x, test_y), names = digits_splits(DATASET_PRESETS['digits'].pp.holdout)
    for split, xs, ys in (('train', train_x, train_y), ('test', test_x, test_y)):
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            path = tmp_path / 'digits' / split / names[y] / f'{i:04d}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(x, np.uint8)).save(path)
    short = ('--config.total_steps=60', '--config.eval_every=60', '--config.checkpoint_every=60')
    builtin = _train(tmp_path / 'builtin', *short)
    result = _train(tmp_path / 'wd', f'--config.dataset={tmp_path / "digits"}', *short)
    assert result['step'] == 60
    # The same pixels in the same order with the same seeds: the same run.
    assert result['accuracy'] == builtin['accuracy'] and result['eval_loss'] == builtin['eval_loss']
