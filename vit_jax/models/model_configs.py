"""Model configs -> Flax modules: the named configs, every field of a module, building one.

`MODEL_CONFIGS` is the original's table (`vit_jax.configs.models`); `get_config(name,
**overrides)` returns a mutable copy, `family(model_config)` says which model a config describes
('ViT', also the hybrids, 'Mixer' or 'LiT'), `complete_config(model_config)` adds every field of that
module at its default (so a resolved experiment config shows, and can override, all of them),
and `build_model(model_config, num_classes)` builds the module from any saved config — the one
place that does.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections

from vit_jax.configs.models import MODEL_CONFIGS
from vit_jax.errors import ConfigError
from vit_jax.models.lit import LitModel
from vit_jax.models.mixer import MlpMixer
from vit_jax.models.vit import TRANSFORMER_FIELDS, Encoder, VisionTransformer

MODULES = {'ViT': VisionTransformer, 'Mixer': MlpMixer, 'LiT': LitModel}
# Sub-config fields of each module and their fields.
_SUBCONFIGS = {
    'ViT': {
        'transformer': TRANSFORMER_FIELDS,
        'patches': ('size',),
        'resnet': ('num_layers', 'width_factor'),
    },
    'Mixer': {'patches': ('size',)},
    'LiT': {},   # its `image` config is checked by VisionTransformer, `text` by its tower
}
# A LiT model's sub-configs stay ConfigDicts (attribute access, as the original: `model.pp.max_len`).
_LIT_SUBCONFIGS = ('image', 'text', 'pp')
_UNSET: Any = object()


def _top_fields(name: str) -> tuple[str, ...]:
    return tuple(f for f in MODULES[name].__dataclass_fields__ if f not in ('parent', 'name', 'num_classes'))


def family(model_config: Any) -> str:
    """Which model a config describes: 'Mixer' (it has `num_blocks` / `tokens_mlp_dim`), 'LiT' (it has
    `text_model`) or 'ViT' (the vision transformers, hybrids included)."""
    fields = set(_plain(model_config) or ())
    if 'text_model' in fields:
        return 'LiT'
    if fields & {'num_blocks', 'tokens_mlp_dim', 'channels_mlp_dim', 'hidden_dim'}:
        return 'Mixer'
    return 'ViT'


def _module(model_config: Any) -> tuple[str, type]:
    name = family(model_config)
    if name not in MODULES:
        raise ConfigError(f'{name} models are not supported yet (model {model_config.get("model_name")!r})')
    return name, MODULES[name]
# Choices of a training run (compute/storage dtype, memory, kernels, regularisation) that
# inference does not inherit: a bf16 run with cuDNN attention predicts in float32 anywhere.
INFERENCE_DROPS = ('dtype', 'param_dtype', 'remat', 'scan_layers', 'attention_impl', 'fast_weight_grad')
_INFERENCE_ZERO = ('dropout_rate', 'attention_dropout_rate', 'stochastic_depth')


def get_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """A mutable copy of `MODEL_CONFIGS[name]`, with overrides applied.

    Overrides are top-level fields (`dtype='bfloat16'`, `scan_layers=True`) or dotted keys
    for nested fields (`**{'transformer.dropout_rate': 0.1}`).
    """
    if name not in MODEL_CONFIGS:
        raise ConfigError(f'unknown model {name!r}; known models: {", ".join(MODEL_CONFIGS)}')
    config = ml_collections.ConfigDict(copy.deepcopy(MODEL_CONFIGS[name].to_dict()))
    for key, value in overrides.items():
        parent, _, leaf = key.rpartition('.')
        node = config
        for part in filter(None, parent.split('.')):
            if part not in node or node[part] is None:
                raise ConfigError(f'override {key!r}: {part!r} is not a field of model {name!r}')
            node = node[part]
        node[leaf] = value
    return config


def _default(module: type, field: str) -> Any:
    value = module.__dataclass_fields__[field].default
    if hasattr(value, 'dtype') and not isinstance(value, int | float | bool):   # jnp.float32
        return jnp.dtype(value).name
    return value


def complete_config(model_config: Any) -> ml_collections.ConfigDict:
    """`model_config` with every field of its module (and the transformer's sub-fields) present.

    Fields it lacks get the module's default (dtypes as names, e.g. 'float32'), so that printing
    the config shows every value the model uses and `--config.model.<field>=...` can set any of
    them. Fields the module does not have are a ConfigError naming them.
    """
    plain = _plain(model_config)
    if not isinstance(plain, dict):
        raise ConfigError(f'the model config must be a mapping, got {type(model_config).__name__}')
    name, module = _module(plain)
    _check_fields(name, plain)
    for field in _top_fields(name):
        if module.__dataclass_fields__[field].default is not dataclasses.MISSING:   # required ones stay so
            plain.setdefault(field, _default(module, field))
    if name == 'ViT' and isinstance(plain.get('transformer'), dict):
        for field in _SUBCONFIGS['ViT']['transformer']:
            plain['transformer'].setdefault(field, _default(Encoder, field))
    return ml_collections.ConfigDict(plain)


def _plain(config: Any) -> Any:
    """ConfigDicts (also nested inside dicts) -> plain dicts, copied."""
    if hasattr(config, 'to_dict'):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {k: _plain(v) for k, v in config.items()}
    return config


def _check_fields(family_name: str, kwargs: dict) -> None:
    module = MODULES[family_name].__name__
    for section, allowed in (('', _top_fields(family_name)), *_SUBCONFIGS[family_name].items()):
        fields = kwargs if not section else kwargs.get(section)
        if isinstance(fields, dict):
            unknown = sorted(set(fields) - set(allowed))
            if unknown:
                name = f'{section}.{unknown[0]}' if section else unknown[0]
                raise ConfigError(f'model field {name} is not a {section or module} field '
                                  f'(known: {", ".join(sorted(allowed))})')


def build_model(model_config: Any, num_classes: int | None, *, inference: bool = False
                ) -> VisionTransformer | MlpMixer | LitModel:
    """The module of a model config (ConfigDict, or a dict as read from JSON): `family` picks it.

    Dtype names ('bfloat16') become dtypes; a field the model does not have is a ConfigError
    naming it. `inference=True` drops `INFERENCE_DROPS` and zeroes the dropout rates, so that
    a training run's choices do not follow the model into evaluation or serving.
    """
    kwargs = _plain(model_config)
    if not isinstance(kwargs, dict):
        raise ConfigError(f'the model config must be a mapping, got {type(model_config).__name__}')
    name, module = _module(kwargs)
    _check_fields(name, kwargs)
    if name == 'LiT':
        if num_classes is not None:
            raise ConfigError(f'LiT models have no num_classes (their heads are out_dim), got {num_classes}')
        for key in _LIT_SUBCONFIGS:
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = ml_collections.ConfigDict(kwargs[key])
        if isinstance(kwargs.get('out_dim'), list):
            kwargs['out_dim'] = tuple(kwargs['out_dim'])
        return module(**kwargs)
    if inference:
        for key in INFERENCE_DROPS:
            kwargs.pop(key, None)
        for key in _INFERENCE_ZERO:
            if isinstance(kwargs.get('transformer'), dict) and key in kwargs['transformer']:
                kwargs['transformer'][key] = 0.0
    for key in ('dtype', 'param_dtype'):
        if isinstance(kwargs.get(key), str):
            try:
                kwargs[key] = jnp.dtype(kwargs[key])
            except TypeError:
                raise ConfigError(f'model field {key}={kwargs[key]!r} is not a dtype name') from None
    model = module(num_classes=num_classes, **kwargs)
    if isinstance(model, VisionTransformer):
        try:
            model.check_config()
        except ValueError as e:
            raise ConfigError(f'model config: {e}') from None
    return model


def get_model(name: str, num_classes: int | None = _UNSET, **overrides: Any
              ) -> VisionTransformer | MlpMixer | LitModel:
    """Builds the module of a named config (overrides as in `get_config`), as the original's get_model:
    classifiers get `num_classes` (default 1000), LiT models take none."""
    config = get_config(name, **overrides)
    if num_classes is _UNSET:
        num_classes = None if family(config) == 'LiT' else 1000
    return build_model(config, num_classes)


def check_image_size(model: Any, size: int, what: str, *, partial_patches: bool = False) -> None:
    """ConfigError unless `model`'s patches tile `size`-pixel images (`what` names where the size came
    from). With `partial_patches` a side that is not a multiple of the patch size loses its last
    pixels, as in the original (its patch embedding is a VALID convolution; e.g. ViT-H/14 at the
    original configs' 384 px sees the top-left 378x378). A ResNet stem pads its input and a Mixer
    pads its patches (SAME), so for them only the smallest size matters."""
    stride = max(model.patch_stride)
    if size < stride:
        raise ConfigError(f"{what}={size} is smaller than the model's {stride}-pixel patches")
    if partial_patches or not isinstance(model, VisionTransformer):
        return
    patch = max(model.patches['size'])
    stem = stride // patch
    grid = -(-size // stem)    # the ResNet stem's output side (1 without a stem)
    if grid % patch:
        lower, upper = grid // patch * stride, (grid // patch + 1) * stride
        raise ConfigError(f"{what}={size} is not a multiple of the model's {stride}-pixel patches: the last "
                          f'{grid % patch * stem} pixels of every row and column would be ignored; use '
                          f'{lower} or {upper}')

