"""Resolving an experiment config: every field present (defaults written in), then checked.

`complete(config)` returns the config with every field of its trainer's defaults
(`vit_jax.configs.common.get_config()` for training, `vit_jax.configs.inference_time.get_config()`
for trainer='inference_time'; a config written for the original code, e.g. with a partial `pp`,
gets the missing fields at their defaults) and every field of the model
(`vit_jax.models.complete_config`); a field that does not exist anywhere is a ConfigError naming
it. `validate(config)` checks values (one-line ConfigErrors naming the key and value). `resolve`
= both: it is what `vit-train` prints and what `train_and_evaluate` uses, so every value the run
uses is visible and overridable.
"""

from __future__ import annotations

import logging
from typing import Any

import ml_collections

from vit_jax import models
from vit_jax.checkpoint import hub
from vit_jax.configs import common, inference_time
from vit_jax.errors import ConfigError

logger = logging.getLogger(__name__)
# trainer -> its defaults (every field it reads).
TRAINERS = {'train': common.get_config, 'inference_time': inference_time.get_config}
LOSSES = ('softmax_xent', 'sigmoid_xent')


def _merge(defaults: ml_collections.ConfigDict, given: Any, prefix: str) -> None:
    for key, value in given.items():
        name = f'{prefix}{key}'
        if key not in defaults:
            raise ConfigError(f'config field {name!r} does not exist (vit_jax/configs/ lists every field of '
                              'each trainer; check the spelling)')
        current = defaults[key]
        if key != 'model' and isinstance(current, ml_collections.ConfigDict) and \
                isinstance(value, ml_collections.ConfigDict | dict):
            _merge(current, value, f'{name}.')
        else:
            defaults[key] = value


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A new config: the defaults, overridden by every field of `config`, the model completed."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f'the config must be an ml_collections.ConfigDict, got {type(config).__name__}')
    given = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
    trainer = given.get('trainer', 'train')
    if trainer not in TRAINERS:
        raise ConfigError(f'config.trainer={trainer!r} is unknown; expected one of {", ".join(TRAINERS)}')
    out = TRAINERS[trainer]()   # a fresh copy; its placeholders keep their types for overrides
    out.unlock()
    _merge(out, ml_collections.ConfigDict(given), '')
    if trainer != 'train':
        return out
    if out.model is None:
        raise ConfigError('config.model is not set (e.g. config.model = '
                          'vit_jax.configs.models.get_b16_config())')
    out.model = models.complete_config(out.model)
    return out


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks the values a run needs; one-line ConfigErrors naming the key and the value."""
    if config.trainer == 'inference_time':
        for key in ('batch', 'num_classes', 'image_size', 'steps'):
            if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
                raise ConfigError(f'config.{key}={config[key]!r} must be a positive integer '
                                  f'(--config.{key}=...)')
        if config.model_name not in models.MODEL_CONFIGS:
            raise ConfigError(f'config.model_name={config.model_name!r} is not one of '
                              f'{", ".join(models.MODEL_CONFIGS)}')
        return config
    if config.total_steps is None:
        raise ConfigError('config.total_steps is not set (set it, or start from a data set preset: '
                          'vit_jax.configs.common.with_dataset)')
    for key in ('total_steps', 'batch', 'batch_eval', 'accum_steps'):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f'config.{key}={value!r} must be a positive integer')
    if config.batch % config.accum_steps:
        raise ConfigError(f'config.batch={config.batch} is not divisible by '
                          f'config.accum_steps={config.accum_steps}')
    described = models.family(config.model)
    if config.model_type != described:
        raise ConfigError(f'config.model_type={config.model_type!r} but config.model describes a {described} '
                          f'model ({config.model.get("model_name")!r}); set --config.model_type={described}')
    if config.warmup_steps >= config.total_steps and config.decay_type != 'constant':
        logger.warning('warmup_steps=%d >= total_steps=%d: the learning rate only warms up and never decays',
                       config.warmup_steps, config.total_steps)
    if config.model_or_filename:
        hub.check_augreg_name(str(config.model_or_filename))
    if config.loss not in LOSSES:
        raise ConfigError(f'config.loss={config.loss!r} is unknown; expected one of {", ".join(LOSSES)}')
    return config


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`validate(complete(config))`: the config a run uses, every value present and checked."""
    return validate(complete(config))
