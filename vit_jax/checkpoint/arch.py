"""What architecture a parameter tree is: its model config, read from shapes, never guessed.

`infer_config(params)` reads every fact a VisionTransformer parameter tree records (patch
size, width, depth, MLP width, heads from the [D, heads, head_dim] attention kernels, class
token, pre-logits, ResNet stem); the numerics (LayerNorm epsilon, GELU form) are not in the
weights and come from the caller (the file format states them). `infer_lit_config` does the same
for LiT trees (`img`, `txt`, `t`), where a BERT text tower records neither its heads (flaxformer
keeps 2-D kernels) nor the token length it was trained with, and `infer_siglip_config` for SigLIP
trees (those and the bias `b`). `check_params` builds the model
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
                 gelu_approximate: bool | None = None, classifier: str | None = None,
                 source: str = 'checkpoint') -> ml_collections.ConfigDict:
    """The model config of a per-block Linen parameter tree (ViT, hybrid or Mixer), from its shapes.

    `layer_norm_eps` / `gelu_approximate`: the numerics the source format states (None: the
    original's, eps 1e-6 and tanh GELU, as for every .npz). `classifier`: the pooling, where the
    format states it (timm); else a class token means 'token' pooling, as in every public .npz,
    except with an `fc_norm` (timm's norm after average pooling), where the weights do not say.
    """
    if 'MixerBlock_0' in params:
        config = _infer_mixer(params, source)
        config.layer_norm_eps, config.gelu_approximate = numerics(
            {'layer_norm_eps': layer_norm_eps, 'gelu_approximate': gelu_approximate})
        return config
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
    if 'LayerScale_0' in enc['encoderblock_0']:
        # The scales are in the weights; the initial value only matters for a fresh init (timm's DINOv2).
        config.transformer.layer_scale = 1e-5
    config.update(tree_fields(params, classifier, source))
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


def tree_fields(params: Mapping[str, Any], classifier: str | None, source: str = 'checkpoint'
                ) -> dict[str, Any]:
    """THE reading of what a ViT parameter tree records beyond the shapes of its blocks, for a config read
    from the tree (`infer_config`) and for a named config given the tree (`loader.from_params`): its
    tokens (class, distillation, registers), its heads (pre-logits; whether the distillation token has its
    own head, where there is a classifier), fc_norm and the pooling.

    `classifier`: the pooling the format or the named config states; None: the tree's, where it says
    (attention pooling, else the class token, else the average; with a class token and an fc_norm it
    does not say: refused). Pooling a class token the tree does not have is refused. Fields the tree
    leaves at the model's defaults are absent, except the pooling and the pre-logits width."""
    if classifier is None:
        if 'fc_norm' in params and 'cls' in params:
            raise CheckpointError(f'{source}: a class token and an fc_norm, but the weights do not record '
                                  'whether the class token or the average of the patch tokens is pooled')
        classifier = 'map' if 'MAPHead_0' in params else 'token' if 'cls' in params else 'gap'
    token_pooled = classifier in ('token', 'token_unpooled', 'token_gap')
    if token_pooled and 'cls' not in params:
        raise CheckpointError(f'{source}: classifier={classifier!r} pools the class token, but the '
                              'parameters have none (no cls)')
    fields: dict[str, Any] = {
        'classifier': classifier,
        'representation_size': (int(trees.shape(params['pre_logits']['kernel'])[1])
                                if 'pre_logits' in params else None)}
    if 'cls' in params and not token_pooled:
        fields['class_token'] = True
    if 'fc_norm' in params:
        fields['fc_norm'] = True
    if 'reg' in params:
        fields['num_registers'] = int(trees.shape(params['reg'])[1])
    if 'dist' in params:
        fields['distillation_token'] = True
        if 'head' in params:   # a classifier records whether the distillation token has its own head
            fields['distillation_head'] = 'head_dist' in params
    return fields


def lit_models() -> list[str]:
    """The LiT names of MODEL_CONFIGS."""
    return [name for name, config in MODEL_CONFIGS.items() if family(config) == 'LiT']


def infer_lit_config(params: Mapping[str, Any], *, text_heads: int | None = None, max_len: int | None = None,
                     source: str = 'checkpoint') -> ml_collections.ConfigDict:
    """The LiT model config of a parameter tree, from its shapes.

    A `TextTransformer` tower records everything (heads in its [D, heads, head_dim] kernels, the
    token length in its position embedding). A BERT tower records neither: give `text_heads` and
    `max_len` (the LiT models use 16 tokens), else a CheckpointError says so.
    """
    missing = [k for k in ('img', 'txt', 't') if k not in params]
    if missing:
        raise CheckpointError(f'{source}: not a LiT parameter tree (no {missing[0]})')
    if 'b' in params:
        return infer_siglip_config(params, source=source)
    if 'pos_embedding' in params['img']:
        raise CheckpointError(f'{source}: a big_vision two-tower model without the SigLIP bias b is not '
                              'supported; LiT and SigLIP models (vit-zeroshot) are')
    image = infer_config(params['img'], source=f'{source} (img)')
    out_img = num_classes(params['img']) or None
    image_size_ = _lit_image_size(params['img'], image)
    txt = params['txt']
    config = ml_collections.ConfigDict()
    config.model_name = None
    config.image = image
    if 'BertEncoder_0' in txt:
        text, length = _infer_bert(txt['BertEncoder_0'], text_heads, max_len, source)
        config.text_model, config.text, tokenizer = 'bert', {'config': text}, 'bert'
    elif 'Encoder_0' in txt:
        text, length = _infer_text_transformer(txt, source)
        if max_len is not None and max_len != length:
            raise CheckpointError(f'{source}: the text tower takes {length} tokens (its position embedding), '
                                  f'not max_len={max_len}')
        config.text_model, config.text, tokenizer = 'text_transformer', text, 'sentencepiece'
    else:
        raise CheckpointError(f'{source}: unknown LiT text tower (no txt/BertEncoder_0 or txt/Encoder_0)')
    out_txt = num_classes(txt) or None
    if config.text_model == 'text_transformer' and out_txt is None:
        raise CheckpointError(f'{source}: a TextTransformer text tower needs its txt/head')
    config.out_dim = (out_img, out_txt)
    config.pp = ml_collections.ConfigDict(dict(tokenizer_name=tokenizer, size=image_size_, max_len=length))
    return config


# big_vision's SigLIP configs (its SigLIP demo: temperature_init=10, bias_init=-10); the values only
# matter for a fresh init, the file holds the learned t and b.
SIGLIP_INIT = dict(temperature_init=10.0, bias_init=-10.0)


def infer_siglip_config(params: Mapping[str, Any], *, image: Mapping[str, Any] | None = None,
                        text: Mapping[str, Any] | None = None, source: str = 'checkpoint'
                        ) -> ml_collections.ConfigDict:
    """The SigLIP model config (a `LitModel` with the learned bias `b`) of a two-tower tree (`img`: a ViT,
    `txt`: a `TextTransformer`, `t`, `b`), from its shapes. `image` / `text`: the numerics the format
    states for each tower (`layer_norm_eps`, `gelu_approximate`; None: big_vision's, Flax's defaults).
    The text tower takes as many tokens as its position embedding has rows."""
    missing = [k for k in ('img', 'txt', 't', 'b') if k not in params]
    if missing:
        raise CheckpointError(f'{source}: not a SigLIP parameter tree (no {missing[0]})')
    image_config = infer_config(params['img'], **dict(image or {}), source=f'{source} (img)')
    txt = params['txt']
    text_config, length = _infer_text_transformer(txt, source)
    text_config.layer_norm_eps, text_config.gelu_approximate = numerics(dict(text or {}))
    config = ml_collections.ConfigDict()
    config.model_name = None
    config.image = image_config
    config.text_model, config.text = 'text_transformer', text_config
    config.out_dim = (num_classes(params['img']) or None, num_classes(txt) or None)
    config.update(SIGLIP_INIT)
    config.pp = ml_collections.ConfigDict(dict(tokenizer_name='sentencepiece',
                                               size=_lit_image_size(params['img'], image_config),
                                               max_len=length))
    return config


def _lit_image_size(params: Mapping[str, Any], image: Any) -> int:
    try:
        return image_size(params, image)
    except (CheckpointError, KeyError) as e:
        raise CheckpointError(f'img: not a ViT image tower ({e})') from None


def _infer_bert(enc: Mapping[str, Any], heads: int | None, max_len: int | None, source: str
                ) -> tuple[ml_collections.ConfigDict, int]:
    try:
        emb = enc['embedder']
        layers = enc['encoder_block']['layer_sequence']
        mlp = layers['layers_0']['mlp_block']['mlp']['dense_layer']['kernel']
        vocab, hidden = trees.shape(emb['embedders_token_ids']['embedding'])
        fields = dict(hidden_size=int(hidden), intermediate_dim=int(trees.shape(mlp)[1]),
                      vocab_size=int(vocab),
                      max_length=int(trees.shape(emb['embedders_position_ids']['embedding'])[0]),
                      num_segments=int(trees.shape(emb['embedders_segment_ids']['embedding'])[0]),
                      num_hidden_layers=len(layers))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f'{source}: not a flaxformer BertEncoder under txt/BertEncoder_0 '
                              f'(no {e})') from None
    if heads is None or max_len is None:
        raise CheckpointError(
            f'{source}: a BERT text tower records neither its attention heads nor its token length; name '
            f'the model (--model {" | ".join(lit_models())}) or give --text-heads N --max-len N')
    if hidden % heads:
        raise CheckpointError(f'{source}: text width {hidden} is not divisible by --text-heads {heads}')
    if not 2 <= max_len <= fields['max_length']:
        raise CheckpointError(f'{source}: --max-len {max_len} is not in [2, {fields["max_length"]}] (the '
                              'BERT position embedding)')
    return ml_collections.ConfigDict({**fields, 'num_attention_heads': int(heads)}), max_len


def _infer_text_transformer(txt: Mapping[str, Any], source: str) -> tuple[ml_collections.ConfigDict, int]:
    try:
        vocab, width = trees.shape(txt['Embed_0']['embedding'])
        length = int(trees.shape(txt['pos_embedding'])[1])
        enc = txt['Encoder_0']
        layers = [k for k in enc if re.fullmatch(r'encoderblock_\d+', k)]
        query = trees.shape(enc['encoderblock_0']['MultiHeadDotProductAttention_0']['query']['kernel'])
        mlp = trees.shape(enc['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel'])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f'{source}: not a LiT TextTransformer under txt/ (no {e})') from None
    return ml_collections.ConfigDict(dict(width=int(width), num_layers=len(layers), mlp_dim=int(mlp[1]),
                                          num_heads=int(query[1]), vocab_size=int(vocab))), length


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
    if model_field(config, 'posemb') == 'sincos2d':
        raise CheckpointError('a fixed sin-cos position embedding records no image size; give it '
                              '(--image-size N)')
    model = build_model(config, None, inference=True)
    if family(config) == 'Mixer':
        tokens = mixer_tokens(params)
        grid = int(round(np.sqrt(tokens)))
        if grid * grid != tokens:
            raise CheckpointError(f'the Mixer mixes {tokens} tokens, not a square grid')
        return grid * model.patch_stride[0]
    try:
        pos = trees.shape(params['Transformer']['posembed_input']['pos_embedding'])[1]
    except (KeyError, TypeError):
        raise CheckpointError('no Transformer/posembed_input/pos_embedding (a learned position embedding) '
                              'to read the image size from') from None
    grid = int(round(np.sqrt(pos - model.num_prefix_tokens)))
    if grid * grid != pos - model.num_prefix_tokens:
        raise CheckpointError(f'pos_embedding has {pos} tokens, not a square grid '
                              f'(+{model.num_prefix_tokens} '
                              f'class token) for classifier={model.classifier!r}')
    return grid * model.patch_stride[0]


def check_params(params: Mapping[str, Any], config: Any, source: str = 'checkpoint') -> None:
    """Checks every key and shape against the model `config` builds (abstractly, no compute)."""
    if family(config) == 'LiT':
        model = build_model(config, None)
        pp = config['pp']
        size, length = int(pp['size']), int(pp['max_len'])
        expected = jax.eval_shape(lambda: model.init(
            jax.random.PRNGKey(0), images=jnp.zeros((1, size, size, 3)),
            tokens=jnp.zeros((1, length), jnp.int32)))['params']
        inspect_params(params, expected, source=source)
        return
    model = build_model(config, num_classes(params), inference=True)
    # A fixed sin-cos position embedding fits any grid: the shapes are checked on a 2x2 one.
    fixed = model_field(config, 'posemb') == 'sincos2d'
    size = 2 * model.patch_stride[0] if fixed else image_size(params, config)
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
