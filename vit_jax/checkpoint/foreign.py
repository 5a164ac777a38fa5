"""timm and Hugging Face ViT (and DeiT, DINOv2, SigLIP vision) weights: reading them into the Linen
tree, writing them back.

All are read through one canonical "torch-style" naming (cls, pos, patch, {i}.{ln1,q,k,v,o,
ln2,fc1,fc2}, norm, pre_logits, head; Linear weights [out, in]): timm's `attn.qkv` is q, k, v
concatenated, conv weights are OIHW (ours HWIO). Files are read through `vit_jax.paths` (local
or gs://): safetensors (never a pickle), `.pth`/`.bin` only through `torch.load(weights_only=True)`.
Hugging Face directories carry their numerics in config.json (LayerNorm epsilon, GELU form); timm
has eps 1e-6 built in. A timm state dict does not record its heads or pooling: they come from the
config.json timm saves beside it (its `architecture`, whose registered defaults its `model_args`
override: `timm_model_facts`), our own export's metadata (the same record), or the caller, never
from a guess; every fact is checked against the weights. timm exports strict-load into
`timm.create_model(architecture, **model_args)` of the config they are written with (`timm_config`).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from vit_jax import paths, trees
from vit_jax.checkpoint import arch
from vit_jax.errors import CheckpointError
from vit_jax.models import family

HF_GELU = {'gelu': False, 'gelu_pytorch_tanh': True, 'gelu_new': True}
HF_LAYER_NORM_EPS = 1e-12   # transformers' ViTConfig default
TIMM_LAYER_NORM_EPS = 1e-6  # built into timm's VisionTransformer (with exact GELU)
META_PREFIX = 'vit_jax.'    # safetensors metadata keys of our own timm export

# --- Canonical "torch-style" names: one table per source format ----------------------------
# Canonical keys: cls, dist (DeiT's distillation token), reg, pos, patch.{w,b},
# {i}.{ln1,q,k,v,o,ln2,fc1,fc2}.{w,b}, {i}.{ls1,ls2} (layer scale), norm.{w,b}, fc_norm.{w,b}, the
# attention-pooling head map_probe, map_{q,k,v,o,ln,fc1,fc2}.{w,b} (`map_kv` / `map_qkv`: k, v / q, k,
# v concatenated), pre_logits.{w,b}, head.{w,b}, head_dist.{w,b}; the q/k/v/o/fc weights are torch
# Linear [out, in].
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
_TIMM_NAMES = [
    (r'cls_token', 'cls'),
    (r'reg_token', 'reg'),
    (r'dist_token', 'dist'),
    (r'pos_embed', 'pos'),
    (r'patch_embed\.proj\.(weight|bias)', r'patch.\1'),
    (r'blocks\.(\d+)\.norm1\.(weight|bias)', r'\1.ln1.\2'),
    (r'blocks\.(\d+)\.attn\.qkv\.(weight|bias)', r'\1.qkv.\2'),
    (r'blocks\.(\d+)\.attn\.proj\.(weight|bias)', r'\1.o.\2'),
    (r'blocks\.(\d+)\.norm2\.(weight|bias)', r'\1.ln2.\2'),
    (r'blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)', r'\1.\2.\3'),
    (r'blocks\.(\d+)\.(ls1|ls2)\.gamma', r'\1.\2'),
    (r'norm\.(weight|bias)', r'norm.\1'),
    (r'fc_norm\.(weight|bias)', r'fc_norm.\1'),
    (r'attn_pool\.latent', 'map_probe'),
    (r'attn_pool\.(q|kv)\.(weight|bias)', r'map_\1.\2'),
    (r'attn_pool\.proj\.(weight|bias)', r'map_o.\1'),
    (r'attn_pool\.norm\.(weight|bias)', r'map_ln.\1'),
    (r'attn_pool\.mlp\.(fc1|fc2)\.(weight|bias)', r'map_\1.\2'),
    (r'pre_logits\.fc\.(weight|bias)', r'pre_logits.\1'),
    (r'head\.(weight|bias)', r'head.\1'),
    (r'head_dist\.(weight|bias)', r'head_dist.\1'),
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
_TIMM_EXPORT = {
    'cls': 'cls_token', 'dist': 'dist_token', 'reg': 'reg_token', 'pos': 'pos_embed',
    'patch': 'patch_embed.proj',
    'qkv': 'blocks.{i}.attn.qkv',
    'o': 'blocks.{i}.attn.proj', 'fc1': 'blocks.{i}.mlp.fc1', 'fc2': 'blocks.{i}.mlp.fc2',
    'ln1': 'blocks.{i}.norm1', 'ln2': 'blocks.{i}.norm2', 'ls1': 'blocks.{i}.ls1.gamma',
    'ls2': 'blocks.{i}.ls2.gamma', 'norm': 'norm', 'fc_norm': 'fc_norm', 'head': 'head',
    'head_dist': 'head_dist', 'map_probe': 'attn_pool.latent', 'map_q': 'attn_pool.q',
    'map_kv': 'attn_pool.kv', 'map_o': 'attn_pool.proj', 'map_ln': 'attn_pool.norm',
    'map_fc1': 'attn_pool.mlp.fc1', 'map_fc2': 'attn_pool.mlp.fc2'}


# Weights of features vit_jax does not have, named where the architecture name does not settle it.
_UNSUPPORTED_FEATURES = (
    (r'(^|[._])(rope|freqs)', 'rotary position embedding'),
    (r'(^|\.)(mlp|ffn)\.(fc1_g|fc1_x|w12|w3|weights_in|weights_out|gate_proj|up_proj|down_proj)\.',
     'SwiGLU MLP'),
    # timm's Eva (EVA-02, the rope ViTs): rotary embeddings in buffers it does not save, and these.
    (r'\.attn\.(q_bias|v_bias)$|\.gamma_[12]$',
     "an EVA block (timm's Eva: separate q/v biases, gamma_1/2; with rotary position embedding)"),
    (r'^norm_pre\.', "a LayerNorm before the blocks (timm's pre_norm, CLIP's)"),
    (r'\.attn\.(q_norm|k_norm)\.', 'query/key normalisation (qk_norm)'),
)


def _rename(sd: Mapping[str, np.ndarray], table: Sequence[tuple[str, str]], source: str,
            ignore: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Source names -> canonical names; unknown keys are an error naming them."""
    out, unknown = {}, []
    for key, value in sd.items():
        for pattern, repl in table:
            if re.fullmatch(pattern, key):
                name = re.sub(pattern, repl, key).replace('.weight', '.w').replace('.bias', '.b')
                out[name] = np.asarray(value)
                break
        else:
            if not any(re.fullmatch(p, key) for p in ignore):
                unknown.append(key)
    if unknown:
        for pattern, feature in _UNSUPPORTED_FEATURES:
            named = [k for k in unknown if re.search(pattern, k)]
            if named:
                raise CheckpointError(f'{source}: {feature} is not supported ({", ".join(sorted(named)[:3])}'
                                      f'{" ..." if len(named) > 3 else ""})')
        raise CheckpointError(f'{source}: unsupported keys for a ViT ({", ".join(sorted(unknown)[:6])}'
                              f'{" ..." if len(unknown) > 6 else ""}): this architecture variant is not a '
                              'vit_jax VisionTransformer')
    return out


# --- Canonical <-> Linen ----------------------------------------------------------------------

def _linen_from_canonical(c: dict[str, np.ndarray], num_heads: int, source: str,
                          no_embed_class: bool | None = None) -> dict:
    """Canonical torch-style weights -> the VisionTransformer parameter tree. `no_embed_class`: whether
    the position embedding has rows for the patches only (timm's), where the source records it; else
    its row count says, refused when either reading fits."""
    try:
        w = c.pop('patch.w')
        d = w.shape[0]
        if num_heads < 1 or d % num_heads:
            raise CheckpointError(f'{source}: hidden size {d} is not divisible by num_heads={num_heads}')
        params: dict[str, Any] = {'embedding': {'kernel': w.transpose(2, 3, 1, 0),
                                                'bias': c.pop('patch.b', np.zeros(d, w.dtype))}}
        for name in ('cls', 'dist', 'reg'):
            if name in c:
                params[name] = c.pop(name)
        pos = c.pop('pos')
        prefix = ('cls' in params) + ('dist' in params) + (params['reg'].shape[1] if 'reg' in params else 0)
        square = lambda n: n > 0 and round(np.sqrt(n)) ** 2 == n  # noqa: E731
        if no_embed_class is None and prefix and square(pos.shape[1]):
            if square(pos.shape[1] - prefix):   # 2g+1 <= prefix: a tiny grid, either reading fits
                raise CheckpointError(f'{source}: pos_embed has {pos.shape[1]} rows: a square grid with or '
                                      f'without the {prefix} class/register rows; cannot tell which')
            no_embed_class = True
        if prefix and no_embed_class:
            # Patches only (timm `no_embed_class`): class token and registers get no position
            # embedding, i.e. zero rows.
            pos = np.concatenate([np.zeros_like(pos[:, :1]).repeat(prefix, axis=1), pos], axis=1)
        enc: dict[str, Any] = {'posembed_input': {'pos_embedding': pos}}
        layers = sorted({int(k.split('.')[0]) for k in c if k.split('.')[0].isdigit()})
        if layers != list(range(len(layers))) or not layers:
            raise CheckpointError(f'{source}: transformer blocks {layers} are not numbered 0..L-1')
        for i in layers:
            fc1, fc2 = c.get(f'{i}.fc1.w'), c.get(f'{i}.fc2.w')
            if fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]:
                raise CheckpointError(f'{source}: SwiGLU MLP is not supported (block {i}: fc1 has '
                                      f'{fc1.shape[0]} outputs, twice the {fc2.shape[1]} inputs of fc2)')
            enc[f'encoderblock_{i}'] = _encoder_block(c, i, num_heads, d)
            for n, name in (('ls1', 'LayerScale_0'), ('ls2', 'LayerScale_1')):
                if f'{i}.{n}' in c:
                    enc[f'encoderblock_{i}'][name] = {'scale': c.pop(f'{i}.{n}')}
        for key, tree, name in (('norm', enc, 'encoder_norm'), ('fc_norm', params, 'fc_norm')):
            if f'{key}.w' in c:   # timm with fc_norm has no `norm` (Identity)
                tree[name] = {'scale': c.pop(f'{key}.w'), 'bias': c.pop(f'{key}.b')}
        params['Transformer'] = enc
        if 'map_probe' in c:   # attention pooling: timm's AttentionPoolLatent, big_vision's MAPHead
            ln, dense = _norm_dense(c, 'map_')
            params['MAPHead_0'] = {
                'probe': c.pop('map_probe'),
                'MultiHeadDotProductAttention_0': _attention(c, 'map_', num_heads, d),
                'LayerNorm_0': ln('ln'), 'MlpBlock_0': {'Dense_0': dense('fc1'), 'Dense_1': dense('fc2')}}
        for name in ('pre_logits', 'head', 'head_dist'):
            if f'{name}.w' in c:
                params[name] = {'kernel': c.pop(f'{name}.w').T, 'bias': c.pop(f'{name}.b')}
    except KeyError as e:
        raise CheckpointError(f'{source}: missing weight for {e.args[0]!r}') from None
    except ValueError as e:
        raise CheckpointError(f'{source}: inconsistent shapes ({e})') from None
    if c:
        raise CheckpointError(f'{source}: unused weights {sorted(c)[:6]}')
    return jax.tree_util.tree_map(np.ascontiguousarray, params)


def _encoder_block(c: dict[str, np.ndarray], i: int, num_heads: int, d: int) -> dict:
    """Canonical block `i` ({i}.{ln1,q,k,v,o,ln2,fc1,fc2}) -> the Linen `Encoder1DBlock` tree."""
    ln, dense = _norm_dense(c, f'{i}.')
    return {'LayerNorm_0': ln('ln1'), 'MultiHeadDotProductAttention_0': _attention(c, f'{i}.', num_heads, d),
            'LayerNorm_1': ln('ln2'), 'MlpBlock_0': {'Dense_0': dense('fc1'), 'Dense_1': dense('fc2')}}


def _norm_dense(c: dict[str, np.ndarray], prefix: str):
    """(LayerNorm, Dense) readers that pop canonical `<prefix><name>.{w,b}` into Linen's layout."""
    ln = lambda n: {'scale': c.pop(f'{prefix}{n}.w'), 'bias': c.pop(f'{prefix}{n}.b')}  # noqa: E731
    dense = lambda n: {'kernel': c.pop(f'{prefix}{n}.w').T, 'bias': c.pop(f'{prefix}{n}.b')}  # noqa: E731
    return ln, dense


def _attention(c: dict[str, np.ndarray], prefix: str, num_heads: int, d: int) -> dict:
    """Canonical `<prefix>{q,k,v,o}` (or q, k, v concatenated as `qkv`, k, v as `kv`) -> the Linen
    MultiHeadDotProductAttention tree ([D, heads, head_dim] kernels). No q/k/v biases (timm
    qkv_bias=False) are zero biases, which compute the same."""
    for fused, names in (('qkv', 'qkv'), ('kv', 'kv')):
        for part in ('w', 'b'):
            if f'{prefix}{fused}.{part}' in c:
                chunks = np.split(c.pop(f'{prefix}{fused}.{part}'), len(names), axis=0)
                c.update({f'{prefix}{n}.{part}': x for n, x in zip(names, chunks, strict=True)})
    hd = d // num_heads
    attn = {}
    for n, name in (('q', 'query'), ('k', 'key'), ('v', 'value')):
        kernel = c.pop(f'{prefix}{n}.w').T.reshape(d, num_heads, hd)
        bias = c.pop(f'{prefix}{n}.b', np.zeros(d, kernel.dtype)).reshape(num_heads, hd)
        attn[name] = {'kernel': kernel, 'bias': bias}
    attn['out'] = {'kernel': c.pop(f'{prefix}o.w').T.reshape(num_heads, hd, d), 'bias': c.pop(f'{prefix}o.b')}
    return attn


def _canonical_from_linen(params: Mapping[str, Any], qkv: bool) -> dict[str, np.ndarray]:
    """The VisionTransformer parameter tree -> canonical torch-style weights."""
    p = jax.tree_util.tree_map(np.asarray, dict(params))
    c = {'patch.w': p['embedding']['kernel'].transpose(3, 2, 0, 1), 'patch.b': p['embedding']['bias'],
         'pos': p['Transformer']['posembed_input']['pos_embedding']}
    for name in ('cls', 'dist', 'reg'):
        if name in p:
            c[name] = p[name]

    def attention(attn, prefix, fused):
        names = dict(zip('qkv', ('query', 'key', 'value'), strict=True))
        w = {n: attn[x]['kernel'].reshape(len(attn[x]['kernel']), -1).T for n, x in names.items()}
        b = {n: attn[x]['bias'].reshape(-1) for n, x in names.items()}
        if fused:   # 'qkv' (timm blocks) or 'kv' (timm's attention pooling)
            c[f'{prefix}{fused}.w'] = np.concatenate([w[n] for n in fused])
            c[f'{prefix}{fused}.b'] = np.concatenate([b[n] for n in fused])
        for n in 'qkv'.replace(fused, '') if fused else 'qkv':
            c[f'{prefix}{n}.w'], c[f'{prefix}{n}.b'] = w[n], b[n]
        out = attn['out']['kernel']
        c[f'{prefix}o.w'], c[f'{prefix}o.b'] = out.reshape(-1, out.shape[-1]).T, attn['out']['bias']

    def norm_mlp(tree, prefix, norms):
        for n, ln in norms:
            c[f'{prefix}{n}.w'], c[f'{prefix}{n}.b'] = tree[ln]['scale'], tree[ln]['bias']
        for n, dense in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
            c[f'{prefix}{n}.w'] = tree['MlpBlock_0'][dense]['kernel'].T
            c[f'{prefix}{n}.b'] = tree['MlpBlock_0'][dense]['bias']

    i = 0
    while (block := p['Transformer'].get(f'encoderblock_{i}')) is not None:
        attention(block['MultiHeadDotProductAttention_0'], f'{i}.', 'qkv' if qkv else '')
        norm_mlp(block, f'{i}.', (('ln1', 'LayerNorm_0'), ('ln2', 'LayerNorm_1')))
        for n, name in (('ls1', 'LayerScale_0'), ('ls2', 'LayerScale_1')):
            if name in block:
                c[f'{i}.{n}'] = block[name]['scale']
        i += 1
    for key, norm in (('norm', p['Transformer'].get('encoder_norm')), ('fc_norm', p.get('fc_norm'))):
        if norm is not None:
            c[f'{key}.w'], c[f'{key}.b'] = norm['scale'], norm['bias']
    if 'MAPHead_0' in p:
        head = p['MAPHead_0']
        c['map_probe'] = head['probe']
        attention(head['MultiHeadDotProductAttention_0'], 'map_', 'kv' if qkv else '')
        norm_mlp(head, 'map_', (('ln', 'LayerNorm_0'),))
    for name in ('pre_logits', 'head', 'head_dist'):
        if name in p:
            c[f'{name}.w'], c[f'{name}.b'] = p[name]['kernel'].T, p[name]['bias']
    return {k: np.ascontiguousarray(v) for k, v in c.items()}


def _to_source_names(c: Mapping[str, np.ndarray], table: Mapping[str, str]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in c.items():
        parts = key.split('.')
        i = parts[0] if parts[0].isdigit() else None
        stem = parts[1] if i is not None else parts[0]
        suffix = {'w': '.weight', 'b': '.bias'}.get(parts[-1], '') if len(parts) > (2 if i else 1) else ''
        out[table[stem].format(i=i) + suffix] = value
    return out


# --- Reading files ------------------------------------------------------------------------------

def _header(path: str) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes, `__metadata__`), nothing else."""
    try:
        with paths.open_read(path) as f:
            n = int.from_bytes(f.read(8), 'little')
            if not 2 <= n <= 100 * 2 ** 20:
                raise ValueError(f'header length {n}')
            return json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{path}: corrupt or truncated safetensors file ({e})') from None


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file (local: memory-mapped; remote: fetched)."""
    from safetensors import safe_open
    from safetensors.numpy import load

    try:
        if paths.is_remote(path):
            return load(paths.read_bytes(path)), dict(_header(path).get('__metadata__') or {})
        with safe_open(path, framework='np') as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise CheckpointError(f'{path}: corrupt or truncated safetensors file ({e})') from None


def _read_torch(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict loaded with `weights_only=True` (never arbitrary pickles)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f'{path}: reading .pth/.bin needs torch (pip install "vit_jax[torch]"), '
                              'or convert it to .safetensors') from None
    import pickle

    try:
        with paths.open_read(path) as f:
            sd = torch.load(f, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f'{path}: holds pickled objects other than tensors; refusing to load it '
                              '(torch.load(weights_only=True) rejected it)') from None
    except Exception as e:  # noqa: BLE001  (zip/EOF/runtime errors of torch's reader)
        raise CheckpointError(f'{path}: not a readable PyTorch file ({type(e).__name__}: '
                              f'{str(e).splitlines()[0] if str(e) else ""})') from None
    for key in ('model', 'state_dict', 'model_state_dict'):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f'{path}: not a state dict of tensors')
    return {k.removeprefix('module.'): (v.float() if v.dtype == torch.bfloat16 else v).numpy()
            for k, v in sd.items()}


def read_weights(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a .safetensors, a sharded .safetensors.index.json or a .pth/.bin."""
    if path.endswith('.safetensors.index.json'):
        try:
            shards = sorted(set(json.loads(paths.read_text(path))['weight_map'].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f'{path}: not a safetensors index ({type(e).__name__}: {e})') from None
        sd: dict[str, np.ndarray] = {}
        for shard in shards:
            sd.update(read_safetensors(paths.join(paths.parent(path), shard))[0])
        return sd, {}
    if path.endswith('.safetensors'):
        return read_safetensors(path)
    return _read_torch(path), {}


def weight_names(path: str) -> list[str]:
    """Tensor names of a weights file (safetensors: from the header only; torch: the whole file)."""
    if path.endswith('.safetensors'):
        return [k for k in _header(path) if k != '__metadata__']
    return list(read_weights(path)[0])


def weights_format(path: str, keys: Sequence[str]) -> str:
    """'hf' or 'timm' from the tensor names of a .safetensors / .pth / .bin file."""
    hf_starts = ('embeddings.', 'encoder.layer', 'layers.')
    if any(re.sub(r'^(vit|deit|dinov2_with_registers|dinov2|vision_model)\.', '', k).startswith(hf_starts)
           for k in keys):
        return 'hf'
    if any(k.removeprefix('module.').startswith(('patch_embed.', 'blocks.')) for k in keys):
        return 'timm'
    raise CheckpointError(f'{path}: neither timm nor Hugging Face ViT weights (keys: {list(keys)[:4]} ...)')


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


def _json(path: str) -> dict:
    try:
        value = json.loads(paths.read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(value, dict):
        raise CheckpointError(f'{path}: expected a JSON object, got {type(value).__name__}')
    return value


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
    hf = _json(config_path)
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
        canonical = _rename(sd, table, weights, ignore=[r'embeddings\.mask_token'])
        if model_type == 'deit' and 'dist' not in canonical:
            raise CheckpointError(f'{weights}: no embeddings.distillation_token (every DeiT has one)')
    _hf_check_qkv_bias(config_path, hf, canonical)
    # transformers' config defaults (num_attention_heads 12; layer_norm_eps 1e-12, DINOv2's 1e-6) are the
    # format's. Their position embeddings always have the class (and distillation) token rows.
    params = _linen_from_canonical(canonical, _hf_heads(config_path, hf, canonical), weights,
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
    canonical = _rename(sd, table, weights, ignore=[r'embeddings\.mask_token'])
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
    canonical = _rename(sd, _HF_SIGLIP_NAMES, weights)
    if np.ndim(canonical.get('pos')) == 2:   # an nn.Embedding [N, D]
        canonical['pos'] = canonical['pos'][None]
    params = _linen_from_canonical(canonical, _hf_heads(where, hf, canonical), weights)
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
    c = _rename(sd, _HF_SIGLIP_TEXT_NAMES, weights)
    try:
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
        encoder = {f'encoderblock_{i}': _encoder_block(c, i, heads, d) for i in layers}
        encoder['encoder_norm'] = {'scale': c.pop('norm.w'), 'bias': c.pop('norm.b')}
        params = {'Embed_0': {'embedding': c.pop('tok')}, 'pos_embedding': c.pop('pos')[None],
                  'Encoder_0': encoder, 'head': {'kernel': c.pop('head.w').T, 'bias': c.pop('head.b')}}
    except KeyError as e:
        raise CheckpointError(f'{weights}: missing text_model weight for {e.args[0]!r}') from None
    except ValueError as e:
        raise CheckpointError(f'{weights}: inconsistent text_model shapes ({e})') from None
    if c:
        raise CheckpointError(f'{weights}: unused text_model weights {sorted(c)[:6]}')
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


# timm's VisionTransformer architectures that vit_jax.models.VisionTransformer expresses exactly:
# name -> (width, depth, heads, patch, pooling, activation: 'gelu' exact or 'gelu_tanh'), read from the
# `model_args` of the @register_model functions in timm 1.0.29's models/vision_transformer.py and
# models/deit.py (`python scripts/check_timm_archs.py VISION_TRANSFORMER_PY DEIT_PY` compares them):
# every `vit_*` whose arguments are only size, heads and patch (class token + token pooling), or no
# class token with average pooling and no fc_norm (our classifier='gap'); and those that load exactly
# into the same tree: qkv_bias=False (vit_base_patch16_224_miil: zero q/k/v biases), no_embed_class=True
# (flexivit_*: a zero class-token slot in the position embedding), layer scale (init_values: the plus,
# 36x1, medium/betwixt gap and DINOv2 ViTs, DeiT-3, which also has no_embed_class), register tokens
# (reg_tokens: DINOv2-reg4, the reg*_gap ViTs), fc_norm (timm's default for average pooling; read from
# the weights), attention pooling (global_pool='map': timm's AttentionPoolLatent is big_vision's
# MAPHead; the SigLIP image towers, some with act_layer='gelu_tanh') and DeiT (the distilled ones with
# their distillation token and second head). The MLP ratio only sets the MLP width, which the weights
# hold. Any other argument (pre_norm, another MLP layer, qk_norm, rotary embeddings, ...) changes the
# computation: not listed.
TIMM_ARCHS = {
    'vit_tiny_patch16_224': (192, 12, 3, 16, 'token', 'gelu'),
    'vit_tiny_patch16_384': (192, 12, 3, 16, 'token', 'gelu'),
    'vit_small_patch32_224': (384, 12, 6, 32, 'token', 'gelu'),
    'vit_small_patch32_384': (384, 12, 6, 32, 'token', 'gelu'),
    'vit_small_patch16_224': (384, 12, 6, 16, 'token', 'gelu'),
    'vit_small_patch16_384': (384, 12, 6, 16, 'token', 'gelu'),
    'vit_small_patch8_224': (384, 12, 6, 8, 'token', 'gelu'),
    'vit_base_patch32_224': (768, 12, 12, 32, 'token', 'gelu'),
    'vit_base_patch32_384': (768, 12, 12, 32, 'token', 'gelu'),
    'vit_base_patch16_224': (768, 12, 12, 16, 'token', 'gelu'),
    'vit_base_patch16_384': (768, 12, 12, 16, 'token', 'gelu'),
    'vit_base_patch8_224': (768, 12, 12, 8, 'token', 'gelu'),
    'vit_large_patch32_224': (1024, 24, 16, 32, 'token', 'gelu'),
    'vit_large_patch32_384': (1024, 24, 16, 32, 'token', 'gelu'),
    'vit_large_patch16_224': (1024, 24, 16, 16, 'token', 'gelu'),
    'vit_large_patch16_384': (1024, 24, 16, 16, 'token', 'gelu'),
    'vit_large_patch14_224': (1024, 24, 16, 14, 'token', 'gelu'),
    'vit_huge_patch14_224': (1280, 32, 16, 14, 'token', 'gelu'),
    'vit_base_patch16_gap_224': (768, 12, 16, 16, 'avg', 'gelu'),
    'vit_huge_patch14_gap_224': (1280, 32, 16, 14, 'avg', 'gelu'),
    'vit_huge_patch16_gap_448': (1280, 32, 16, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_gap_224': (768, 12, 12, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_gap_256': (768, 12, 12, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_gap_384': (768, 12, 12, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_gap_512': (768, 12, 12, 16, 'avg', 'gelu'),
    'vit_large_patch16_siglip_gap_256': (1024, 24, 16, 16, 'avg', 'gelu'),
    'vit_large_patch16_siglip_gap_384': (1024, 24, 16, 16, 'avg', 'gelu'),
    'vit_base_patch16_224_miil': (768, 12, 12, 16, 'token', 'gelu'),      # qkv_bias=False
    'flexivit_small': (384, 12, 6, 16, 'token', 'gelu'),                  # no_embed_class=True (240 px)
    'flexivit_base': (768, 12, 12, 16, 'token', 'gelu'),
    'flexivit_large': (1024, 24, 16, 16, 'token', 'gelu'),
    'vit_base_patch32_plus_256': (896, 12, 14, 32, 'token', 'gelu'),      # layer scale (init_values=1e-5)
    'vit_base_patch16_plus_240': (896, 12, 14, 16, 'token', 'gelu'),
    'vit_small_patch16_36x1_224': (384, 36, 6, 16, 'token', 'gelu'),
    'vit_small_patch14_dinov2': (384, 12, 6, 14, 'token', 'gelu'),
    'vit_base_patch14_dinov2': (768, 12, 12, 14, 'token', 'gelu'),
    'vit_large_patch14_dinov2': (1024, 24, 16, 14, 'token', 'gelu'),
    'deit3_small_patch16_224': (384, 12, 6, 16, 'token', 'gelu'),         # layer scale + no_embed_class
    'deit3_small_patch16_384': (384, 12, 6, 16, 'token', 'gelu'),
    'deit3_medium_patch16_224': (512, 12, 8, 16, 'token', 'gelu'),
    'deit3_base_patch16_224': (768, 12, 12, 16, 'token', 'gelu'),
    'deit3_base_patch16_384': (768, 12, 12, 16, 'token', 'gelu'),
    'deit3_large_patch16_224': (1024, 24, 16, 16, 'token', 'gelu'),
    'deit3_large_patch16_384': (1024, 24, 16, 16, 'token', 'gelu'),
    'deit3_huge_patch14_224': (1280, 32, 16, 14, 'token', 'gelu'),
    'vit_small_patch14_reg4_dinov2': (384, 12, 6, 14, 'token', 'gelu'),   # + 4 registers, no_embed_class
    'vit_base_patch14_reg4_dinov2': (768, 12, 12, 14, 'token', 'gelu'),
    'vit_large_patch14_reg4_dinov2': (1024, 24, 16, 14, 'token', 'gelu'),
    'vit_medium_patch16_gap_240': (512, 12, 8, 16, 'avg', 'gelu'),        # qkv_bias=False + layer scale
    'vit_medium_patch16_gap_256': (512, 12, 8, 16, 'avg', 'gelu'),
    'vit_medium_patch16_gap_384': (512, 12, 8, 16, 'avg', 'gelu'),
    'vit_betwixt_patch16_gap_256': (640, 12, 10, 16, 'avg', 'gelu'),
    'vit_giant_patch16_gap_224': (1408, 40, 16, 16, 'avg', 'gelu'),  # mlp_ratio 48/11 (the MLP width is read)
    'vit_base_patch16_reg4_gap_256': (768, 12, 12, 16, 'avg', 'gelu'),  # registers + fc_norm (timm's default)
    'vit_little_patch16_reg4_gap_256': (320, 14, 5, 16, 'avg', 'gelu'),   # ... + layer scale
    'vit_medium_patch16_reg1_gap_256': (512, 12, 8, 16, 'avg', 'gelu'),
    'vit_medium_patch16_reg4_gap_256': (512, 12, 8, 16, 'avg', 'gelu'),
    'vit_mediumd_patch16_reg4_gap_256': (512, 20, 8, 16, 'avg', 'gelu'),
    'vit_mediumd_patch16_reg4_gap_384': (512, 20, 8, 16, 'avg', 'gelu'),
    'vit_betwixt_patch16_reg1_gap_256': (640, 12, 10, 16, 'avg', 'gelu'),
    'vit_betwixt_patch16_reg4_gap_256': (640, 12, 10, 16, 'avg', 'gelu'),
    'vit_betwixt_patch16_reg4_gap_384': (640, 12, 10, 16, 'avg', 'gelu'),
    'vit_base_patch16_siglip_224': (768, 12, 12, 16, 'map', 'gelu'),  # SigLIP image towers
    'vit_base_patch16_siglip_256': (768, 12, 12, 16, 'map', 'gelu'),
    'vit_base_patch16_siglip_384': (768, 12, 12, 16, 'map', 'gelu'),
    'vit_base_patch16_siglip_512': (768, 12, 12, 16, 'map', 'gelu'),
    'vit_base_patch32_siglip_256': (768, 12, 12, 32, 'map', 'gelu_tanh'),
    'vit_large_patch16_siglip_256': (1024, 24, 16, 16, 'map', 'gelu'),
    'vit_large_patch16_siglip_384': (1024, 24, 16, 16, 'map', 'gelu'),
    'vit_large_patch16_siglip_512': (1024, 24, 16, 16, 'map', 'gelu_tanh'),
    'vit_so400m_patch14_siglip_224': (1152, 27, 16, 14, 'map', 'gelu'),  # mlp_ratio 3.7362
    'vit_so400m_patch14_siglip_378': (1152, 27, 16, 14, 'map', 'gelu'),
    'vit_so400m_patch14_siglip_384': (1152, 27, 16, 14, 'map', 'gelu'),
    'vit_so400m_patch16_siglip_256': (1152, 27, 16, 16, 'map', 'gelu_tanh'),
    'vit_so400m_patch16_siglip_384': (1152, 27, 16, 16, 'map', 'gelu_tanh'),
    'vit_so400m_patch16_siglip_512': (1152, 27, 16, 16, 'map', 'gelu_tanh'),
    'vit_giantopt_patch16_siglip_256': (1536, 40, 16, 16, 'map', 'gelu_tanh'),
    'vit_giantopt_patch16_siglip_384': (1536, 40, 16, 16, 'map', 'gelu_tanh'),
    'vit_base_patch32_siglip_gap_256': (768, 12, 12, 32, 'avg', 'gelu_tanh'),
    'vit_large_patch16_siglip_gap_512': (1024, 24, 16, 16, 'avg', 'gelu_tanh'),
    'vit_so400m_patch14_siglip_gap_224': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch14_siglip_gap_378': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch14_siglip_gap_384': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch14_siglip_gap_448': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch14_siglip_gap_896': (1152, 27, 16, 14, 'avg', 'gelu'),
    'vit_so400m_patch16_siglip_gap_256': (1152, 27, 16, 16, 'avg', 'gelu_tanh'),
    'vit_so400m_patch16_siglip_gap_384': (1152, 27, 16, 16, 'avg', 'gelu_tanh'),
    'vit_so400m_patch16_siglip_gap_512': (1152, 27, 16, 16, 'avg', 'gelu_tanh'),
    'vit_giantopt_patch16_siglip_gap_256': (1536, 40, 16, 16, 'avg', 'gelu_tanh'),
    'vit_giantopt_patch16_siglip_gap_384': (1536, 40, 16, 16, 'avg', 'gelu_tanh'),
    'deit_tiny_patch16_224': (192, 12, 3, 16, 'token', 'gelu'),
    'deit_small_patch16_224': (384, 12, 6, 16, 'token', 'gelu'),
    'deit_base_patch16_224': (768, 12, 12, 16, 'token', 'gelu'),
    'deit_base_patch16_384': (768, 12, 12, 16, 'token', 'gelu'),
    'deit_tiny_distilled_patch16_224': (192, 12, 3, 16, 'token', 'gelu'),   # + distillation token
    'deit_small_distilled_patch16_224': (384, 12, 6, 16, 'token', 'gelu'),
    'deit_base_distilled_patch16_224': (768, 12, 12, 16, 'token', 'gelu'),
    'deit_base_distilled_patch16_384': (768, 12, 12, 16, 'token', 'gelu'),
}

POOLS = ('token', 'avg', 'map')
# Our export's record of itself (safetensors metadata): {"architecture": ..., "model_args": {...}}, what
# the config.json of a timm hub directory holds.
TIMM_RECORD = META_PREFIX + 'timm_config'


def timm_arch(name: str, where: str | None = None) -> dict[str, Any]:
    """The facts of timm architecture `name` (a pretrained tag after '.' is ignored); CheckpointError
    (naming `where`, the file that records the name) if vit_jax cannot express it exactly."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f'{where or "--arch"}: architecture must be a timm model name (a string), got '
                              f'{name!r}')
    base = name.split('.')[0]
    if base not in TIMM_ARCHS:
        raise CheckpointError(f'{where + ": " if where else ""}timm architecture {name!r} is not one vit_jax '
                              'loads exactly (vit-convert --list-archs lists those it does)')
    width, depth, heads, patch, pool, act = TIMM_ARCHS[base]
    return dict(name=base, width=width, depth=depth, num_heads=heads, patch=patch, pool=pool, act=act)


# --- timm's `model_args` (the kwargs of timm.create_model that config.json records) ------------------
# Those that only matter in training (dropout, initialisation).
_TIMM_TRAINING_ARGS = frozenset({'drop_rate', 'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate',
                                 'attn_drop_rate', 'drop_path_rate', 'weight_init', 'fix_init'})
# Those with one computation vit_jax has: the values it expresses, and the feature any other value means.
# (dynamic_img_size resamples the position embedding only for inputs of another size than img_size;
# vit_jax always feeds img_size.)
_TIMM_FIXED_ARGS = {
    'in_chans': ((3,), 'input channels other than 3'),
    'qk_norm': ((False, None), 'query/key normalisation (qk_norm)'),
    'scale_attn_norm': ((False, None), 'a norm inside the attention (scale_attn_norm)'),
    'scale_mlp_norm': ((False, None), 'a norm inside the MLP (scale_mlp_norm)'),
    'proj_bias': ((True, None), 'projections without biases (proj_bias=False)'),
    'pos_embed': (('learn', None), 'a position embedding other than a learned one'),
    'pre_norm': ((False, None), "a LayerNorm before the blocks (pre_norm, CLIP's)"),
    'final_norm': ((True, None), 'no final norm (final_norm=False)'),
    'pool_include_prefix': ((False, None), 'pooling over the prefix tokens too (pool_include_prefix)'),
    'dynamic_img_size': ((False, True, None), ''),
    'dynamic_img_pad': ((False, None), 'padding of inputs the patches do not tile (dynamic_img_pad)'),
    'norm_layer': ((None, 'layernorm'), "a norm layer other than timm's LayerNorm (eps 1e-6)"),
    'embed_layer': ((None, 'PatchEmbed'), 'another patch embedding (embed_layer)'),
    'embed_norm_layer': ((None,), 'a norm in the patch embedding (embed_norm_layer)'),
    'block_fn': ((None, 'Block'), 'another transformer block (block_fn)'),
    'attn_layer': ((None, 'Attention'), 'another attention layer (attn_layer)'),
    'mlp_layer': ((None, 'Mlp'), 'another MLP layer (mlp_layer)'),
}
_TIMM_ACTS = {None: 'gelu', 'gelu': 'gelu', 'gelu_tanh': 'gelu_tanh'}
_TIMM_POOL_CHOICES = ('token', 'avg', 'map')


def _unsupported(where: str, key: str, value: Any, feature: str) -> CheckpointError:
    return CheckpointError(f'{where}: model_args {key}={value!r}: {feature} is not supported')


def _size_arg(where: str, key: str, value: Any) -> int:
    """timm's int-or-pair img_size / patch_size as one int (vit_jax models are square)."""
    pair = value if isinstance(value, (list, tuple)) else [value, value]
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise CheckpointError(f'{where}: model_args {key}={value!r} is not a positive size (N or [N, N])')
    if pair[0] != pair[1]:
        raise _unsupported(where, key, value, 'a non-square size')
    return int(pair[0])


def timm_model_facts(arch_name: str, model_args: Any, where: str) -> tuple[dict[str, Any], set[str]]:
    """The facts of a timm VisionTransformer: the registered defaults of `arch_name` (`TIMM_ARCHS`)
    overridden by `model_args`, the kwargs the model was created with (as timm's config.json records
    them; `where` names that record in errors). Returns (facts, the facts model_args stated): `timm_arch`'s
    keys plus, where stated, class_token, no_embed_class, reg_tokens, qkv_bias, layer_scale, fc_norm,
    mlp_dim, img_size, num_classes. An argument vit_jax cannot express, or does not know, is refused
    by name (CheckpointError naming `where` and the key)."""
    if not isinstance(model_args, Mapping):
        raise CheckpointError(f'{where}: model_args must be a JSON object, got {type(model_args).__name__}')
    facts = timm_arch(arch_name, where)
    stated: set[str] = set()
    ratio = None
    for key, value in model_args.items():
        if key in _TIMM_TRAINING_ARGS:
            continue
        if 'rope' in key.lower():
            raise _unsupported(where, key, value, 'rotary position embedding')
        if key in _TIMM_FIXED_ARGS:
            allowed, feature = _TIMM_FIXED_ARGS[key]
            if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
                if key == 'mlp_layer' and 'glu' in str(value).lower():
                    feature = 'SwiGLU MLP'
                raise _unsupported(where, key, value, feature)
            continue
        if key in ('embed_dim', 'depth', 'num_heads', 'reg_tokens', 'num_classes'):
            low = 0 if key in ('reg_tokens', 'num_classes') else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise CheckpointError(f'{where}: model_args {key}={value!r} is not an integer >= {low}')
            name = {'embed_dim': 'width'}.get(key, key)
        elif key in ('img_size', 'patch_size'):
            value, name = _size_arg(where, key, value), {'patch_size': 'patch'}.get(key, key)
        elif key in ('qkv_bias', 'class_token', 'no_embed_class', 'fc_norm'):
            if not isinstance(value, bool) and not (key == 'fc_norm' and value is None):
                raise CheckpointError(f'{where}: model_args {key}={value!r} is not true or false')
            if value is None:   # fc_norm=None: timm's rule (with average pooling), the weights say which
                continue
            name = key
        elif key == 'init_values':
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise CheckpointError(f'{where}: model_args init_values={value!r} is not a number or null')
            value, name = bool(value), 'layer_scale'   # timm: LayerScale if init_values else Identity
        elif key == 'mlp_ratio':
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f'{where}: model_args mlp_ratio={value!r} is not a positive number')
            ratio = float(value)
            continue
        elif key == 'global_pool':
            if value not in _TIMM_POOL_CHOICES:
                raise _unsupported(where, key, value, 'a pooling other than token, avg or map')
            name = 'pool'
        elif key == 'act_layer':
            if not (value is None or isinstance(value, str)) or value not in _TIMM_ACTS:
                raise _unsupported(where, key, value, 'an activation other than gelu or gelu_tanh')
            value, name = _TIMM_ACTS[value], 'act'
        else:
            raise CheckpointError(f'{where}: model_args {key}={value!r} is not a timm VisionTransformer '
                                  'argument vit_jax knows; refusing to ignore it')
        facts[name] = value
        stated.add(name)
    if facts['width'] % facts['num_heads']:
        raise CheckpointError(f'{where}: num_heads={facts["num_heads"]} does not divide embed_dim='
                              f'{facts["width"]}')
    if ratio is not None:
        facts['mlp_dim'] = int(facts['width'] * ratio)   # timm's Block: int(dim * mlp_ratio)
        stated.add('mlp_dim')
    if facts.get('class_token') is False and facts['pool'] == 'token':
        raise CheckpointError(f'{where}: model_args class_token=False with token pooling (timm refuses it '
                              'too)')
    return facts, stated


def read_timm_config(path: str) -> dict:
    """timm's config.json (`save_for_hf`), its fields checked: `architecture` a name, `model_args`
    and `pretrained_cfg` objects, `global_pool` a string, `num_classes` an integer."""
    config = _json(path)
    checks = (('architecture', str, 'a timm model name (a string)'), ('model_args', Mapping, 'a JSON object'),
              ('pretrained_cfg', Mapping, 'a JSON object'), ('global_pool', str, 'a string'),
              ('num_classes', int, 'an integer'))
    for key, kind, what in checks:
        value = config.get(key)
        if key in config and (not isinstance(value, kind) or isinstance(value, bool) or value == ''):
            raise CheckpointError(f'{path}: {key} must be {what}, got {value!r}')
    return config


def timm_hub_weights(path: str) -> str | None:
    """The weights of a timm hub snapshot given as its directory or its config.json (timm's config.json
    names an `architecture`, Hugging Face's a `model_type`), else None."""
    if not (paths.is_dir(path) or paths.name(path) == 'config.json'):
        return None
    directory = path if paths.is_dir(path) else paths.parent(path)
    config_path = paths.join(directory, 'config.json')
    if not paths.is_file(config_path):
        return None
    config = _json(config_path)
    if 'architecture' not in config or 'model_type' in config:
        return None
    read_timm_config(config_path)
    for name in ('model.safetensors', 'pytorch_model.bin'):
        if paths.exists(paths.join(directory, name)):
            return paths.join(directory, name)
    raise CheckpointError(f'{directory}: a timm checkpoint (its config.json names an architecture) without '
                          'model.safetensors or pytorch_model.bin')


def _timm_record(path: str, meta: Mapping[str, str]) -> tuple[str, dict] | None:
    """(where, record) of what a timm file records of itself: the config.json beside it (timm's, with an
    `architecture`), else our export's metadata; None without either."""
    beside = paths.join(paths.parent(path), 'config.json')
    if paths.is_file(beside) and 'architecture' in _json(beside):
        return beside, read_timm_config(beside)
    if TIMM_RECORD in meta:
        try:
            record = json.loads(meta[TIMM_RECORD])
        except ValueError as e:
            raise CheckpointError(f'{path}: metadata {TIMM_RECORD} is not JSON ({e})') from None
        if not isinstance(record, dict) or not isinstance(record.get('architecture'), str):
            raise CheckpointError(f'{path}: metadata {TIMM_RECORD} names no architecture')
        return f'{path} (metadata)', record
    return None


def timm_class_names(path: str, meta: Mapping[str, str], num_classes: int) -> list[str] | None:
    """The class names a timm file records (config.json's `label_names`, else its pretrained_cfg's where
    they fit the head: a fine-tune keeps the pretrained_cfg of the model it started from), None without.
    Warns when its pretrained_cfg normalises pixels otherwise than vit_jax ((x - 127.5) / 127.5, i.e.
    mean = std = 0.5): vit_jax's preprocessing does not follow it."""
    record = _timm_record(path, meta)
    if record is None:
        return None
    where, config = record
    pretrained = config.get('pretrained_cfg') or {}
    fits = lambda names: (isinstance(names, list) and len(names) == num_classes  # noqa: E731
                          and all(isinstance(n, str) for n in names))
    names = config.get('label_names')
    if names is not None and not fits(names):
        raise CheckpointError(f'{where}: label_names must be {num_classes} strings (the head\'s classes)')
    if names is None and fits(pretrained.get('label_names')):
        names = pretrained['label_names']
    _warn_normalisation(f'{where}: pretrained_cfg', 'mean', 'std', pretrained, "timm's")
    return list(names) if names else None


def _warn_normalisation(where: str, mean_key: str, std_key: str, record: Mapping[str, Any], source: str
                        ) -> None:
    """Warns when a file records a pixel normalisation other than vit_jax's (x - 127.5) / 127.5, i.e.
    mean = std = 0.5 (timm's pretrained_cfg, an HF image processor): vit_jax does not follow it."""
    mean, std = record.get(mean_key, [0.5] * 3), record.get(std_key, [0.5] * 3)
    try:
        scaled = np.asarray([mean, std], float)
    except (TypeError, ValueError):
        raise CheckpointError(f'{where} {mean_key}/{std_key} ({mean!r}, {std!r}) are not numbers') from None
    if not np.allclose(scaled, 0.5):
        warnings.warn(f'{where} normalises pixels with {mean_key} {mean} and {std_key} {std}; vit_jax scales '
                      f'them to [-1, 1] (mean = std = 0.5), so its predictions differ from {source}',
                      stacklevel=4)


def _weight_facts(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """What a timm ViT state dict records of the facts of `timm_model_facts`."""
    w = sd.get('patch_embed.proj.weight')
    found: dict[str, Any] = {} if w is None else dict(width=int(np.shape(w)[0]), patch=int(np.shape(w)[-1]))
    found.update(depth=len({k.split('.')[1] for k in sd if k.startswith('blocks.')}),
                 class_token='cls_token' in sd, qkv_bias='blocks.0.attn.qkv.bias' in sd,
                 layer_scale='blocks.0.ls1.gamma' in sd, fc_norm='fc_norm.weight' in sd,
                 reg_tokens=int(np.shape(sd['reg_token'])[1]) if 'reg_token' in sd else 0,
                 num_classes=int(np.shape(sd['head.weight'])[0]) if 'head.weight' in sd else 0)
    if 'blocks.0.mlp.fc1.weight' in sd:
        found['mlp_dim'] = int(np.shape(sd['blocks.0.mlp.fc1.weight'])[0])
    if 'attn_pool.latent' in sd:
        found['pool'] = 'map'
    elif 'cls_token' not in sd:   # with a class token, either pooling is possible
        found['pool'] = 'avg'
    return found


def _timm_facts(path: str, sd: Mapping[str, np.ndarray], meta: Mapping[str, str], num_heads: int | None,
                pool: str | None, arch_name: str | None) -> dict[str, Any]:
    """The facts of a timm ViT state dict (num_heads, pool, approx: tanh GELU; no_embed_class and
    img_size where recorded). From what the file records of itself first (timm's config.json beside
    it: architecture, model_args, global_pool, num_classes; or our export's metadata), then the
    architecture name the caller gives, then the caller's `num_heads` / `pool`; never assumed. A
    caller's statement that contradicts the file is an error; every fact is checked against the weights."""
    record = _timm_record(path, meta)
    where, config = record if record else (None, {})
    recorded_arch = config.get('architecture')
    if arch_name and recorded_arch and arch_name.split('.')[0] != recorded_arch.split('.')[0]:
        raise CheckpointError(f'{path}: --arch {arch_name} but {where} records architecture {recorded_arch}')
    name = recorded_arch or arch_name
    stated, from_args = timm_model_facts(name, config.get('model_args') or {}, where or '--arch') if name \
        else ({}, set())
    origin = {k: f'{where} model_args' if k in from_args else f'timm architecture {stated["name"]}'
              for k in stated}
    root_pool = config.get('global_pool')
    if root_pool is not None and stated:   # the pooling the saved model had (timm: model.global_pool)
        if root_pool not in _TIMM_POOL_CHOICES:
            raise CheckpointError(f'{where}: global_pool={root_pool!r}: a pooling other than token, avg or '
                                  'map is not supported')
        if 'pool' in from_args and root_pool != stated['pool']:
            raise CheckpointError(f'{where}: global_pool {root_pool!r} but its model_args record global_pool='
                                  f'{stated["pool"]!r}')
        stated['pool'], origin['pool'] = root_pool, f'{where} global_pool'
    for key in ('num_classes',):
        if key in config and stated:
            stated[key], origin[key] = config[key], f'{where} {key}'
    # Our own export's metadata (files written before it recorded model_args): heads and pooling.
    meta_heads = meta.get(META_PREFIX + 'num_heads')
    if meta_heads is not None:
        if not meta_heads.isdigit() or int(meta_heads) < 1:
            raise CheckpointError(f'{path}: metadata {META_PREFIX}num_heads={meta_heads!r} is not an '
                                  'integer >= 1')
        meta_heads = int(meta_heads)
    meta_pool = {'token': 'token', 'gap': 'avg', 'map': 'map'}.get(meta.get(META_PREFIX + 'classifier', ''))
    if not stated:
        if meta_heads is not None:
            stated['num_heads'], origin['num_heads'] = meta_heads, f'{path} (metadata)'
        if meta_pool is not None:
            stated['pool'], origin['pool'] = meta_pool, f'{path} (metadata)'
    if num_heads and stated.get('num_heads', num_heads) != num_heads:
        raise CheckpointError(f'{path}: --num-heads {num_heads} but {origin["num_heads"]} has '
                              f'{stated["num_heads"]} heads')
    if pool is not None and pool not in POOLS:
        raise CheckpointError(f'{path}: pooling {pool!r} is not one of {", ".join(POOLS)}')
    if pool and 'attn_pool.latent' in sd and pool != 'map':
        raise CheckpointError(f'{path}: --pool {pool} but the weights have an attention-pooling head '
                              '(attn_pool)')
    if pool and stated.get('pool', pool) != pool:
        if recorded_arch is None and origin['pool'].startswith('timm architecture'):
            # The default of the caller's --arch, which a caller's --pool overrides (timm's global_pool=).
            stated['pool'], origin['pool'] = pool, '--pool'
        else:
            raise CheckpointError(f'{path}: --pool {pool} but {origin["pool"]} has {stated["pool"]}')
    if name:
        distilled = 'distilled' in stated['name']
        if distilled != ('dist_token' in sd):
            raise CheckpointError(f'{path}: the weights have {"a" if "dist_token" in sd else "no"} '
                                  f'distillation token but timm architecture {stated["name"]} has '
                                  f'{"one" if distilled else "none"}')
    for key, value in _weight_facts(sd).items():
        if key in stated and value != stated[key] and origin[key] != '--pool':
            raise CheckpointError(f'{path}: the weights have {key} {value} but {origin[key]} has '
                                  f'{stated[key]}')
    heads = num_heads or stated.get('num_heads')
    pool = pool or ('map' if 'attn_pool.latent' in sd else None) or stated.get('pool')
    missing = [what for what, value in (('the number of attention heads (--num-heads N)', heads),
                                        ('the pooling (--pool token|avg|map)', pool)) if value is None]
    if missing:
        raise CheckpointError(f'{path}: timm state dicts record neither {" nor ".join(missing)}; give the '
                              'timm architecture (--arch NAME, e.g. vit_base_patch16_224; '
                              'vit-convert --list-archs) or state them')
    if pool == 'token' and 'cls_token' not in sd:
        raise CheckpointError(f'{path}: token pooling but the weights have no cls_token')
    if pool == 'map' and 'attn_pool.latent' not in sd:
        raise CheckpointError(f'{path}: attention pooling but the weights have no attn_pool')
    # The GELU form: the file's record (its architecture and act_layer), else our export's metadata, else
    # the caller's architecture, else timm's default (exact).
    gelu = meta.get(META_PREFIX + 'gelu_approximate')
    if record is None and gelu is not None:
        approx = gelu == 'true'
    else:
        approx = stated.get('act') == 'gelu_tanh'
    return dict(num_heads=heads, pool=pool, approx=approx, no_embed_class=stated.get('no_embed_class'),
                img_size=stated.get('img_size'), where=origin.get('img_size'))


def read_timm(path: str, sd: Mapping[str, np.ndarray], meta: Mapping[str, str],
              num_heads: int | None = None, pool: str | None = None, arch_name: str | None = None
              ) -> tuple[ml_collections.ConfigDict, dict]:
    """(model_config, params) of a timm VisionTransformer (or MlpMixer) state dict."""
    sd = {k.removeprefix('module.'): v for k, v in sd.items()}
    if 'stem.proj.weight' in sd:
        return read_timm_mixer(path, sd, meta)
    facts = _timm_facts(path, sd, meta, num_heads, pool, arch_name)
    canonical = _rename(sd, _TIMM_NAMES, path)
    params = _linen_from_canonical(canonical, facts['num_heads'], path, facts['no_embed_class'])
    eps = float(meta.get(META_PREFIX + 'layer_norm_eps', TIMM_LAYER_NORM_EPS))
    classifier = {'token': 'token', 'avg': 'gap', 'map': 'map'}[facts['pool']]
    config = arch.infer_config(params, layer_norm_eps=eps, gelu_approximate=facts['approx'],
                               classifier=classifier, source=path)
    size = facts['img_size']
    if size is not None and arch.image_size(params, config) != size:
        raise CheckpointError(f'{path}: the position embedding is for {arch.image_size(params, config)}'
                              f'-pixel images but {facts["where"]} has img_size {size}')
    return config, params


# --- MLP-Mixer: timm's MlpMixer (mixer_b16_224 ...) <-> the original's tree -------------------------
# timm: stem.proj (conv, OIHW), blocks.{i}.{norm1, mlp_tokens.fc{1,2}, norm2, mlp_channels.fc{1,2}},
# norm, head; LayerNorm eps 1e-6 and exact GELU built in. Ours: stem (HWIO), MixerBlock_{i}/
# {LayerNorm_0, token_mixing/Dense_{0,1}, LayerNorm_1, channel_mixing/Dense_{0,1}},
# pre_head_layer_norm, head. Linear weights are [out, in] there, kernels [in, out] here.
_MIXER_BLOCK = {'norm1': 'LayerNorm_0', 'norm2': 'LayerNorm_1', 'mlp_tokens.fc1': 'token_mixing/Dense_0',
                'mlp_tokens.fc2': 'token_mixing/Dense_1', 'mlp_channels.fc1': 'channel_mixing/Dense_0',
                'mlp_channels.fc2': 'channel_mixing/Dense_1'}


def _mixer_pairs(depth: int) -> list[tuple[str, str, str]]:
    """(timm module, our module, kind) for every module of a depth-`depth` Mixer."""
    pairs = [('stem.proj', 'stem', 'conv'), ('norm', 'pre_head_layer_norm', 'norm'),
             ('head', 'head', 'dense')]
    for i in range(depth):
        for theirs, ours in _MIXER_BLOCK.items():
            kind = 'norm' if 'norm' in theirs else 'dense'
            pairs.append((f'blocks.{i}.{theirs}', f'MixerBlock_{i}/{ours}', kind))
    return pairs


def read_timm_mixer(path: str, sd: Mapping[str, np.ndarray], meta: Mapping[str, str]
                    ) -> tuple[ml_collections.ConfigDict, dict]:
    """(model_config, params) of a timm MlpMixer state dict."""
    depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
    flat, used = {}, set()
    try:
        for theirs, ours, kind in _mixer_pairs(depth):
            if kind == 'dense' and f'{theirs}.weight' not in sd and theirs == 'head':
                continue   # no classifier
            w, b = np.asarray(sd[f'{theirs}.weight']), np.asarray(sd[f'{theirs}.bias'])
            used |= {f'{theirs}.weight', f'{theirs}.bias'}
            if kind == 'conv':
                flat[f'{ours}/kernel'] = w.transpose(2, 3, 1, 0)
            elif kind == 'dense':
                flat[f'{ours}/kernel'] = w.T
            else:
                flat[f'{ours}/scale'] = w
            flat[f'{ours}/bias'] = b
    except KeyError as e:
        raise CheckpointError(f'{path}: missing weight {e.args[0]!r} of a timm MlpMixer') from None
    if set(sd) - used:
        unknown = ', '.join(sorted(set(sd) - used)[:6])
        raise CheckpointError(f'{path}: unsupported keys for an MLP-Mixer ({unknown})')
    params = jax.tree_util.tree_map(np.ascontiguousarray, trees.unflatten(flat, source=path))
    eps = float(meta.get(META_PREFIX + 'layer_norm_eps', TIMM_LAYER_NORM_EPS))
    approx = meta.get(META_PREFIX + 'gelu_approximate', 'false') == 'true'
    return arch.infer_config(params, layer_norm_eps=eps, gelu_approximate=approx, source=path), params


def timm_mixer_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A Mixer parameter tree as timm's MlpMixer state dict."""
    flat = {k: np.asarray(v) for k, v in trees.flatten(params).items()}
    depth = sum(1 for k in params if k.startswith('MixerBlock_'))
    sd = {}
    for theirs, ours, kind in _mixer_pairs(depth):
        if f'{ours}/bias' not in flat:
            continue   # no head
        if kind == 'conv':
            sd[f'{theirs}.weight'] = flat[f'{ours}/kernel'].transpose(3, 2, 0, 1)
        elif kind == 'dense':
            sd[f'{theirs}.weight'] = flat[f'{ours}/kernel'].T
        else:
            sd[f'{theirs}.weight'] = flat[f'{ours}/scale']
        sd[f'{theirs}.bias'] = flat[f'{ours}/bias']
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


# --- Writing ------------------------------------------------------------------------------------


def check_exportable(params: Mapping[str, Any], config: Any, fmt: str) -> None:
    """CheckpointError (one line) unless the `fmt` ('timm' | 'hf') layout can express the model."""
    target = {'timm': 'timm', 'hf': 'Hugging Face ViT'}[fmt]
    if family(config) == 'LiT':
        raise CheckpointError(f'{target} has no LiT image-text model; the public .npz is its format '
                              '(--to npz)')
    if family(config) == 'Mixer':
        if fmt == 'timm':
            return   # timm's MlpMixer expresses every Mixer
        raise CheckpointError(f'{target} has no MLP-Mixer model; use --to timm (MlpMixer) or --to npz')
    if config.get('resnet') is not None:
        raise CheckpointError(f'{target} export supports plain ViTs only (this is a hybrid R+ViT); '
                              'use --to npz')
    if arch.model_field(config, 'posemb') != 'learn':
        raise CheckpointError(f'{target} has no fixed sin-cos position embedding; use --to npz')
    if 'pre_logits' in params and fmt == 'timm':
        raise CheckpointError('timm has no pre_logits (representation) layer (timm removed it); use --to '
                              'npz, or --to hf --num-classes 0 (a ViTModel whose pooler is pre_logits)')
    if fmt == 'timm' and 'dist' in params and not arch.model_field(config, 'distillation_head'):
        raise CheckpointError("timm's distilled DeiT averages the class token's head with the distillation "
                              "token's; this model reads the class token alone (Hugging Face "
                              'DeiTForImageClassification / DeiTModel): use --to hf or npz')
    if fmt == 'hf':
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
    if config.classifier not in ('token', 'gap', 'map'):
        raise CheckpointError(f'classifier={config.classifier!r} cannot be exported to {target}')


def _safetensors_bytes(sd: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in sd.items()}, metadata=dict(metadata))


def _timm_layout(params: Mapping[str, Any]) -> tuple[bool, bool]:
    """(qkv_bias, no_embed_class) of a ViT tree in timm's terms. vit_jax reads timm's qkv_bias=False as
    zero q/k/v biases and no_embed_class=True as zero position rows for the class and register tokens;
    written back so (they compute the same), the weights strict-load into the timm model that has them."""
    blocks = [v for k, v in params['Transformer'].items() if k.startswith('encoderblock_')]
    qkv_bias = any(np.any(np.asarray(b['MultiHeadDotProductAttention_0'][n]['bias']))
                   for b in blocks for n in ('query', 'key', 'value'))
    prefix = ('cls' in params) + (int(np.shape(params['reg'])[1]) if 'reg' in params else 0)
    pos = np.asarray(params['Transformer']['posembed_input']['pos_embedding'])
    # timm's VisionTransformerDistilled always has position rows for its two tokens.
    no_embed_class = bool(prefix) and 'dist' not in params and not np.any(pos[:, :prefix])
    return bool(qkv_bias), no_embed_class


# timm's registered MlpMixers: (patch, blocks, width) -> name.
_TIMM_MIXERS = {(32, 8, 512): 'mixer_s32_224', (16, 8, 512): 'mixer_s16_224',
                (32, 12, 768): 'mixer_b32_224', (16, 12, 768): 'mixer_b16_224',
                (32, 24, 1024): 'mixer_l32_224', (16, 24, 1024): 'mixer_l16_224'}


def _timm_export_name(facts: Mapping[str, Any], distilled: bool) -> str:
    """A timm architecture of the model's class: one of `TIMM_ARCHS` with its facts, else a generic one
    (the model_args written beside it override every registered default)."""
    for name, (width, depth, heads, patch, pool, act) in TIMM_ARCHS.items():
        keys = ('embed_dim', 'depth', 'num_heads', 'patch_size', 'global_pool', 'act_layer')
        if ('distilled' in name) == distilled and (width, depth, heads, patch, pool, act) == tuple(
                facts[k] for k in keys):
            return name
    return 'deit_base_distilled_patch16_224' if distilled else 'vit_base_patch16_224'


def timm_config(params: Mapping[str, Any], config: Any, class_names: Sequence[str] | None = None,
                eval_pp: Mapping[str, Any] | None = None) -> dict:
    """timm's config.json (the layout of `timm.models.save_for_hf`) of a model exported by
    `timm_state_dict`: an `architecture` and the `model_args` with which
    `timm.create_model(architecture, **model_args)` strict-loads those weights and computes the same
    (timm's LayerNorm eps is 1e-6), and a `pretrained_cfg` with vit_jax's input: timm's 'squash'
    crop mode (each side resized to size / crop_pct, aspect not kept, then the central crop) is
    vit_jax's eval preprocessing — crop_pct 1 for a whole-image resize, crop / resize for a
    workdir's center crop (`eval_pp`) — bilinear, pixels scaled to [-1, 1] (mean = std = 0.5)."""
    check_exportable(params, config, 'timm')
    classes = arch.num_classes(params)
    if family(config) == 'Mixer':
        # timm's mixer_* functions fix patch size, blocks and width (they cannot be overridden).
        width, patch, blocks = int(config.hidden_dim), int(config.patches.size[0]), int(config.num_blocks)
        name, pool = _TIMM_MIXERS.get((patch, blocks, width)), 'avg'
        if name is None:
            raise CheckpointError(f'timm registers no MlpMixer with patch {patch}, {blocks} blocks and width '
                                  f'{width} (its mixer_{{s,b,l}}{{16,32}}_224 only); export it to a '
                                  ".safetensors file (timm's MlpMixer class builds it) or --to npz")
        args = dict(img_size=arch.image_size(params, config), num_classes=classes,
                    mlp_ratio=[_ratio(int(config.tokens_mlp_dim), width),
                               _ratio(int(config.channels_mlp_dim), width)])
    else:
        width, t = int(config.hidden_size), config.transformer
        qkv_bias, no_embed_class = _timm_layout(params)
        pool = {'token': 'token', 'gap': 'avg', 'map': 'map'}[config.classifier]
        layer_scale = 'LayerScale_0' in params['Transformer']['encoderblock_0']
        args = dict(img_size=arch.image_size(params, config), patch_size=int(config.patches.size[0]),
                    embed_dim=width, depth=int(t.num_layers), num_heads=int(t.num_heads),
                    mlp_ratio=_ratio(int(t.mlp_dim), width), qkv_bias=qkv_bias, class_token='cls' in params,
                    no_embed_class=no_embed_class,
                    reg_tokens=int(np.shape(params['reg'])[1]) if 'reg' in params else 0,
                    global_pool=pool, fc_norm='fc_norm' in params,
                    init_values=float(t.get('layer_scale') or 1e-5) if layer_scale else None,
                    act_layer='gelu_tanh' if arch.numerics(config)[1] else 'gelu', num_classes=classes)
        name = _timm_export_name(args, 'dist' in params)
    size = args['img_size']
    first_conv = 'stem.proj' if family(config) == 'Mixer' else 'patch_embed.proj'
    record = {'architecture': name, 'num_classes': classes, 'num_features': width, 'global_pool': pool,
              'model_args': args,
              'pretrained_cfg': {'input_size': [3, size, size], 'fixed_input_size': True,
                                 'interpolation': 'bilinear', 'crop_pct': _crop_pct(size, eval_pp),
                                 'crop_mode': 'squash',
                                 'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5], 'num_classes': classes,
                                 'first_conv': first_conv, 'classifier': 'head'}}
    if class_names is not None:
        if len(class_names) != classes:
            raise CheckpointError(f'{len(class_names)} class names for a {classes}-class head')
        record['label_names'] = [str(n) for n in class_names]
    return record


def _crop_pct(size: int, eval_pp: Mapping[str, Any] | None) -> float:
    """timm's crop_pct for which its resize, floor(size / crop_pct), is vit_jax's eval resize."""
    if not (eval_pp and eval_pp.get('eval_crop') == 'center' and eval_pp.get('resize')):
        return 1.0
    resize = int(eval_pp['resize'])
    pct = size / resize
    while math.floor(size / pct) < resize:
        pct = float(np.nextafter(pct, 0))
    return pct


def _ratio(hidden: int, width: int) -> float:
    """An mlp_ratio r with int(width * r) == hidden, as timm computes the MLP width."""
    ratio = hidden / width
    while int(width * ratio) < hidden:
        ratio = float(np.nextafter(ratio, np.inf))
    return ratio


def timm_state_dict(params: Mapping[str, Any], config: Any) -> dict[str, np.ndarray]:
    """The state dict of timm's model for `params` (the one `timm_config` names): no q/k/v biases
    for a model without them (qkv_bias=False), position rows for the patches only where the class and
    register tokens have none (no_embed_class=True)."""
    check_exportable(params, config, 'timm')
    if family(config) == 'Mixer':
        return timm_mixer_state_dict(params)
    c = _canonical_from_linen(params, qkv=True)
    qkv_bias, no_embed_class = _timm_layout(params)
    if not qkv_bias:
        c = {k: v for k, v in c.items() if not re.fullmatch(r'\d+\.qkv\.b', k)}
    if no_embed_class:
        prefix = ('cls' in params) + (int(np.shape(params['reg'])[1]) if 'reg' in params else 0)
        c['pos'] = np.ascontiguousarray(c['pos'][:, prefix:])
    return _to_source_names(c, _TIMM_EXPORT)


def timm_bytes(params: Mapping[str, Any], config: Any) -> bytes:
    """A timm state dict (.safetensors, `timm_state_dict`) with vit_jax's numerics and, for a ViT, timm's
    config (`timm_config`: architecture and model_args) in its metadata.

    timm's LayerNorm eps is 1e-6: a model with another warns, since its logits in timm will differ
    slightly (vit_jax reads the exact numerics back).
    """
    check_exportable(params, config, 'timm')
    eps, approx = arch.numerics(config)
    if eps != TIMM_LAYER_NORM_EPS:
        warnings.warn(f'this model uses LayerNorm eps {eps:g} (timm: {TIMM_LAYER_NORM_EPS:g}), so its logits '
                      'in timm will differ slightly; vit_jax reads the exact numerics back from the file '
                      'metadata', stacklevel=3)
    meta = {'format': 'pt', META_PREFIX + 'layer_norm_eps': repr(eps),
            META_PREFIX + 'gelu_approximate': 'true' if approx else 'false'}
    if family(config) != 'Mixer':   # (a Mixer's weights record all of it)
        record = timm_config(params, config)
        meta[TIMM_RECORD] = json.dumps({k: record[k] for k in ('architecture', 'model_args')})
        meta.update({META_PREFIX + 'num_heads': str(config.transformer.num_heads),
                     META_PREFIX + 'classifier': str(config.classifier)})
    if config.get('model_name'):
        meta[META_PREFIX + 'model_name'] = str(config.model_name)
    return _safetensors_bytes(timm_state_dict(params, config), meta)


def timm_files_bytes(params: Mapping[str, Any], config: Any, class_names: Sequence[str] | None = None,
                     eval_pp: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """The files of a timm hub directory (as `timm.models.save_for_hf` writes it): config.json
    (`timm_config`, with `class_names` as label_names and `eval_pp` as its pretrained_cfg's crop) and
    model.safetensors (`timm_bytes`)."""
    record = timm_config(params, config, class_names, eval_pp)
    return {'config.json': json.dumps(record, indent=2).encode(),
            'model.safetensors': timm_bytes(params, config)}


def hf_files_bytes(params: Mapping[str, Any], config: Any, class_names: Sequence[str] | None = None,
                   eval_pp: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """The files of a Hugging Face ViTForImageClassification directory, or of a ViTModel whose pooler
    is the pre_logits layer (a model with pre_logits and no head); with a distillation token, DeiT's
    (DeiTForImageClassificationWithTeacher with both heads, DeiTForImageClassification with the class
    token's alone, DeiTModel with its pooler): config.json (with `class_names` as
    id2label), model.safetensors, and preprocessor_config.json (`hf_preprocessor`), so that
    `transformers.pipeline('image-classification', model=directory)` runs it as vit-predict does."""
    check_exportable(params, config, 'hf')
    table = (_HF_EXPORT if 'dist' not in params else
             _HF_DEIT_TEACHER_EXPORT if 'head_dist' in params else _HF_DEIT_EXPORT)
    sd = _to_source_names(_canonical_from_linen(params, qkv=False), table)
    if 'pre_logits' in params:   # ViTModel / DeiTModel: their own names have no `vit.` / `deit.` prefix
        sd = {re.sub(r'^(vit|deit)\.', '', k): v for k, v in sd.items()}
    preprocessor = hf_preprocessor(arch.image_size(params, config), eval_pp)
    return {'config.json': json.dumps(_hf_config(params, config, class_names), indent=2).encode(),
            'model.safetensors': _safetensors_bytes(sd, {'format': 'pt'}),
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
    processor = _json(processor_path) if paths.is_file(processor_path) else {}
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
    _warn_normalisation(f'{processor_path}:', 'image_mean', 'image_std', processor, "transformers'")


def hf_class_names(path: str) -> list[str] | None:
    """The class names of an HF directory's config.json (`id2label`), None where it has only
    transformers' placeholders (LABEL_0, ...) or none."""
    config_path, _ = hf_files(path)
    id2label = _hf_field(config_path, _json(config_path), 'id2label', {}, dict)
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
    record = _json(where) if paths.exists(where) else {}
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

