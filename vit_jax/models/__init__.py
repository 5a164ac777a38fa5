"""Flax models: the Vision Transformer, its hybrid ResNet stem, MLP-Mixer, LiT and the named configs.

The original's names: `VisionTransformer`, `MlpMixer`, `AddPositionEmbs`, `MlpBlock`,
`Encoder1DBlock`, `Encoder`, `LitModel` (with `BertModel`, `TextTransformer`), `get_model(name, **kw)`,
and `MODEL_CONFIGS`
(= `vit_jax.configs.models.MODEL_CONFIGS`).
"""

from vit_jax.configs.models import MODEL_CONFIGS
from vit_jax.models.lit import BertModel, LitModel, TextTransformer
from vit_jax.models.mixer import MlpMixer
from vit_jax.models.model_configs import (
    build_model,
    check_image_size,
    complete_config,
    family,
    get_config,
    get_model,
)
from vit_jax.models.vit import (
    AddPositionEmbs,
    Encoder,
    Encoder1DBlock,
    MlpBlock,
    VisionTransformer,
    blocks_to_scan,
    num_params,
    posemb_sincos_2d,
    scan_to_blocks,
)

__all__ = [
    'MODEL_CONFIGS', 'AddPositionEmbs', 'BertModel', 'Encoder', 'Encoder1DBlock', 'LitModel', 'MlpBlock',
    'MlpMixer', 'TextTransformer', 'VisionTransformer', 'blocks_to_scan', 'build_model', 'check_image_size',
    'complete_config',
    'family', 'get_config',
    'get_model', 'num_params', 'posemb_sincos_2d', 'scan_to_blocks',
]
