"""The model configurations of the original vit_jax (`configs/models.py`), by name.

`MODEL_CONFIGS[name]` is a frozen ml_collections config with the original fields;
`get_config(name)` returns a mutable copy and `get_model(name, num_classes=..., **overrides)`
builds the module.
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections

from vit_jax.models.vit import VisionTransformer


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


def get_model(name: str, num_classes: int | None = 1000, **overrides: Any) -> VisionTransformer:
    """Builds `VisionTransformer` for a named config (overrides as in `get_config`)."""
    return VisionTransformer(num_classes=num_classes, **get_config(name, **overrides))
