"""What architecture a parameter tree is: its model config, read from shapes, never guessed.

`infer_config(params)` reads every fact a VisionTransformer parameter tree records (patch
size, width, depth, MLP width, heads from the [D, heads, head_dim] attention kernels, class
token, pre-logits, ResNet stem); the numerics (LayerNorm epsilon, GELU form) are not in the
weights and come from the caller (the file format states them). `check_params` builds the model
abstractly and checks every key and shape.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import trees
from vit_jax.errors import CheckpointError
from vit_jax.models import MODEL_CONFIGS, VisionTransformer, build_model, family

logger = logging.getLogger(__name__)
# How many keys an error message lists per category before it says "and N more".
_MAX_LISTED = 8


def model_default(field: str) -> Any:
    """The default of a VisionTransformer field (the original numerics: eps 1e-6, tanh GELU)."""
    return VisionTransformer.__dataclass_fields__[field].default


def model_field(config: Any, name: str) -> Any:
    """A VisionTransformer field of a model config (dict, ConfigDict) or a module, its default if unset."""
    if isinstance(config, Mapping) or hasattr(config, 'keys'):
        value = config.get(name)
    else:
        value = getattr(config, name, None)
    return model_default(name) if value is None else value


def numerics(config: Any) -> tuple[float, bool]:
    """(layer_norm_eps, gelu_approximate) of a model config or module, the model's defaults where unset."""
    return float(model_field(config, 'layer_norm_eps')), bool(model_field(config, 'gelu_approximate'))


def num_classes(params: Mapping[str, Any]) -> int:
    """Classes of the head (0 when the checkpoint has none)."""
    return int(trees.shape(params['head']['kernel'])[-1]) if 'head' in params else 0


def _structure(config: Any) -> tuple:
    t = config['transformer']
    resnet = config.get('resnet')
    return (tuple(config['patches']['size']), config['hidden_size'], t['mlp_dim'], t['num_heads'],
            t['num_layers'], None if resnet is None else
            (tuple(resnet['num_layers']), float(resnet['width_factor'])))


def match_model_name(config: Any) -> str | None:
    """The MODEL_CONFIGS name with the same architecture (head and pooling aside), if any."""
    for name, known in MODEL_CONFIGS.items():
        vit = 'transformer' in known and not name.startswith('testing')
        if vit and _structure(known) == _structure(config):
            return name
    return None


def infer_config(params: Mapping[str, Any], *, layer_norm_eps: float | None = None,
                 gelu_approximate: bool | None = None, source: str = 'checkpoint'
                 ) -> ml_collections.ConfigDict:
    """The model config of a per-block Linen parameter tree (ViT, hybrid or Mixer), from its shapes.

    `layer_norm_eps` / `gelu_approximate`: the numerics the source format states (None: the
    original's, eps 1e-6 and tanh GELU, as for every .npz).
    """
    if 'MixerBlock_0' in params:
        config = _infer_mixer(params, source)
        config.layer_norm_eps, config.gelu_approximate = numerics(
            {'layer_norm_eps': layer_norm_eps, 'gelu_approximate': gelu_approximate})
        return config
    if 'MAPHead_0' in params:
        raise CheckpointError(f'{source}: MAP-head pooling (big_vision pool_type="map") is not supported by '
                              'vit_jax.models.VisionTransformer')
    try:
        enc = params['Transformer']
        layers = sorted(int(k.split('_')[1]) for k in enc if re.fullmatch(r'encoderblock_\d+', k))
        query = enc['encoderblock_0']['MultiHeadDotProductAttention_0']['query']['kernel']
        mlp = enc['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']
        patch = tuple(int(s) for s in trees.shape(params['embedding']['kernel'])[:2])
    except (KeyError, IndexError, TypeError) as e:
        raise CheckpointError(f'{source}: not a ViT parameter tree (no {e})') from None
    if len(trees.shape(query)) != 3:
        raise CheckpointError(f'{source}: attention query kernel has shape {trees.shape(query)}, expected '
                              '[hidden, heads, head_dim]')
    config = ml_collections.ConfigDict()
    config.model_name = None
    config.patches = ml_collections.ConfigDict({'size': patch})
    config.hidden_size = int(trees.shape(query)[0])
    config.transformer = ml_collections.ConfigDict(dict(
        mlp_dim=int(trees.shape(mlp)[1]), num_heads=int(trees.shape(query)[1]), num_layers=len(layers),
        attention_dropout_rate=0.0, dropout_rate=0.0))
    config.classifier = 'token' if 'cls' in params else 'gap'
    config.representation_size = (int(trees.shape(params['pre_logits']['kernel'])[1])
                                  if 'pre_logits' in params else None)
    if 'conv_root' in params:
        stages = sorted((k for k in params if re.fullmatch(r'block\d+', k)), key=lambda k: int(k[5:]))
        width = trees.shape(params['conv_root']['kernel'])[-1] / 64
        config.resnet = ml_collections.ConfigDict(dict(
            num_layers=tuple(len(params[s]) for s in stages),
            width_factor=int(width) if float(width).is_integer() else width))
    config.layer_norm_eps, config.gelu_approximate = numerics(
        {'layer_norm_eps': layer_norm_eps, 'gelu_approximate': gelu_approximate})
    name = match_model_name(config)
    if name is not None:
        config.model_name = name
        config.transformer.dropout_rate = MODEL_CONFIGS[name].transformer.dropout_rate
        config.transformer.attention_dropout_rate = MODEL_CONFIGS[name].transformer.attention_dropout_rate
    return config


def _infer_mixer(params: Mapping[str, Any], source: str) -> ml_collections.ConfigDict:
    """The config of an MLP-Mixer parameter tree (`stem`, `MixerBlock_{i}`), from its shapes."""
    try:
        blocks = sorted(int(k.split('_')[1]) for k in params if re.fullmatch(r'MixerBlock_\d+', k))
        stem = trees.shape(params['stem']['kernel'])
        tokens = trees.shape(params['MixerBlock_0']['token_mixing']['Dense_0']['kernel'])
        channels = trees.shape(params['MixerBlock_0']['channel_mixing']['Dense_0']['kernel'])
    except (KeyError, IndexError, TypeError) as e:
        raise CheckpointError(f'{source}: not an MLP-Mixer parameter tree (no {e})') from None
    if blocks != list(range(len(blocks))):
        raise CheckpointError(f'{source}: Mixer blocks {blocks} are not numbered 0..N-1')
    config = ml_collections.ConfigDict(dict(
        model_name=None, patches=ml_collections.ConfigDict({'size': tuple(int(s) for s in stem[:2])}),
        hidden_dim=int(stem[3]), num_blocks=len(blocks), tokens_mlp_dim=int(tokens[1]),
        channels_mlp_dim=int(channels[1])))
    for name, known in MODEL_CONFIGS.items():
        if name.startswith('Mixer-') and all(known[k] == config[k] for k in (
                'hidden_dim', 'num_blocks', 'tokens_mlp_dim', 'channels_mlp_dim')) and \
                tuple(known.patches.size) == tuple(config.patches.size):
            config.model_name = name
    return config


def mixer_tokens(params: Mapping[str, Any]) -> int:
    """Patches per image of a Mixer parameter tree (the width of its token-mixing MLP input)."""
    return int(trees.shape(params['MixerBlock_0']['token_mixing']['Dense_0']['kernel'])[0])


def image_size(params: Mapping[str, Any], config: Any) -> int:
    """The training resolution implied by the position-embedding grid (Mixer: the token count)."""
    model = build_model(config, None, inference=True)
    if family(config) == 'Mixer':
        tokens = mixer_tokens(params)
        grid = int(round(np.sqrt(tokens)))
        if grid * grid != tokens:
            raise CheckpointError(f'the Mixer mixes {tokens} tokens, not a square grid')
        return grid * model.patch_stride[0]
    pos = trees.shape(params['Transformer']['posembed_input']['pos_embedding'])[1]
    grid = int(round(np.sqrt(pos - model.num_prefix_tokens)))
    if grid * grid != pos - model.num_prefix_tokens:
        raise CheckpointError(f'pos_embedding has {pos} tokens, not a square grid '
                              f'(+{model.num_prefix_tokens} '
                              f'class token) for classifier={model.classifier!r}')
    return grid * model.patch_stride[0]


def check_params(params: Mapping[str, Any], config: Any, source: str = 'checkpoint') -> None:
    """Checks every key and shape against the model `config` builds (abstractly, no compute)."""
    size = image_size(params, config)
    model = build_model(config, num_classes(params), inference=True)
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                                 train=False))['params']
    inspect_params(params, expected, source=source)


def check_values(params: Mapping[str, Any], source: str = 'checkpoint') -> None:
    """CheckpointError naming the first parameter that is not a real floating array (float16/32/64,
    bfloat16) or holds NaN / Inf; one array in float32 at a time, so memory stays bounded."""
    for key, value in trees.flatten(params).items():
        dtype = np.dtype(getattr(value, 'dtype', np.asarray(value).dtype))
        if not (np.issubdtype(dtype, np.floating) or dtype == jnp.bfloat16):
            raise CheckpointError(f'{source}: parameter {key!r} has dtype {dtype}; expected real floating '
                                  'point (float16/32/64, bfloat16)')
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(np.asarray(value, np.float32))))
        if bad:
            raise CheckpointError(f'{source}: parameter {key!r} holds {bad:,} NaN/Inf values')


def _listed(items: list[str]) -> str:
    shown = ', '.join(items[:_MAX_LISTED])
    return shown + (f' and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else '')


def inspect_params(params: Mapping[str, Any], expected: Mapping[str, Any], *,
                   fail_if_extra: bool = True, fail_if_missing: bool = True,
                   fail_if_shape: bool = True, source: str = 'checkpoint') -> Mapping[str, Any]:
    """Checks that `params` has the keys and shapes of `expected` (e.g. `model.init` params).

    Raises one `CheckpointError` listing the missing, extra and wrong-shape keys with their
    shapes; otherwise returns `params` unchanged.
    """
    got, want = trees.flatten(params), trees.flatten(expected)
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    shape = sorted(k for k in want.keys() & got.keys() if trees.shape(got[k]) != trees.shape(want[k]))
    problems = []
    if missing and fail_if_missing:
        problems.append('missing ' + _listed([f'{k} {trees.shape(want[k])}' for k in missing]))
    if extra and fail_if_extra:
        problems.append('extra ' + _listed([f'{k} {trees.shape(got[k])}' for k in extra]))
    if shape and fail_if_shape:
        problems.append('wrong shape ' + _listed(
            [f'{k} {trees.shape(got[k])} (expected {trees.shape(want[k])})' for k in shape]))
    if problems:
        raise CheckpointError(f'{source} does not match the model: ' + '; '.join(problems))
    if extra:
        logger.info('inspect_params: ignoring extra keys %s', _listed(extra))
    return params
