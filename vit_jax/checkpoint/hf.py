"""Hugging Face ViT, DeiT, DINOv2 and SigLIP-vision weights: their name tables, reading a directory
(config.json + weights) into the Linen tree with every fact from its config.json (transformers' defaults
where absent: LayerNorm epsilon, GELU form, heads, sizes), and writing one back (config.json,
model.safetensors, preprocessor_config.json) that transformers loads.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from vit_jax import paths
from vit_jax.checkpoint import arch, tensors
from vit_jax.checkpoint.tensors import read_weights
from vit_jax.errors import CheckpointError
from vit_jax.models import family

HF_GELU = {'gelu': False, 'gelu_pytorch_tanh': True, 'gelu_new': True}
HF_LAYER_NORM_EPS = 1e-12   # transformers' ViTConfig default

# The embeddings and attention of transformers' ViT, DeiT and DINOv2 (the same names in all three).
_HF_EMBEDDINGS_ATTENTION = [
    (r'embeddings\.cls_token', 'cls'),
    (r'embeddings\.position_embeddings', 'pos'),
    (r'embeddings\.patch_embeddings\.projection\.(weight|bias)', r'patch.\1'),
    (r'encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)', r'\1.q.\2'),
    (r'encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)', r'\1.k.\2'),
    (r'encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)', r'\1.v.\2'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)', r'\1.o.\2'),
]
_HF_NAMES = _HF_EMBEDDINGS_ATTENTION + [
    (r'encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)', r'\1.fc1.\2'),
    (r'encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)', r'\1.fc2.\2'),
    (r'encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)', r'\1.ln1.\2'),
    (r'encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)', r'\1.ln2.\2'),
    # transformers >= 5 names.
    (r'layers\.(\d+)\.attention\.(q|k|v|o)_proj\.(weight|bias)', r'\1.\2.\3'),
    (r'layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)', r'\1.\2.\3'),
    (r'layers\.(\d+)\.layernorm_before\.(weight|bias)', r'\1.ln1.\2'),
    (r'layers\.(\d+)\.layernorm_after\.(weight|bias)', r'\1.ln2.\2'),
    (r'layernorm\.(weight|bias)', r'norm.\1'),
    (r'pooler\.dense\.(weight|bias)', r'pre_logits.\1'),
    (r'classifier\.(weight|bias)', r'head.\1'),
]
# transformers' DeiT (model_type 'deit'): ViT's names plus the distillation token and the two heads of
# DeiTForImageClassificationWithTeacher (DeiTForImageClassification has ViT's `classifier`).
_HF_DEIT_NAMES = _HF_NAMES + [
    (r'embeddings\.distillation_token', 'dist'),
    (r'cls_classifier\.(weight|bias)', r'head.\1'),
    (r'distillation_classifier\.(weight|bias)', r'head_dist.\1'),
]
# transformers' Dinov2Model (model_type 'dinov2'): its own block names (norm1/2, layer_scale1/2, mlp.fc1/2).
_HF_DINOV2_NAMES = _HF_EMBEDDINGS_ATTENTION + [
    (r'encoder\.layer\.(\d+)\.attention\.(q|k|v|o)_proj\.(weight|bias)', r'\1.\2.\3'),   # transformers >= 5
    (r'encoder\.layer\.(\d+)\.norm(1|2)\.(weight|bias)', r'\1.ln\2.\3'),
    (r'encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)', r'\1.\2.\3'),
    (r'encoder\.layer\.(\d+)\.layer_scale(1|2)\.lambda1', r'\1.ls\2'),
    (r'layernorm\.(weight|bias)', r'norm.\1'),
    (r'classifier\.(weight|bias)', r'head.\1'),   # Dinov2ForImageClassification: on [class, mean patch]
]
# transformers' SiglipEncoder (both towers of SiglipModel).
_HF_SIGLIP_ENCODER = [
    (r'encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)', r'\1.\2.\3'),
    (r'encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)', r'\1.o.\2'),
    (r'encoder\.layers\.(\d+)\.layer_norm(1|2)\.(weight|bias)', r'\1.ln\2.\3'),
    (r'encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)', r'\1.\2.\3'),
]
# transformers' SiglipVisionModel (and the vision tower of SiglipModel): no class token, position
# embeddings an nn.Embedding [N, D], the attention-pooling head an nn.MultiheadAttention (q, k, v packed).
_HF_SIGLIP_NAMES = _HF_SIGLIP_ENCODER + [
    (r'embeddings\.patch_embedding\.(weight|bias)', r'patch.\1'),
    (r'embeddings\.position_embedding\.weight', 'pos'),
    (r'post_layernorm\.(weight|bias)', r'norm.\1'),
    (r'head\.probe', 'map_probe'),
    (r'head\.attention\.in_proj_(weight|bias)', r'map_qkv.\1'),
    (r'head\.attention\.out_proj\.(weight|bias)', r'map_o.\1'),
    (r'head\.layernorm\.(weight|bias)', r'map_ln.\1'),
    (r'head\.mlp\.(fc1|fc2)\.(weight|bias)', r'map_\1.\2'),
]
# transformers' SiglipTextModel (the text tower of SiglipModel): token and position embeddings (nn.Embedding),
# the SigLIP encoder, a final LayerNorm, the last token's `head` into the image-text embedding space.
_HF_SIGLIP_TEXT_NAMES = _HF_SIGLIP_ENCODER + [
    (r'embeddings\.token_embedding\.weight', 'tok'),
    (r'embeddings\.position_embedding\.weight', 'pos'),
    (r'final_layer_norm\.(weight|bias)', r'norm.\1'),
    (r'head\.(weight|bias)', r'head.\1'),
]

# Inverse tables (canonical -> source) for export; HF export uses the legacy names, which
# every transformers version loads.
_HF_EXPORT = {
    'cls': 'vit.embeddings.cls_token', 'pos': 'vit.embeddings.position_embeddings',
    'patch': 'vit.embeddings.patch_embeddings.projection',
    'q': 'vit.encoder.layer.{i}.attention.attention.query',
    'k': 'vit.encoder.layer.{i}.attention.attention.key',
    'v': 'vit.encoder.layer.{i}.attention.attention.value',
    'o': 'vit.encoder.layer.{i}.attention.output.dense',
    'fc1': 'vit.encoder.layer.{i}.intermediate.dense', 'fc2': 'vit.encoder.layer.{i}.output.dense',
    'ln1': 'vit.encoder.layer.{i}.layernorm_before', 'ln2': 'vit.encoder.layer.{i}.layernorm_after',
    'norm': 'vit.layernorm', 'pre_logits': 'vit.pooler.dense', 'head': 'classifier'}
# DeiT (a model with a distillation token): DeiTForImageClassification (`classifier`, the class token's
# head alone), ...WithTeacher (the two heads averaged), DeiTModel (its pooler is pre_logits).
_HF_DEIT_EXPORT = {**{k: v.replace('vit.', 'deit.', 1) for k, v in _HF_EXPORT.items()},
                   'dist': 'deit.embeddings.distillation_token'}
_HF_DEIT_TEACHER_EXPORT = {**_HF_DEIT_EXPORT, 'head': 'cls_classifier',
                           'head_dist': 'distillation_classifier'}

def hf_files(path: str) -> tuple[str, str]:
    """(config.json, weights file) for an HF directory, its config.json or its weights file."""
    directory = path if paths.is_dir(path) else paths.parent(path)
    config = paths.join(directory, 'config.json')
    if not paths.exists(config):
        raise CheckpointError(f'{path}: Hugging Face weights need the config.json beside them')
    if paths.is_file(path) and paths.name(path) != 'config.json':
        return config, path
    for name in ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin'):
        if paths.exists(paths.join(directory, name)):
            return config, paths.join(directory, name)
    raise CheckpointError(f'{directory}: no model.safetensors (or pytorch_model.bin) beside config.json')


def _hf_field(config_path: str, hf: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    """A field of an HF config.json (`default` where absent, transformers' own), of type `kind` (int: >= 1;
    float: a number > 0); else a CheckpointError naming the file, the field and its value."""
    value = hf.get(key, default)
    if kind is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool) and value >= 1, 'an integer >= 1'
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        what = 'a number > 0'
    else:
        what = {str: 'a string', bool: 'true or false', dict: 'a JSON object'}[kind]
        ok = isinstance(value, kind)
    if not ok:
        raise CheckpointError(f'{config_path}: {key}={value!r} is not {what}')
    return value


def _hf_heads(config_path: str, hf: Mapping[str, Any], canonical: Mapping[str, np.ndarray]) -> int:
    """num_attention_heads of an HF config.json (transformers' default 12), checked to divide the width."""
    heads = _hf_field(config_path, hf, 'num_attention_heads', 12, int)
    width = np.shape(canonical['patch.w'])[0] if 'patch.w' in canonical else None
    if width is not None and width % heads:
        raise CheckpointError(f'{config_path}: num_attention_heads={heads} does not divide the hidden size '
                              f'{width}')
    return heads


def read_hf(path: str, sd: Mapping[str, np.ndarray] | None = None) -> tuple[ml_collections.ConfigDict, dict]:
    """(model_config, params) of an HF ViT, DeiT, DINOv2 or SigLIP vision directory / config.json / weights
    file (`sd`: its weights); every fact from its config.json (transformers' defaults where absent)."""
    config_path, weights = hf_files(path)
    hf = tensors.read_json(config_path)
    model_type = hf.get('model_type', 'vit')
    if model_type in ('siglip_vision_model', 'siglip'):
        return _read_hf_siglip(hf, config_path, weights, sd)
    if model_type.startswith('siglip2'):
        raise CheckpointError(f'{config_path}: model_type={model_type!r}: SigLIP 2 with NaFlex (variable '
                              'resolution and aspect ratio) is not supported; SigLIP (siglip, '
                              'siglip_vision_model) is')
    if model_type not in ('vit', 'deit', 'dinov2', 'dinov2_with_registers'):
        raise CheckpointError(f'{config_path}: model_type={model_type!r} is not one vit_jax reads (vit, '
                              'deit, dinov2, dinov2_with_registers, siglip, siglip_vision_model)')
    dinov2 = model_type.startswith('dinov2')
    act = _hf_field(config_path, hf, 'hidden_act', 'gelu', str)
    if act not in HF_GELU:
        raise CheckpointError(f'{config_path}: hidden_act={act!r} is not supported (expected one of '
                              f'{sorted(HF_GELU)})')
    if hf.get('num_channels', 3) != 3:
        raise CheckpointError(f'{config_path}: num_channels={hf["num_channels"]} (VisionTransformer needs 3)')
    if dinov2 and _hf_field(config_path, hf, 'use_swiglu_ffn', False, bool):
        raise CheckpointError(f'{config_path}: use_swiglu_ffn=true: a SwiGLU MLP is not supported')
    if sd is None:
        sd, _ = read_weights(weights)
    sd = {re.sub(rf'^{"vit" if model_type == "vit" else model_type}\.', '', k): v for k, v in sd.items()}
    if dinov2:
        canonical = _hf_dinov2_canonical(config_path, hf, weights, sd, model_type)
    else:
        if 'classifier.weight' in sd or 'cls_classifier.weight' in sd:   # (their classifiers skip the pooler)
            sd = {k: v for k, v in sd.items() if not k.startswith('pooler.')}
        elif 'pooler.dense.weight' in sd and hf.get('pooler_act', 'tanh') != 'tanh':
            raise CheckpointError(f'{config_path}: pooler_act={hf["pooler_act"]!r} (pre_logits needs tanh)')
        table = _HF_DEIT_NAMES if model_type == 'deit' else _HF_NAMES
        canonical = tensors.rename(sd, table, weights, ignore=[r'embeddings\.mask_token'])
        if model_type == 'deit' and 'dist' not in canonical:
            raise CheckpointError(f'{weights}: no embeddings.distillation_token (every DeiT has one)')
    _hf_check_qkv_bias(config_path, hf, canonical)
    # transformers' config defaults (num_attention_heads 12; layer_norm_eps 1e-12, DINOv2's 1e-6) are the
    # format's. Their position embeddings always have the class (and distillation) token rows.
    params = tensors.linen_from_canonical(canonical, _hf_heads(config_path, hf, canonical), weights,
                                   no_embed_class=False if model_type != 'vit' else None)
    eps = _hf_field(config_path, hf, 'layer_norm_eps', 1e-6 if dinov2 else HF_LAYER_NORM_EPS, float)
    names = hf.get('architectures')
    name = names[0] if isinstance(names, list) and names else None
    # Dinov2ForImageClassification's head (an Identity without labels) reads the class token concatenated
    # with the mean of the patch tokens.
    token_gap = dinov2 and ('head' in params or name in ('Dinov2ForImageClassification',
                                                          'Dinov2WithRegistersForImageClassification'))
    config = arch.infer_config(params, layer_norm_eps=eps, gelu_approximate=HF_GELU[act],
                               classifier='token_gap' if token_gap else None, source=weights)
    if model_type == 'vit':
        return config, params
    if model_type == 'deit' and 'head_dist' not in params:
        # DeiTForImageClassification and DeiTModel's pooler read the class token alone; without labels
        # (Identity heads), ...WithTeacher gives the mean of the class and distillation tokens.
        config.distillation_head = ('head' not in params and 'pre_logits' not in params
                                    and name == 'DeiTForImageClassificationWithTeacher')
    _hf_check_sizes(config_path, hf, params, config, default_patch=14 if model_type == 'dinov2' else 16)
    if dinov2:
        config.transformer.layer_scale = float(_hf_field(config_path, hf, 'layerscale_value', 1.0, float))
        ratio = _hf_field(config_path, hf, 'mlp_ratio', 4, float)
        if int(config.hidden_size * ratio) != config.transformer.mlp_dim:   # transformers' Dinov2MLP width
            raise CheckpointError(f'{config_path}: mlp_ratio={ratio!r} gives an MLP of '
                                  f'{int(config.hidden_size * ratio)} but the weights have '
                                  f'{config.transformer.mlp_dim}')
    return config, params


def _hf_dinov2_canonical(config_path: str, hf: Mapping[str, Any], weights: str,
                         sd: Mapping[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
    """The canonical weights of a Dinov2Model or Dinov2ForImageClassification, or their WithRegisters
    versions (the mask token, for masked pre-training, is not used). The registers come after the class
    token and get no position embedding: zero rows."""
    table = _HF_DINOV2_NAMES + [(r'embeddings\.register_tokens', 'reg')]
    canonical = tensors.rename(sd, table, weights, ignore=[r'embeddings\.mask_token'])
    if model_type == 'dinov2_with_registers':
        registers = _hf_field(config_path, hf, 'num_register_tokens', 4, int)
        found = int(np.shape(canonical['reg'])[1]) if 'reg' in canonical else 0
        if found != registers:
            raise CheckpointError(f'{config_path}: num_register_tokens={registers} but the weights have '
                                  f'{found} register tokens')
        pos = canonical.get('pos')
        if pos is not None:   # (missing: refused by name when the tree is built)
            canonical['pos'] = np.concatenate([pos[:, :1], np.zeros_like(pos[:, :1]).repeat(registers, 1),
                                               pos[:, 1:]], axis=1)
    elif 'reg' in canonical:
        raise CheckpointError(f'{weights}: embeddings.register_tokens in a model_type=\'dinov2\' file '
                              '(Dinov2WithRegisters is model_type=\'dinov2_with_registers\')')
    blocks = {k.split('.')[0] for k in canonical if k[0].isdigit()}
    missing = sorted((i for i in blocks if f'{i}.ls1' not in canonical), key=int)
    if missing:
        raise CheckpointError(f'{weights}: block {missing[0]} has no layer_scale1.lambda1 '
                              '(every Dinov2Layer has layer scale)')
    return canonical


def _hf_check_qkv_bias(config_path: str, hf: Mapping[str, Any], canonical: Mapping[str, np.ndarray]) -> None:
    """The config.json's qkv_bias (transformers' default true) against the weights."""
    qkv_bias = _hf_field(config_path, hf, 'qkv_bias', True, bool)
    if '0.q.w' in canonical and ('0.q.b' in canonical) != qkv_bias:
        raise CheckpointError(f'{config_path}: qkv_bias={str(qkv_bias).lower()} but the weights have '
                              f'{"" if "0.q.b" in canonical else "no "}query/key/value biases')


def _hf_check_sizes(config_path: str, hf: Mapping[str, Any], params: Mapping[str, Any], config: Any,
                    default_patch: int) -> None:
    """The config.json's image_size and patch_size (square; transformers' defaults 224 and `default_patch`)
    against the patch embedding and the position-embedding grid the weights hold."""
    sizes = {}
    for key, default in (('image_size', 224), ('patch_size', default_patch)):
        value = hf.get(key, default)
        pair = list(value) if isinstance(value, (list, tuple)) else [value, value]
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
            raise CheckpointError(f'{config_path}: {key}={value!r} is not a positive size (N or [N, N])')
        if pair[0] != pair[1]:
            raise CheckpointError(f'{config_path}: {key}={value!r}: a non-square size is not supported')
        sizes[key] = pair[0]
    patch = int(config.patches.size[0])
    if sizes['patch_size'] != patch:
        raise CheckpointError(f'{config_path}: patch_size={sizes["patch_size"]} but the patch embedding is '
                              f'{patch}x{patch}')
    grid = arch.image_size(params, config) // patch
    if sizes['image_size'] // patch != grid:
        raise CheckpointError(f'{config_path}: image_size={sizes["image_size"]} but the position embedding '
                              f'is for a {grid}x{grid} grid of {patch}-pixel patches')


def _read_hf_siglip(hf: dict, config_path: str, weights: str, sd: Mapping[str, np.ndarray] | None
                    ) -> tuple[ml_collections.ConfigDict, dict]:
    """A SiglipVisionModel (the attention-pooled image features), or a two-tower SiglipModel
    (`_read_hf_siglip_model`)."""
    if hf['model_type'] == 'siglip':
        return _read_hf_siglip_model(hf, config_path, weights, sd)
    if sd is None:
        sd, _ = read_weights(weights)
    params, numerics = _hf_siglip_vision(hf, config_path, weights, {k.removeprefix('vision_model.'): v
                                                                    for k, v in sd.items()})
    return arch.infer_config(params, **numerics, source=weights), params


def _hf_siglip_vision(hf: Mapping[str, Any], where: str, weights: str, sd: Mapping[str, np.ndarray]
                      ) -> tuple[dict, dict]:
    """(ViT params, numerics) of a SigLIP vision tower and its config (`where` names it in errors);
    transformers' SiglipVisionConfig defaults are the format's."""
    act = _hf_field(where, hf, 'hidden_act', 'gelu_pytorch_tanh', str)
    if act not in HF_GELU:
        raise CheckpointError(f'{where}: hidden_act={act!r} is not supported (expected one of '
                              f'{sorted(HF_GELU)})')
    if not _hf_field(where, hf, 'vision_use_head', True, bool):
        raise CheckpointError(f'{where}: vision_use_head=false: a SigLIP vision model without its '
                              'attention-pooling head pools nothing')
    if hf.get('num_channels', 3) != 3:
        raise CheckpointError(f'{where}: num_channels={hf["num_channels"]} (VisionTransformer needs 3)')
    canonical = tensors.rename(sd, _HF_SIGLIP_NAMES, weights)
    if np.ndim(canonical.get('pos')) == 2:   # an nn.Embedding [N, D]
        canonical['pos'] = canonical['pos'][None]
    params = tensors.linen_from_canonical(canonical, _hf_heads(where, hf, canonical), weights)
    numerics = dict(layer_norm_eps=_hf_field(where, hf, 'layer_norm_eps', 1e-6, float),
                    gelu_approximate=HF_GELU[act])
    config = arch.infer_config(params, **numerics, source=weights)
    _hf_check_sizes(where, hf, params, config, default_patch=16)
    return params, numerics


def _hf_siglip_text(hf: Mapping[str, Any], where: str, weights: str, sd: Mapping[str, np.ndarray]
                    ) -> tuple[dict, dict]:
    """(TextTransformer params, numerics) of a SiglipTextModel and its config (`where` names it in errors),
    every size in the config checked against the weights; transformers' SiglipTextConfig defaults are the
    format's."""
    act = _hf_field(where, hf, 'hidden_act', 'gelu_pytorch_tanh', str)
    if act not in HF_GELU:
        raise CheckpointError(f'{where}: hidden_act={act!r} is not supported (expected one of '
                              f'{sorted(HF_GELU)})')
    c = tensors.rename(sd, _HF_SIGLIP_TEXT_NAMES, weights)
    with tensors.building_from(c, weights, 'text_model '):
        vocab, d = np.shape(c['tok'])
        heads = _hf_field(where, hf, 'num_attention_heads', 12, int)
        if d % heads:
            raise CheckpointError(f'{where}: num_attention_heads={heads} does not divide the hidden size {d}')
        layers = sorted({int(k.split('.')[0]) for k in c if k.split('.')[0].isdigit()})
        if layers != list(range(len(layers))) or not layers:
            raise CheckpointError(f'{weights}: text encoder layers {layers} are not numbered 0..L-1')
        found = dict(vocab_size=vocab, hidden_size=d, intermediate_size=np.shape(c['0.fc1.w'])[0],
                     num_hidden_layers=len(layers), max_position_embeddings=np.shape(c['pos'])[0],
                     projection_size=np.shape(c['head.w'])[0])
        defaults = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        max_position_embeddings=64, projection_size=hf.get('hidden_size', 768))
        for key, have in found.items():
            value = _hf_field(where, hf, key, defaults[key], int)
            if value != have:
                raise CheckpointError(f'{where}: {key}={value} but the weights have {have}')
        encoder = {f'encoderblock_{i}': tensors.encoder_block(c, i, heads, d) for i in layers}
        encoder['encoder_norm'] = {'scale': c.pop('norm.w'), 'bias': c.pop('norm.b')}
        params = {'Embed_0': {'embedding': c.pop('tok')}, 'pos_embedding': c.pop('pos')[None],
                  'Encoder_0': encoder, 'head': {'kernel': c.pop('head.w').T, 'bias': c.pop('head.b')}}
    numerics = dict(layer_norm_eps=_hf_field(where, hf, 'layer_norm_eps', 1e-6, float),
                    gelu_approximate=HF_GELU[act])
    return jax.tree_util.tree_map(np.ascontiguousarray, params), numerics


def _read_hf_siglip_model(hf: dict, config_path: str, weights: str, sd: Mapping[str, np.ndarray] | None
                          ) -> tuple[ml_collections.ConfigDict, dict]:
    """A two-tower SiglipModel: both towers into one `LitModel` tree (`img`, `txt`), `logit_scale` as
    its temperature `t` (exp(t) scales the image-text dot products) and `logit_bias` as its bias `b`;
    every fact from config.json's vision_config and text_config."""
    if sd is None:
        sd, _ = read_weights(weights)
    towers = {'vision_model.': {}, 'text_model.': {}}
    scalars, unknown = {}, []
    for key, value in sd.items():
        prefix = next((p for p in towers if key.startswith(p)), None)
        if prefix is not None:
            towers[prefix][key.removeprefix(prefix)] = value
        elif key in ('logit_scale', 'logit_bias'):
            scalars[key] = np.asarray(value, np.float32).reshape(-1)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f'{weights}: unsupported keys for a SiglipModel '
                              f'({", ".join(sorted(unknown)[:6])})')
    for key in ('logit_scale', 'logit_bias'):
        if np.shape(scalars.get(key, ())) != (1,):
            raise CheckpointError(f'{weights}: no {key} (a single number) in a SiglipModel')
    vision_where, text_where = f'{config_path} (vision_config)', f'{config_path} (text_config)'
    img, image_numerics = _hf_siglip_vision(_hf_field(config_path, hf, 'vision_config', {}, dict),
                                            vision_where, weights, towers['vision_model.'])
    txt, text_numerics = _hf_siglip_text(_hf_field(config_path, hf, 'text_config', {}, dict),
                                         text_where, weights, towers['text_model.'])
    params = {'img': img, 'txt': txt, 't': scalars['logit_scale'], 'b': scalars['logit_bias']}
    config = arch.infer_siglip_config(params, image=image_numerics, text=text_numerics, source=weights)
    return config, params


def check_exportable(params: Mapping[str, Any], config: Any) -> None:
    """CheckpointError (one line) unless a Hugging Face ViT (or DeiT) class can express the model."""
    target = 'Hugging Face ViT'
    if family(config) == 'Mixer':
        raise CheckpointError(f'{target} has no MLP-Mixer model; use --to timm (MlpMixer) or --to npz')
    tensors.check_exportable(params, config, target)
    if 'pre_logits' in params and 'head' in params:
        raise CheckpointError(
            'Hugging Face ViT has no model with both a pooler (the pre_logits layer) and a classifier; '
            '--num-classes 0 exports the ViTModel with its pooler (as HF publishes the ImageNet-21k '
            'ViTs), or use --to npz')
    if 'MAPHead_0' in params:
        raise CheckpointError('Hugging Face ViT has no attention-pooling head; use --to timm or npz')
    if 'LayerScale_0' in params.get('Transformer', {}).get('encoderblock_0', {}):
        raise CheckpointError('Hugging Face ViT has no layer scale; use --to timm or npz')
    if 'reg' in params:
        raise CheckpointError('Hugging Face ViT has no register tokens; use --to timm or npz')
    if 'fc_norm' in params:
        raise CheckpointError('Hugging Face ViT normalises before the pooling (no fc_norm); '
                              'use --to timm or npz')
    if 'cls' not in params or config.classifier != 'token':
        raise CheckpointError("Hugging Face ViT needs classifier='token'; use --to npz or timm")
    if 'head' not in params and 'pre_logits' not in params:
        raise CheckpointError('Hugging Face ViTForImageClassification needs a head; pass --num-classes N')
    if len(set(config.patches.size)) != 1:
        raise CheckpointError(f'Hugging Face ViT needs square patches, got {tuple(config.patches.size)}')

def hf_files_bytes(params: Mapping[str, Any], config: Any, class_names: Sequence[str] | None = None,
                   eval_pp: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """The files of a Hugging Face ViTForImageClassification directory, or of a ViTModel whose pooler
    is the pre_logits layer (a model with pre_logits and no head); with a distillation token, DeiT's
    (DeiTForImageClassificationWithTeacher with both heads, DeiTForImageClassification with the class
    token's alone, DeiTModel with its pooler): config.json (with `class_names` as
    id2label), model.safetensors, and preprocessor_config.json (`hf_preprocessor`), so that
    `transformers.pipeline('image-classification', model=directory)` runs it as vit-predict does."""
    check_exportable(params, config)
    table = (_HF_EXPORT if 'dist' not in params else
             _HF_DEIT_TEACHER_EXPORT if 'head_dist' in params else _HF_DEIT_EXPORT)
    sd = tensors.to_source_names(tensors.canonical_from_linen(params, qkv=False), table)
    if 'pre_logits' in params:   # ViTModel / DeiTModel: their own names have no `vit.` / `deit.` prefix
        sd = {re.sub(r'^(vit|deit)\.', '', k): v for k, v in sd.items()}
    preprocessor = hf_preprocessor(arch.image_size(params, config), eval_pp)
    return {'config.json': json.dumps(_hf_config(params, config, class_names), indent=2).encode(),
            'model.safetensors': tensors.safetensors_bytes(sd, {'format': 'pt'}),
            'preprocessor_config.json': json.dumps(preprocessor, indent=2).encode()}


def hf_preprocessor(image_size: int, eval_pp: Mapping[str, Any] | None = None) -> dict:
    """vit_jax's eval preprocessing as a transformers image processor: a bilinear resize of the
    whole image to `image_size` (ViTImageProcessor), or, for a vit-train workdir that evaluated with
    a center crop (`eval_pp`), a resize to pp.resize and the central crop (DeiTImageProcessor); then
    (x / 255 - 0.5) / 0.5 = (x - 127.5) / 127.5. (PIL's resize, which transformers uses, smooths when
    it shrinks and TensorFlow's does not: pixels differ slightly when an image is resized down.)"""
    common = {'do_resize': True, 'resample': 2, 'do_rescale': True, 'rescale_factor': 1 / 255,
              'do_normalize': True, 'image_mean': [0.5, 0.5, 0.5], 'image_std': [0.5, 0.5, 0.5]}
    if eval_pp and eval_pp.get('eval_crop') == 'center' and eval_pp.get('resize'):
        resize = int(eval_pp['resize'])
        return {'image_processor_type': 'DeiTImageProcessor', **common,
                'size': {'height': resize, 'width': resize}, 'do_center_crop': True,
                'crop_size': {'height': image_size, 'width': image_size}}
    return {'image_processor_type': 'ViTImageProcessor', **common,
            'size': {'height': image_size, 'width': image_size}}


def hf_eval_pp(path: str) -> dict | None:
    """The center crop of an HF directory's preprocessor_config.json (as `hf_preprocessor` writes it,
    DeiT's): {'crop', 'eval_crop': 'center', 'resize'} in a vit-train workdir's terms; None without
    one (a whole-image resize)."""
    config_path, _ = hf_files(path)
    processor_path = paths.join(paths.parent(config_path), 'preprocessor_config.json')
    processor = tensors.read_json(processor_path) if paths.is_file(processor_path) else {}
    _warn_hf_normalisation(processor_path, processor)
    size, crop = processor.get('size') or {}, processor.get('crop_size') or {}
    if not (processor.get('do_center_crop') and processor.get('do_resize', True)):
        return None
    square = size.get('height') and size.get('height') == size.get('width')
    if not (square and crop.get('height') == crop.get('width')):
        warnings.warn(f'{processor_path}: its center crop of a {size} resize is not one vit_jax '
                      'preprocessing expresses; vit_jax resizes whole images to the model size instead',
                      stacklevel=2)
        return None
    return {'crop': int(crop['height']), 'eval_crop': 'center', 'resize': int(size['height'])}


def _warn_hf_normalisation(processor_path: str, processor: Mapping[str, Any]) -> None:
    """Warns when an image processor normalises pixels otherwise than vit_jax ((x - 127.5) / 127.5, i.e.
    mean = std = 0.5; DeiT and DINOv2 publish ImageNet's): vit_jax's preprocessing does not follow it."""
    if not processor.get('do_normalize', True) or not ('image_mean' in processor or 'image_std' in processor):
        return
    tensors.warn_normalisation(f'{processor_path}:', 'image_mean', 'image_std', processor, "transformers'")


def hf_class_names(path: str) -> list[str] | None:
    """The class names of an HF directory's config.json (`id2label`), None where it has only
    transformers' placeholders (LABEL_0, ...) or none."""
    config_path, _ = hf_files(path)
    id2label = _hf_field(config_path, tensors.read_json(config_path), 'id2label', {}, dict)
    try:
        names = [str(id2label[str(i)]) for i in range(len(id2label))]
    except KeyError:
        raise CheckpointError(f'{config_path}: id2label keys are not 0..{len(id2label) - 1}') from None
    return None if names == [f'LABEL_{i}' for i in range(len(names))] or not names else names


HF_SIGLIP_VOCAB = 'spiece.model'   # SiglipTokenizer's SentencePiece model in an HF directory


def hf_siglip_tokenizer(path: str, vocab: str | None = None) -> dict[str, Any]:
    """The SentencePiece tokenizer of an HF SiglipModel directory, as `SentencepieceTokenizer` fields:
    `vocab_path` (`vocab`, else the directory's spiece.model; neither: a CheckpointError naming both),
    `lower`, `eos_piece`, `pad_piece` and `max_len` (None where unrecorded) from its tokenizer_config.json
    (`do_lower_case`, `eos_token`, `pad_token`, `model_max_length`; absent: SiglipTokenizer's defaults,
    lower-cased, </s> for both). Another tokenizer class (SigLIP 2's Gemma tokenizer) is refused by name."""
    config_path, _ = hf_files(path)
    directory = paths.parent(config_path)
    where = paths.join(directory, 'tokenizer_config.json')
    record = tensors.read_json(where) if paths.exists(where) else {}
    name = record.get('tokenizer_class', 'SiglipTokenizer')
    if name not in ('SiglipTokenizer', 'SiglipTokenizerFast'):
        raise CheckpointError(f'{where}: tokenizer_class={name!r} is not supported (SiglipTokenizer, a '
                              f'SentencePiece {HF_SIGLIP_VOCAB}, is)')
    vocab_path = vocab or paths.join(directory, HF_SIGLIP_VOCAB)
    if not paths.exists(vocab_path):
        raise CheckpointError(f'{directory}: no {HF_SIGLIP_VOCAB} (the SentencePiece model of the text '
                              'tower): give --vocab FILE')

    def piece(key: str) -> str:
        value = record.get(key, '</s>')
        value = value.get('content') if isinstance(value, dict) else value
        if not isinstance(value, str) or not value:
            raise CheckpointError(f'{where}: {key}={record[key]!r} is not a token')
        return value

    max_len = record.get('model_max_length')
    if max_len is not None:
        max_len = _hf_field(where, record, 'model_max_length', None, int)
    return dict(vocab_path=vocab_path, lower=_hf_field(where, record, 'do_lower_case', True, bool),
                eos_piece=piece('eos_token'), pad_piece=piece('pad_token'),
                max_len=max_len if max_len is None or max_len < 10 ** 6 else None)   # (1e30: no limit)


def _hf_config(params: Mapping[str, Any], config: Any, class_names: Sequence[str] | None = None) -> dict:
    patch = tuple(config.patches.size)
    classes = arch.num_classes(params)
    names = [f'LABEL_{i}' for i in range(classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != classes:
        raise CheckpointError(f'{len(names)} class names for a {classes}-class head')
    t = config.transformer
    eps, approx = arch.numerics(config)
    pooler = {}
    if 'pre_logits' in params:
        pooler = {'pooler_act': 'tanh',
                  'pooler_output_size': int(np.shape(params['pre_logits']['kernel'])[1])}
    if 'dist' in params:
        model_type, name = 'deit', ('DeiTModel' if pooler else 'DeiTForImageClassificationWithTeacher'
                                    if 'head_dist' in params else 'DeiTForImageClassification')
    else:
        model_type, name = 'vit', 'ViTModel' if pooler else 'ViTForImageClassification'
    return {
        'architectures': [name], 'model_type': model_type,
        **pooler,
        'hidden_size': int(config.hidden_size), 'num_hidden_layers': int(t.num_layers),
        'num_attention_heads': int(t.num_heads), 'intermediate_size': int(t.mlp_dim),
        'hidden_act': 'gelu_pytorch_tanh' if approx else 'gelu', 'layer_norm_eps': eps,
        'hidden_dropout_prob': float(t.get('dropout_rate', 0.0)),
        'attention_probs_dropout_prob': float(t.get('attention_dropout_rate', 0.0)),
        'initializer_range': 0.02, 'image_size': arch.image_size(params, config), 'patch_size': int(patch[0]),
        'num_channels': 3, 'qkv_bias': True, 'encoder_stride': int(patch[0]),
        'id2label': {str(i): name for i, name in enumerate(names)},
        'label2id': {name: i for i, name in enumerate(names)}, 'torch_dtype': 'float32'}
