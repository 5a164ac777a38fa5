"""The config is the single source of truth: every field resolved, visible and overridable."""

import os

import ml_collections
import pytest

from vit_jax import config_util, main, resolve
from vit_jax.configs import common, models
from vit_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, 'configs', 'digits.py')


def test_a_config_written_for_the_original_gets_every_missing_field_at_its_default():
    config = common.get_config()
    config.model = models.get_testing_config()
    config.total_steps = 1
    # As the original's train_test does: a pp with only some of the fields.
    config.pp = ml_collections.ConfigDict({'train': 'train[:98%]', 'test': 'test', 'crop': 224})
    resolved = resolve.resolve(config)
    assert resolved.pp.crop == 224 and resolved.pp.train == 'train[:98%]'
    assert resolved.pp.flip is True and resolved.pp.train_crop == 'inception' and resolved.pp.holdout == 0.1
    # Every model field, at the module's defaults (the original numerics).
    assert resolved.model.layer_norm_eps == 1e-6 and resolved.model.gelu_approximate is True
    assert resolved.model.param_dtype == 'float32' and resolved.model.transformer.stochastic_depth == 0.0
    assert resolved.model.hidden_size == 10


def test_unknown_fields_and_bad_values_are_named():
    config = common.with_dataset(common.get_config(), 'digits')
    config.model = models.get_testing_config()
    config.model.no_such_field = 1
    with pytest.raises(ConfigError, match='no_such_field is not a VisionTransformer field'):
        resolve.resolve(config)
    config = ml_collections.ConfigDict(config.to_dict())
    del config.model['no_such_field']
    config.typo_field = 3
    with pytest.raises(ConfigError, match="config field 'typo_field' does not exist"):
        resolve.resolve(config)
    del config['typo_field']
    config.batch = 0
    with pytest.raises(ConfigError, match='config.batch=0 must be >= 1'):
        resolve.resolve(config)
    config.batch, config.total_steps = 128, None
    with pytest.raises(ConfigError, match='config.total_steps is not set'):
        resolve.resolve(config)
    with pytest.raises(ConfigError, match='config field .pp.nope. is missing'):
        config_util.get(resolve.resolve(common.with_dataset(config, 'digits')), 'pp.nope')


def test_every_printed_value_can_be_overridden_on_the_command_line(tmp_path):
    config, workdir = main.parse(['vit-train', f'--config={DIGITS}', f'--workdir={tmp_path}',
                                  '--config.pp.flip=True', '--config.model.remat=True',
                                  '--config.model.layer_norm_eps=1e-12', '--config.pretrained_path=ViT-B_16',
                                  '--config.model.transformer.stochastic_depth=0.1', '--config.pp.resize=20'])
    assert workdir == str(tmp_path)
    assert config.pp.flip is True and config.model.remat is True and config.model.layer_norm_eps == 1e-12
    assert config.pretrained_path == 'ViT-B_16' and config.model.transformer.stochastic_depth == 0.1
    assert config.pp.resize == 20 and config.dataset == 'digits'
    # The digits preset is in the config itself (nothing looks it up by data set name).
    plain, _ = main.parse(['vit-train', f'--config={DIGITS}', f'--workdir={tmp_path}'])
    assert plain.pp.flip is False and plain.pp.train_crop == 'random' and plain.pp.holdout == 0.2
    with pytest.raises(ConfigError, match=r"--config.pp.flipp: the config has no field 'pp.flipp'; did you "
                                          r"mean 'pp.flip'\?"):
        main.parse(['vit-train', f'--config={DIGITS}', f'--workdir={tmp_path}', '--config.pp.flipp=False'])
    with pytest.raises(ConfigError, match='unknown argument'):
        main.parse(['vit-train', f'--config={DIGITS}', f'--workdir={tmp_path}', '--steps=3'])
    # `--config.x VALUE` as absl flags allow (a negative number is a value; a lone boolean stays one)
    spaced, _ = main.parse(['vit-train', '--config', DIGITS, '--workdir', str(tmp_path),
                            '--config.total_steps', '7', '--config.pp.flip', '--config.mesh.data', '-1',
                            '--config.seed', '3'])
    assert (spaced.total_steps, spaced.pp.flip, spaced.mesh.data, spaced.seed) == (7, True, -1, 3)


def test_config_files_load_without_path_tricks(tmp_path):
    bad = tmp_path / 'raises.py'
    bad.write_text('def get_config(arg):\n    raise KeyError(arg)\n')
    with pytest.raises(ConfigError, match=r"raises.py:x: get_config\('x'\) raised KeyError: x"):
        config_util.load_file(f'{bad}:x')
    none = tmp_path / 'none.py'
    none.write_text('x = 1\n')
    with pytest.raises(ConfigError, match='has no get_config'):
        config_util.load_file(str(none))
    for name in sorted(os.listdir(os.path.join(ROOT, 'configs'))):
        source = open(os.path.join(ROOT, 'configs', name)).read() if name.endswith('.py') else ''
        assert 'sys.path' not in source, name
