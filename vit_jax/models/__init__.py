"""Flax models: the Vision Transformer, its hybrid ResNet stem and the named configs."""

from vit_jax.models.model_configs import MODEL_CONFIGS, build_model, get_config, get_model
from vit_jax.models.vit import (
    VisionTransformer,
    blocks_to_scan,
    num_params,
    scan_to_blocks,
)

__all__ = [
    'MODEL_CONFIGS', 'VisionTransformer', 'blocks_to_scan', 'build_model', 'get_config', 'get_model',
    'num_params', 'scan_to_blocks',
]
