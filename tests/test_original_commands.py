"""The original README's fine-tuning commands, with only `vit_jax/configs/` replaced by `configs/`.

Offline and small: the pretrained checkpoints are written here in the public format (with the
model shrunk by command-line overrides appended to the original command), and tfds is mocked.
"""

import csv
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from vit_jax import checkpoint, main, models
from vit_jax.checkpoint import hub

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--config.batch=8', '--config.batch_eval=8', '--config.accum_steps=1', '--config.total_steps=2',
         '--config.warmup_steps=1', '--config.pp.crop=32', '--config.progress_bar=False',
         '--config.eval_every=0', '--config.shuffle_buffer=16']
TRANSFORMER = {'transformer.num_layers': 1, 'transformer.num_heads': 2, 'transformer.mlp_dim': 16}
SMALL_VIT = ['--config.model.hidden_size=16', *(f'--config.model.{k}={v}' for k, v in TRANSFORMER.items())]


def _save(name, model, directory, size=32):
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False)['params']
    checkpoint.save(params, os.path.join(directory, f'{name}.npz'))


def _as_dataset(self, *args, **kwargs):
    """24 random JPEG-encoded images with labels of the data set's classes (tfds' own random mock
    writes invalid bounding boxes for oxford_iiit_pet; only image and label are read here)."""
    del args, kwargs
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(24):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buffer, 'JPEG')
        encoded.append(buffer.getvalue())
    labels = rng.integers(0, self.info.features['label'].num_classes, 24)
    return tf.data.Dataset.from_tensor_slices({'image': encoded, 'label': labels})


def _run(argv, workdir):
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
        return main.main(['vit-train', f'--workdir={workdir}', *argv])


@pytest.mark.slow
def test_vit_b16_cifar10(tmp_path):
    # python -m vit_jax.main --workdir=/tmp/vit-$(date +%s) \
    #     --config=$(pwd)/vit_jax/configs/vit.py:b16,cifar10 \
    #     --config.pretrained_dir='gs://vit_models/imagenet21k'
    small = models.get_model('ViT-B_16', num_classes=21843, representation_size=16, hidden_size=16,
                             **TRANSFORMER)
    _save('ViT-B_16', small, tmp_path)
    result = _run([f'--config={ROOT}/configs/vit.py:b16,cifar10', f'--config.pretrained_dir={tmp_path}',
                   *SMALL, *SMALL_VIT], tmp_path / 'wd')
    assert result['step'] == 2 and (tmp_path / 'wd' / 'checkpoint_2').is_dir()


@pytest.mark.slow
def test_mixer_base16_cifar10(tmp_path):
    # python -m vit_jax.main --workdir=/tmp/vit-$(date +%s) \
    #     --config=$(pwd)/vit_jax/configs/mixer_base16_cifar10.py \
    #     --config.pretrained_dir='gs://mixer_models/imagenet21k'
    tiny = dict(num_blocks=1, hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=16)
    _save('Mixer-B_16', models.get_model('Mixer-B_16', num_classes=1000, **tiny), tmp_path)
    result = _run([f'--config={ROOT}/configs/mixer_base16_cifar10.py', f'--config.pretrained_dir={tmp_path}',
                   *SMALL, *(f'--config.model.{k}={v}' for k, v in tiny.items())], tmp_path / 'wd')
    assert result['step'] == 2


@pytest.mark.slow
@pytest.mark.parametrize('chosen', ['R_Ti_16', 'R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0'])
def test_augreg_r_ti_16(tmp_path, chosen):
    # python -m vit_jax.main --workdir=/tmp/vit-$(date +%s) \
    #     --config=$(pwd)/vit_jax/configs/augreg.py:R_Ti_16 \
    #     --config.dataset=oxford_iiit_pet \
    #     --config.base_lr=0.01
    best = 'R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0'
    other = 'R_Ti_16-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0'
    with open(tmp_path / 'index.csv', 'w', newline='') as f:   # the original picks the best i21k final_val
        writer = csv.DictWriter(f, fieldnames=hub.AUGREG_COLUMNS)
        writer.writeheader()
        for filename, final_val in ((best, 0.5), (other, 0.4)):
            row = dict.fromkeys(hub.AUGREG_COLUMNS, '0')
            row.update(name='R+Ti/16', ds='i21k', final_val=final_val, filename=filename,
                       adapt_ds='imagenet2012', adapt_final_val=0.7,
                       adapt_filename=f'{filename}--imagenet2012-steps_20k-lr_0.03-res_384')
            writer.writerow(row)
    small = models.get_model('R+ViT-Ti_16', num_classes=21843, hidden_size=16, **TRANSFORMER)
    _save(best, small, tmp_path, size=64)
    result = _run([f'--config={ROOT}/configs/augreg.py:{chosen}', '--config.dataset=oxford_iiit_pet',
                   '--config.base_lr=0.01', f'--config.pretrained_dir={tmp_path}', *SMALL, *SMALL_VIT,
                   '--config.pp.crop=64'], tmp_path / 'wd')
    assert result['step'] == 2


def test_a_malformed_augreg_name_is_refused_before_any_download(tmp_path):
    from vit_jax.errors import UserError
    with pytest.raises(UserError, match=r"augmentation part 'augnone' does not match"):
        _run([f'--config={ROOT}/configs/augreg.py:R_Ti_16-i21k-300ep-lr_0.001-augnone-wd_0.03-do_0.0-sd_0.0',
              '--config.dataset=oxford_iiit_pet'], tmp_path / 'wd')
    assert not (tmp_path / 'wd').exists()
