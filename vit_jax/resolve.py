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

from typing import Any

import ml_collections

from vit_jax import models
from vit_jax.checkpoint import hub
from vit_jax.configs import common, inference_time
from vit_jax.errors import ConfigError

# trainer -> its defaults (every field it reads).
TRAINERS = {'train': common.get_config, 'inference_time': inference_time.get_config}
LOSSES = ('softmax_xent', 'sigmoid_xent')

# Numeric fields of a training config: key -> (type, lowest, highest, lowest allowed?). None for a
# bound means unbounded; fields whose default is None may stay None (off).
_INT, _FLOAT = (int,), (int, float)
RANGES = {
    'total_steps': (_INT, 1, None, True), 'batch': (_INT, 1, None, True),
    'batch_eval': (_INT, 1, None, True), 'accum_steps': (_INT, 1, None, True),
    'warmup_steps': (_INT, 0, None, True), 'shuffle_buffer': (_INT, 1, None, True),
    'prefetch': (_INT, 0, None, True), 'seed': (_INT, None, None, True),
    'base_lr': (_FLOAT, 0, None, True), 'linear_end': (_FLOAT, 0, None, True),
    'momentum': (_FLOAT, 0, 1, True), 'b1': (_FLOAT, 0, 1, True), 'b2': (_FLOAT, 0, 1, True),
    'eps': (_FLOAT, 0, None, False), 'grad_norm_clip': (_FLOAT, 0, None, False),
    'weight_decay': (_FLOAT, 0, None, True), 'layer_decay': (_FLOAT, 0, 1, False),
    'eval_every': (_INT, 0, None, True), 'progress_every': (_INT, 1, None, True),
    'checkpoint_every': (_INT, 0, None, True), 'keep_checkpoints': (_INT, 1, None, True),
    'pp.crop': (_INT, 1, None, True), 'pp.resize': (_INT, 1, None, True),
    'pp.holdout': (_FLOAT, 0, 1, True), 'pp.max_image_pixels': (_INT, 1, None, True),
    'aug.randaugment_layers': (_INT, 0, None, True), 'aug.randaugment_magnitude': (_FLOAT, 0, 30, True),
    'aug.mixup_alpha': (_FLOAT, 0, None, True), 'aug.cutmix_alpha': (_FLOAT, 0, None, True),
    'aug.mixup_switch_prob': (_FLOAT, 0, 1, True), 'aug.mixup_prob': (_FLOAT, 0, 1, True),
    'aug.label_smoothing': (_FLOAT, 0, 1, True),
    'fewshot.every': (_INT, 0, None, True), 'fewshot.max_eval': (_INT, 1, None, True),
    'fewshot.l2_reg': (_FLOAT, 0, None, True),
    'mesh.fsdp': (_INT, 1, None, True), 'mesh.fsdp_min_size': (_INT, 0, None, True),
}
# The same for trainer='inference_time'.
INFERENCE_TIME_RANGES = {key: (_INT, 1, None, True)
                         for key in ('batch', 'num_classes', 'image_size', 'steps')}


def _check_range(config: ml_collections.ConfigDict, key: str, ranges: dict = RANGES) -> None:
    types, low, high, low_allowed = ranges[key]
    node = config
    for part in key.split('.'):
        if part not in node:
            return
        node = node[part]
    value = node
    if value is None:
        return
    expected = 'an integer' if types == _INT else 'a number'
    if isinstance(value, bool) or not isinstance(value, types) or value != value:
        raise ConfigError(f'config.{key}={value!r} must be {expected} (--config.{key}=...)')
    if low is not None and (value < low or (value == low and not low_allowed)):
        raise ConfigError(f'config.{key}={value!r} must be {">=" if low_allowed else ">"} {low}')
    if high is not None and value > high:
        raise ConfigError(f'config.{key}={value!r} must be <= {high}')


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
        for key in INFERENCE_TIME_RANGES:
            _check_range(config, key, INFERENCE_TIME_RANGES)
        if config.model_name not in models.MODEL_CONFIGS:
            raise ConfigError(f'config.model_name={config.model_name!r} is not one of '
                              f'{", ".join(models.MODEL_CONFIGS)}')
        return config
    if config.total_steps is None:
        raise ConfigError('config.total_steps is not set (set it, or start from a data set preset: '
                          'vit_jax.configs.common.with_dataset)')
    for key in RANGES:
        _check_range(config, key)
    if config.batch % config.accum_steps:
        raise ConfigError(f'config.batch={config.batch} is not divisible by '
                          f'config.accum_steps={config.accum_steps}')
    described = models.family(config.model)
    if described == 'LiT':
        raise ConfigError(f'config.model is the LiT image-text model {config.model.get("model_name")!r}: '
                          'vit-train trains image classifiers (ViT, hybrids, Mixer); LiT models classify '
                          'zero-shot (vit-zeroshot)')
    if config.model_type != described:
        raise ConfigError(f'config.model_type={config.model_type!r} but config.model describes a {described} '
                          f'model ({config.model.get("model_name")!r}); set --config.model_type={described}')
    if config.model_or_filename:
        hub.check_augreg_name(str(config.model_or_filename))
    models.check_image_size(models.build_model(config.model, None, inference=True), config.pp.crop,
                            'config.pp.crop', partial_patches=bool(config.pp.partial_patches))
    data = config.mesh.data
    if data != -1 and (isinstance(data, bool) or not isinstance(data, int) or data < 1):
        raise ConfigError(f'config.mesh.data={data!r} must be -1 (all devices) or a positive integer')
    if config.loss not in LOSSES:
        raise ConfigError(f'config.loss={config.loss!r} is unknown; expected one of {", ".join(LOSSES)}')
    return config


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`validate(complete(config))`: the config a run uses, every value present and checked."""
    return validate(complete(config))
