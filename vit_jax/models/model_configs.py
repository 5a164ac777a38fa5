"""The model configurations of the original vit_jax (`configs/models.py`), by name.

`MODEL_CONFIGS[name]` is a frozen ml_collections config with the original fields;
`get_config(name)` returns a mutable copy, `build_model(model_config, num_classes)` builds the
module from any saved config (the one place that does) and `get_model(name, num_classes=...,
**overrides)` builds a named one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections

from vit_jax.models.vit import Encoder, VisionTransformer


def _vit(name: str, patch: int, hidden: int, mlp: int, heads: int, layers: int,
         dropout: float, resnet: tuple[tuple[int, ...], int] | None = None,
         representation_size: int | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model_name = name
    config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
    config.hidden_size = hidden
    config.transformer = ml_collections.ConfigDict(dict(
        mlp_dim=mlp, num_heads=heads, num_layers=layers,
        attention_dropout_rate=0.0, dropout_rate=dropout))
    config.classifier = 'token'
    config.representation_size = representation_size
    if resnet is not None:
        num_layers, width_factor = resnet
        config.resnet = ml_collections.ConfigDict(
            dict(num_layers=num_layers, width_factor=width_factor))
    return config


_CONFIGS = [
    # name, patch, hidden, mlp, heads, layers, dropout  (original get_*_config values)
    _vit('ViT-Ti_16', 16, 192, 768, 3, 12, 0.0),
    _vit('ViT-S_16', 16, 384, 1536, 6, 12, 0.0),
    _vit('ViT-S_32', 32, 384, 1536, 6, 12, 0.0),
    _vit('ViT-B_8', 8, 768, 3072, 12, 12, 0.0),
    _vit('ViT-B_16', 16, 768, 3072, 12, 12, 0.0),
    _vit('ViT-B_32', 32, 768, 3072, 12, 12, 0.0),
    _vit('ViT-L_16', 16, 1024, 4096, 16, 24, 0.1),
    _vit('ViT-L_32', 32, 1024, 4096, 16, 24, 0.1),
    _vit('ViT-H_14', 14, 1280, 5120, 16, 32, 0.1),
    # Hybrids: the ResNet stem downsamples by 4 (root) x 2 per stage after the first; the
    # patch size then applies to its feature map.
    _vit('R+ViT-Ti_16', 8, 192, 768, 3, 12, 0.0, resnet=((), 1)),
    _vit('R26+ViT-S_32', 1, 384, 1536, 6, 12, 0.0, resnet=((2, 2, 2, 2), 1)),
    _vit('R26+ViT-B_32', 1, 768, 3072, 12, 12, 0.0, resnet=((2, 2, 2, 2), 1)),
    _vit('R50+ViT-B_16', 1, 768, 3072, 12, 12, 0.1, resnet=((3, 4, 9), 1)),
    _vit('R50+ViT-L_32', 1, 1024, 4096, 16, 24, 0.1, resnet=((3, 4, 6, 3), 1)),
    # A tiny model for tests (original `get_testing`).
    _vit('testing', 16, 10, 10, 2, 1, 0.1),
]

MODEL_CONFIGS: dict[str, ml_collections.FrozenConfigDict] = {
    c.model_name: ml_collections.FrozenConfigDict(c) for c in _CONFIGS}


def get_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """A mutable copy of `MODEL_CONFIGS[name]`, with overrides applied.

    Overrides are top-level fields (`dtype=jnp.bfloat16`, `scan_layers=True`) or dotted keys
    for nested fields (`**{'transformer.dropout_rate': 0.1}`).
    """
    if name not in MODEL_CONFIGS:
        raise KeyError(f'unknown model {name!r}; known models: {", ".join(MODEL_CONFIGS)}')
    # A deep copy: FrozenConfigDict.as_configdict() hands out its shared inner dict.
    config = copy.deepcopy(MODEL_CONFIGS[name].as_configdict())
    for key, value in overrides.items():
        parent, _, leaf = key.rpartition('.')
        node = config
        for part in filter(None, parent.split('.')):
            if part not in node:
                raise KeyError(f'override {key!r}: {part!r} is not a field of model {name!r}')
            node = node[part]
        node[leaf] = value
    return config


# The fields a saved model config may have, per sub-config ('' is the top level).
_FIELDS = {
    '': set(VisionTransformer.__dataclass_fields__) - {'parent', 'name', 'num_classes'},
    # Encoder fields that VisionTransformer does not set itself.
    'transformer': set(Encoder.__dataclass_fields__) - set(VisionTransformer.__dataclass_fields__),
    'patches': {'size'},
    'resnet': {'num_layers', 'width_factor'},
}
# Choices of a training run (compute/storage dtype, memory, kernels, regularisation) that
# inference does not inherit: a bf16 run with cuDNN attention predicts in float32 anywhere.
INFERENCE_DROPS = ('dtype', 'param_dtype', 'remat', 'scan_layers', 'attention_impl')
_INFERENCE_ZERO = ('dropout_rate', 'attention_dropout_rate', 'stochastic_depth')


def _plain(config: Any) -> Any:
    """ConfigDicts (also nested inside dicts) -> plain dicts, copied."""
    if hasattr(config, 'to_dict'):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {k: _plain(v) for k, v in config.items()}
    return config


def build_model(model_config: Any, num_classes: int | None, *, inference: bool = False
                ) -> VisionTransformer:
    """`VisionTransformer` from a model config (ConfigDict, or a dict as read from JSON).

    Dtype names ('bfloat16') become dtypes; a field the model does not have is a ValueError
    naming it. `inference=True` drops `INFERENCE_DROPS` and zeroes the dropout rates, so that
    a training run's choices do not follow the model into evaluation or serving.
    """
    kwargs = _plain(model_config)
    if not isinstance(kwargs, dict):
        raise ValueError(f'model config must be a mapping, got {type(model_config).__name__}')
    for section, allowed in _FIELDS.items():
        fields = kwargs if not section else kwargs.get(section)
        if isinstance(fields, dict):
            unknown = sorted(set(fields) - allowed)
            if unknown:
                name = f'{section}.{unknown[0]}' if section else unknown[0]
                raise ValueError(f'{name} is not a {section or "VisionTransformer"} field '
                                 f'(known: {", ".join(sorted(allowed))})')
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
                raise ValueError(f'model config field {key}={kwargs[key]!r} is not a dtype name') from None
    return VisionTransformer(num_classes=num_classes, **kwargs)


def get_model(name: str, num_classes: int | None = 1000, **overrides: Any) -> VisionTransformer:
    """Builds `VisionTransformer` for a named config (overrides as in `get_config`)."""
    return build_model(get_config(name, **overrides), num_classes)
