"""Convert ViT checkpoints between the public formats, and the `vit-convert` CLI.

`load_checkpoint(path_or_name)` is the one loader of vit_jax: it resolves catalogue names
(`vit_jax.hub.resolve`), reads `vit-train` workdirs (`vit_jax.train.load_trained`) and
auto-detects the original / AugReg `.npz`, big_vision `.npz`, timm (`.safetensors`;
`.pth`/`.bin` through `torch.load(weights_only=True)` when torch is installed) and Hugging Face
ViT (a directory with `config.json` + `model.safetensors`, legacy or transformers-5 key names).
It returns `(model_config, params)`: a ConfigDict for `vit_jax.models.build_model`, which
carries the source's LayerNorm epsilon and GELU form, and the per-block Linen parameter tree
(`read_checkpoint` also gives the format and a workdir's class names). `export` writes npz,
timm safetensors or a Hugging Face directory. Layouts: timm/HF Linear weights are [out, in] (transposed here),
convs OIHW (ours HWIO), timm's `attn.qkv` is q, k, v concatenated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import checkpoint, cli, config_util, hub, io_util
from vit_jax.checkpoint import CheckpointError, array_shape
from vit_jax.models import MODEL_CONFIGS, VisionTransformer, build_model, num_params, scan_to_blocks

EXPORT_FORMATS = ('npz', 'timm', 'hf')
FORMAT_NAMES = {
    'npz': 'original/AugReg .npz', 'big_vision': 'big_vision .npz',
    'timm': 'timm state dict', 'hf': 'Hugging Face ViT', 'workdir': 'vit-train workdir'}
HF_GELU = {'gelu': False, 'gelu_pytorch_tanh': True, 'gelu_new': True}
HF_LAYER_NORM_EPS = 1e-12   # transformers' ViTConfig default
TIMM_LAYER_NORM_EPS = 1e-6  # built into timm's VisionTransformer (with exact GELU)
# Head count by hidden size of the named configs, for timm files (which do not record it).
_HEADS_BY_WIDTH = {int(c.hidden_size): int(c.transformer.num_heads)
                   for name, c in MODEL_CONFIGS.items() if name != 'testing'}
_META_PREFIX = 'vit_jax.'

# --- Canonical "torch-style" names: one table per source format ----------------------------
# Canonical keys: cls, pos, patch.{w,b}, {i}.{ln1,q,k,v,o,ln2,fc1,fc2}.{w,b}, norm.{w,b},
# pre_logits.{w,b}, head.{w,b}; the q/k/v/o/fc weights are torch Linear [out, in].
_HF_NAMES = [
    (r'embeddings\.cls_token', 'cls'),
    (r'embeddings\.position_embeddings', 'pos'),
    (r'embeddings\.patch_embeddings\.projection\.(weight|bias)', r'patch.\1'),
    (r'encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)', r'\1.q.\2'),
    (r'encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)', r'\1.k.\2'),
    (r'encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)', r'\1.v.\2'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)', r'\1.o.\2'),
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
_TIMM_NAMES = [
    (r'cls_token', 'cls'),
    (r'pos_embed', 'pos'),
    (r'patch_embed\.proj\.(weight|bias)', r'patch.\1'),
    (r'blocks\.(\d+)\.norm1\.(weight|bias)', r'\1.ln1.\2'),
    (r'blocks\.(\d+)\.attn\.qkv\.(weight|bias)', r'\1.qkv.\2'),
    (r'blocks\.(\d+)\.attn\.proj\.(weight|bias)', r'\1.o.\2'),
    (r'blocks\.(\d+)\.norm2\.(weight|bias)', r'\1.ln2.\2'),
    (r'blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)', r'\1.\2.\3'),
    (r'norm\.(weight|bias)', r'norm.\1'),
    (r'pre_logits\.fc\.(weight|bias)', r'pre_logits.\1'),
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
    'norm': 'vit.layernorm', 'head': 'classifier'}
_TIMM_EXPORT = {
    'cls': 'cls_token', 'pos': 'pos_embed', 'patch': 'patch_embed.proj', 'qkv': 'blocks.{i}.attn.qkv',
    'o': 'blocks.{i}.attn.proj', 'fc1': 'blocks.{i}.mlp.fc1', 'fc2': 'blocks.{i}.mlp.fc2',
    'ln1': 'blocks.{i}.norm1', 'ln2': 'blocks.{i}.norm2', 'norm': 'norm', 'head': 'head'}


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
        raise CheckpointError(f'{source}: unsupported keys for a ViT ({", ".join(sorted(unknown)[:6])}'
                              f'{" ..." if len(unknown) > 6 else ""}): this architecture variant is not a '
                              'vit_jax VisionTransformer')
    return out


# --- Canonical <-> Linen ----------------------------------------------------------------------

def _linen_from_canonical(c: dict[str, np.ndarray], num_heads: int, source: str) -> dict:
    """Canonical torch-style weights -> the VisionTransformer parameter tree."""
    try:
        w = c.pop('patch.w')
        d = w.shape[0]
        if d % num_heads:
            raise CheckpointError(f'{source}: hidden size {d} is not divisible by num_heads={num_heads}')
        hd = d // num_heads
        params: dict[str, Any] = {'embedding': {'kernel': w.transpose(2, 3, 1, 0),
                                                'bias': c.pop('patch.b', np.zeros(d, w.dtype))}}
        if 'cls' in c:
            params['cls'] = c.pop('cls')
        pos = c.pop('pos')
        grid = pos.shape[1] - (1 if 'cls' in params else 0)
        if 'cls' in params and round(np.sqrt(pos.shape[1])) ** 2 == pos.shape[1] != grid:
            # No class slot (timm `no_embed_class`): the class token gets no position embedding.
            pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
        enc: dict[str, Any] = {'posembed_input': {'pos_embedding': pos}}
        layers = sorted({int(k.split('.')[0]) for k in c if k.split('.')[0].isdigit()})
        if layers != list(range(len(layers))) or not layers:
            raise CheckpointError(f'{source}: transformer blocks {layers} are not numbered 0..L-1')
        for i in layers:
            if f'{i}.qkv.w' in c:
                for name, x in zip('qkv', np.split(c.pop(f'{i}.qkv.w'), 3, axis=0), strict=True):
                    c[f'{i}.{name}.w'] = x
                for name, x in zip('qkv', np.split(c.pop(f'{i}.qkv.b'), 3, axis=0), strict=True):
                    c[f'{i}.{name}.b'] = x
            ln = lambda n, i=i: {'scale': c.pop(f'{i}.{n}.w'), 'bias': c.pop(f'{i}.{n}.b')}  # noqa: E731
            dense = lambda n, i=i: {'kernel': c.pop(f'{i}.{n}.w').T, 'bias': c.pop(f'{i}.{n}.b')}  # noqa: E731
            attn = {}
            for n, name in (('q', 'query'), ('k', 'key'), ('v', 'value')):
                kernel = c.pop(f'{i}.{n}.w').T.reshape(d, num_heads, hd)
                bias = c.pop(f'{i}.{n}.b', np.zeros(d, kernel.dtype)).reshape(num_heads, hd)
                attn[name] = {'kernel': kernel, 'bias': bias}
            attn['out'] = {'kernel': c.pop(f'{i}.o.w').T.reshape(num_heads, hd, d), 'bias': c.pop(f'{i}.o.b')}
            enc[f'encoderblock_{i}'] = {
                'LayerNorm_0': ln('ln1'), 'MultiHeadDotProductAttention_0': attn, 'LayerNorm_1': ln('ln2'),
                'MlpBlock_0': {'Dense_0': dense('fc1'), 'Dense_1': dense('fc2')}}
        enc['encoder_norm'] = {'scale': c.pop('norm.w'), 'bias': c.pop('norm.b')}
        params['Transformer'] = enc
        for name in ('pre_logits', 'head'):
            if f'{name}.w' in c:
                params[name] = {'kernel': c.pop(f'{name}.w').T, 'bias': c.pop(f'{name}.b')}
    except KeyError as e:
        raise CheckpointError(f'{source}: missing weight for {e.args[0]!r}') from None
    except ValueError as e:
        raise CheckpointError(f'{source}: inconsistent shapes ({e})') from None
    if c:
        raise CheckpointError(f'{source}: unused weights {sorted(c)[:6]}')
    return jax.tree_util.tree_map(np.ascontiguousarray, params)


def _canonical_from_linen(params: Mapping[str, Any], qkv: bool) -> dict[str, np.ndarray]:
    """The VisionTransformer parameter tree -> canonical torch-style weights."""
    p = jax.tree_util.tree_map(np.asarray, dict(params))
    c = {'patch.w': p['embedding']['kernel'].transpose(3, 2, 0, 1), 'patch.b': p['embedding']['bias'],
         'pos': p['Transformer']['posembed_input']['pos_embedding']}
    if 'cls' in p:
        c['cls'] = p['cls']
    i = 0
    while (block := p['Transformer'].get(f'encoderblock_{i}')) is not None:
        attn = block['MultiHeadDotProductAttention_0']
        qkv_w = [attn[n]['kernel'].reshape(len(attn[n]['kernel']), -1).T for n in ('query', 'key', 'value')]
        qkv_b = [attn[n]['bias'].reshape(-1) for n in ('query', 'key', 'value')]
        if qkv:
            c[f'{i}.qkv.w'], c[f'{i}.qkv.b'] = np.concatenate(qkv_w), np.concatenate(qkv_b)
        else:
            for n, w, b in zip('qkv', qkv_w, qkv_b, strict=True):
                c[f'{i}.{n}.w'], c[f'{i}.{n}.b'] = w, b
        out = attn['out']['kernel']
        c[f'{i}.o.w'], c[f'{i}.o.b'] = out.reshape(-1, out.shape[-1]).T, attn['out']['bias']
        for n, ln in (('ln1', 'LayerNorm_0'), ('ln2', 'LayerNorm_1')):
            c[f'{i}.{n}.w'], c[f'{i}.{n}.b'] = block[ln]['scale'], block[ln]['bias']
        for n, dense in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
            c[f'{i}.{n}.w'] = block['MlpBlock_0'][dense]['kernel'].T
            c[f'{i}.{n}.b'] = block['MlpBlock_0'][dense]['bias']
        i += 1
    norm = p['Transformer']['encoder_norm']
    c['norm.w'], c['norm.b'] = norm['scale'], norm['bias']
    for name in ('pre_logits', 'head'):
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

def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework='np') as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
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
        sd = torch.load(path, map_location='cpu', weights_only=True)
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


def _hf_files(path: str) -> tuple[str, str]:
    """(config.json, weights file) for an HF directory, config.json or weights file path."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config = os.path.join(directory, 'config.json')
    if not os.path.exists(config):
        raise CheckpointError(f'{path}: Hugging Face weights need the config.json beside them')
    if os.path.isfile(path) and not path.endswith('config.json'):
        return config, path
    for name in ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin'):
        if os.path.exists(os.path.join(directory, name)):
            return config, os.path.join(directory, name)
    raise CheckpointError(f'{directory}: no model.safetensors (or pytorch_model.bin) beside config.json')


def _read_weights(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if path.endswith('.safetensors.index.json'):
        with open(path) as f:
            shards = sorted(set(json.load(f)['weight_map'].values()))
        sd: dict[str, np.ndarray] = {}
        for shard in shards:
            sd.update(_read_safetensors(os.path.join(os.path.dirname(path), shard))[0])
        return sd, {}
    if path.endswith('.safetensors'):
        return _read_safetensors(path)
    return _read_torch(path), {}


def _weight_names(path: str) -> list[str]:
    """Tensor names of a weights file (safetensors: from the header only; torch: the whole file)."""
    if path.endswith('.safetensors'):
        from safetensors import safe_open

        try:
            with safe_open(path, framework='np') as f:
                return list(f.keys())  # noqa: SIM118
        except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
            raise CheckpointError(f'{path}: corrupt or truncated safetensors file ({e})') from None
    return list(_read_weights(path)[0])


def is_training_workdir(path: str) -> bool:
    """A `vit-train` workdir: config.json beside model.npz or checkpoints/ (an HF folder has neither)."""
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, 'config.json'))
            and (os.path.exists(os.path.join(path, 'model.npz'))
                 or os.path.isdir(os.path.join(path, 'checkpoints'))))


def _weights_format(path: str, keys: Sequence[str]) -> str:
    """'hf' or 'timm' from the tensor names of a .safetensors / .pth / .bin file."""
    if any(k.removeprefix('vit.').startswith(('embeddings.', 'encoder.layer', 'layers.')) for k in keys):
        _hf_files(path)
        return 'hf'
    if any(k.removeprefix('module.').startswith(('patch_embed.', 'blocks.')) for k in keys):
        return 'timm'
    raise CheckpointError(f'{path}: neither timm nor Hugging Face ViT weights (keys: {list(keys)[:4]} ...)')


def _path_kind(path: str) -> str:
    """'workdir', 'hf', 'npz' or 'weights' from the path alone; FileNotFoundError/CheckpointError."""
    if not os.path.exists(path) and not io_util.is_remote(path):
        raise FileNotFoundError(f'{path}: no such file or directory')
    if is_training_workdir(path):
        return 'workdir'
    if os.path.isdir(path) or os.path.basename(path) == 'config.json':
        _hf_files(path)
        return 'hf'
    if path.endswith('.npz') or io_util.is_remote(path):
        return 'npz'
    if path.endswith(('.safetensors', '.pth', '.pt', '.bin')):
        return 'weights'
    raise CheckpointError(f'{path}: unknown checkpoint format; expected .npz, .safetensors, .pth/.bin, '
                          'a Hugging Face directory or a vit-train workdir')


def detect_format(path: str) -> str:
    """'npz', 'big_vision', 'timm', 'hf' or 'workdir' for a local path, reading as little as it can."""
    path = os.fspath(path)
    kind = _path_kind(path)
    if kind == 'npz':
        return 'big_vision' if checkpoint.is_big_vision(checkpoint.npz_keys(path)) else 'npz'
    if kind == 'weights':
        return _weights_format(path, _weight_names(path))
    return kind


# --- Configs ------------------------------------------------------------------------------------

def num_classes(params: Mapping[str, Any]) -> int:
    """Classes of the head (0 when the checkpoint has none)."""
    return int(array_shape(params['head']['kernel'])[-1]) if 'head' in params else 0


def _structure(config: Any) -> tuple:
    t = config['transformer']
    resnet = config.get('resnet')
    return (tuple(config['patches']['size']), config['hidden_size'], t['mlp_dim'], t['num_heads'],
            t['num_layers'], None if resnet is None else
            (tuple(resnet['num_layers']), float(resnet['width_factor'])))


def match_model_name(config: Any) -> str | None:
    """The MODEL_CONFIGS name with the same architecture (head and pooling aside), if any."""
    for name, known in MODEL_CONFIGS.items():
        if name != 'testing' and _structure(known) == _structure(config):
            return name
    return None


def infer_config(params: Mapping[str, Any], *, layer_norm_eps: float | None = None,
                 gelu_approximate: bool | None = None) -> ml_collections.ConfigDict:
    """The model config of a Linen parameter tree, from its shapes (numerics: the model defaults)."""
    if 'MAPHead_0' in params:
        raise CheckpointError('MAP-head pooling (big_vision pool_type="map") is not supported by '
                              'vit_jax.models.VisionTransformer')
    try:
        enc = params['Transformer']
        layers = sorted(int(k.split('_')[1]) for k in enc if re.fullmatch(r'encoderblock_\d+', k))
        query = enc['encoderblock_0']['MultiHeadDotProductAttention_0']['query']['kernel']
        mlp = enc['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']
        patch = tuple(int(s) for s in array_shape(params['embedding']['kernel'])[:2])
    except (KeyError, IndexError) as e:
        raise CheckpointError(f'not a ViT parameter tree (no {e})') from None
    config = ml_collections.ConfigDict()
    config.model_name = None
    config.patches = ml_collections.ConfigDict({'size': patch})
    config.hidden_size = int(array_shape(query)[0])
    config.transformer = ml_collections.ConfigDict(dict(
        mlp_dim=int(array_shape(mlp)[1]), num_heads=int(array_shape(query)[1]), num_layers=len(layers),
        attention_dropout_rate=0.0, dropout_rate=0.0))
    config.classifier = 'token' if 'cls' in params else 'gap'
    config.representation_size = (int(array_shape(params['pre_logits']['kernel'])[1])
                                  if 'pre_logits' in params else None)
    if 'conv_root' in params:
        stages = sorted((k for k in params if re.fullmatch(r'block\d+', k)), key=lambda k: int(k[5:]))
        width = array_shape(params['conv_root']['kernel'])[-1] / 64
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


def model_default(field: str) -> Any:
    """The default of a VisionTransformer field (the original numerics: eps 1e-6, tanh GELU)."""
    return VisionTransformer.__dataclass_fields__[field].default


def numerics(config: Any) -> tuple[float, bool]:
    """(layer_norm_eps, gelu_approximate) of a model config, defaults where unset."""
    return (float(config_util.get(config, 'layer_norm_eps', model_default('layer_norm_eps'))),
            bool(config_util.get(config, 'gelu_approximate', model_default('gelu_approximate'))))


def image_size(params: Mapping[str, Any], config: Any) -> int:
    """The training resolution implied by the position-embedding grid."""
    model = build_model(config, None, inference=True)
    pos = array_shape(params['Transformer']['posembed_input']['pos_embedding'])[1]
    return int(round(np.sqrt(pos - model.num_prefix_tokens)) * model.patch_stride[0])


def check_params(params: Mapping[str, Any], config: Any, source: str = 'checkpoint') -> None:
    """Checks every key and shape against the model `config` builds (abstractly, no compute)."""
    size = image_size(params, config)
    model = build_model(config, num_classes(params), inference=True)
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                                 train=False))['params']
    checkpoint.inspect_params(params, expected, source=source)


# --- Loading ------------------------------------------------------------------------------------

def _hf_params(path: str, sd: Mapping[str, np.ndarray] | None = None
               ) -> tuple[ml_collections.ConfigDict, dict]:
    """An HF directory / config.json / weights file (`sd`: its weights, if already read)."""
    config_path, weights = _hf_files(path)
    with open(config_path) as f:
        hf = json.load(f)
    if hf.get('model_type', 'vit') != 'vit':
        raise CheckpointError(f'{config_path}: model_type={hf.get("model_type")!r} is not a plain ViT')
    act = hf.get('hidden_act', 'gelu')
    if act not in HF_GELU:
        raise CheckpointError(f'{config_path}: hidden_act={act!r} is not supported (expected one of '
                              f'{sorted(HF_GELU)})')
    if hf.get('num_channels', 3) != 3:
        raise CheckpointError(f'{config_path}: num_channels={hf["num_channels"]} (VisionTransformer needs 3)')
    if sd is None:
        sd, _ = _read_weights(weights)
    sd = {k.removeprefix('vit.'): v for k, v in sd.items()}
    if 'classifier.weight' in sd:  # ViTForImageClassification does not use the pooler.
        sd = {k: v for k, v in sd.items() if not k.startswith('pooler.')}
    elif 'pooler.dense.weight' in sd and hf.get('pooler_act', 'tanh') != 'tanh':
        raise CheckpointError(f'{config_path}: pooler_act={hf["pooler_act"]!r} (pre_logits needs tanh)')
    canonical = _rename(sd, _HF_NAMES, weights, ignore=[r'embeddings\.mask_token'])
    params = _linen_from_canonical(canonical, int(hf.get('num_attention_heads', 12)), weights)
    return infer_config(params, layer_norm_eps=hf.get('layer_norm_eps', HF_LAYER_NORM_EPS),
                        gelu_approximate=HF_GELU[act]), params


def _timm_heads(d: int, meta: Mapping[str, str], num_heads: int | None, path: str) -> int:
    if num_heads:
        return num_heads
    if _META_PREFIX + 'num_heads' in meta:
        return int(meta[_META_PREFIX + 'num_heads'])
    if d in _HEADS_BY_WIDTH:
        return _HEADS_BY_WIDTH[d]
    if d % 64 == 0:
        return d // 64
    raise CheckpointError(f'{path}: timm files do not record the number of heads and hidden size {d} '
                          'has no standard one; pass num_heads (--num-heads)')


def _timm_params(path: str, sd: Mapping[str, np.ndarray], meta: Mapping[str, str], num_heads: int | None
                 ) -> tuple[ml_collections.ConfigDict, dict]:
    sd = {k.removeprefix('module.'): v for k, v in sd.items()}
    if 'fc_norm.weight' in sd:
        raise CheckpointError(f'{path}: timm fc_norm (LayerNorm after pooling) is not supported by '
                              'vit_jax.models.VisionTransformer')
    canonical = _rename(sd, _TIMM_NAMES, path)
    heads = _timm_heads(np.shape(canonical.get('patch.w', np.zeros(1)))[0], meta, num_heads, path)
    params = _linen_from_canonical(canonical, heads, path)
    eps = float(meta.get(_META_PREFIX + 'layer_norm_eps', TIMM_LAYER_NORM_EPS))
    approx = meta.get(_META_PREFIX + 'gelu_approximate', 'false') == 'true'
    config = infer_config(params, layer_norm_eps=eps, gelu_approximate=approx)
    if meta.get(_META_PREFIX + 'classifier'):
        config.classifier = meta[_META_PREFIX + 'classifier']
    return config, params


@dataclasses.dataclass
class Checkpoint:
    """What `read_checkpoint` found: the model config, the per-block Linen params and their origin."""

    model_config: ml_collections.ConfigDict
    params: dict
    format: str                # a FORMAT_NAMES key
    path: str                  # the local path (or remote URL) that was read
    class_names: list[str] | None = None   # a vit-train workdir's


def _workdir_params(path: str) -> tuple[ml_collections.ConfigDict, dict, list[str] | None]:
    """(model_config, per-block params, class names) of a vit-train workdir (train owns its format)."""
    from vit_jax.train import load_trained  # Orbax and Optax: imported only for workdirs

    model_config, _, params, class_names = load_trained(path)
    params = jax.tree_util.tree_map(np.asarray, dict(params))
    if 'encoderblock' in params.get('Transformer', {}):
        params = jax.tree_util.tree_map(np.asarray, scan_to_blocks(params))
    config = ml_collections.ConfigDict(
        model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config))
    config.scan_layers = False   # the parameters are now in the per-block layout
    config.layer_norm_eps, config.gelu_approximate = numerics(config)
    return config, params, list(class_names) if class_names else None


def read_checkpoint(path_or_name: str, *, num_heads: int | None = None) -> Checkpoint:
    """Reads any supported checkpoint, workdir or catalogue name (see the module doc), once.

    `num_heads` is only needed for timm files with a non-standard head count (timm state
    dicts do not record it). Raises CheckpointError (one line) on unreadable or inconsistent
    files, FileNotFoundError / hub.DownloadError when there is nothing to read.
    """
    path = hub.resolve(os.fspath(path_or_name))
    kind = _path_kind(path)
    class_names = None
    if kind == 'workdir':
        fmt = 'workdir'
        config, params, class_names = _workdir_params(path)
    elif kind == 'npz':
        flat = checkpoint.read_npz(path)
        fmt = 'big_vision' if checkpoint.is_big_vision(flat) else 'npz'
        params = checkpoint.normalize(flat, path)
        config = infer_config(params)
    elif kind == 'hf':
        fmt = 'hf'
        config, params = _hf_params(path)
    else:
        sd, meta = _read_weights(path)
        fmt = _weights_format(path, list(sd))
        config, params = _hf_params(path, sd) if fmt == 'hf' else _timm_params(path, sd, meta, num_heads)
    check_params(params, config, source=path)
    return Checkpoint(config, params, fmt, path, class_names)


def load_checkpoint(path_or_name: str, *, num_heads: int | None = None
                    ) -> tuple[ml_collections.ConfigDict, dict]:
    """`(model_config, params)` of any supported checkpoint, workdir or catalogue name."""
    found = read_checkpoint(path_or_name, num_heads=num_heads)
    return found.model_config, found.params


def warn_numerics(found: Checkpoint, model_config: Any) -> None:
    """Warns when a model is given weights trained with another LayerNorm eps or GELU form.

    Only formats that record their numerics are checked (an .npz says nothing about them).
    """
    if found.format not in ('timm', 'hf', 'workdir'):
        return
    names = ('layer_norm_eps', 'gelu_approximate')
    for key, have, want in zip(names, numerics(found.model_config), numerics(model_config), strict=True):
        if have != want:
            warnings.warn(f'{found.path} has {key}={have} but the model uses {want}; set it in the model '
                          'config to reproduce the source model', stacklevel=3)


def replace_head(params: Mapping[str, Any], classes: int) -> dict:
    """A zero-initialised `classes`-way head (as fine-tuning does); 0 removes the head."""
    params = dict(params)
    features = array_shape(params['pre_logits']['kernel'])[1] if 'pre_logits' in params else \
        np.shape(params['Transformer']['encoder_norm']['scale'])[0]
    dtype = np.asarray(params['Transformer']['encoder_norm']['scale']).dtype
    params.pop('head', None)
    if classes:
        params['head'] = {'kernel': np.zeros((features, classes), dtype), 'bias': np.zeros(classes, dtype)}
    return params


# --- Exporting ----------------------------------------------------------------------------------

def _hf_config(params: Mapping[str, Any], config: Any) -> dict:
    patch = tuple(config.patches.size)
    classes = num_classes(params)
    t = config.transformer
    eps, approx = numerics(config)
    return {
        'architectures': ['ViTForImageClassification'], 'model_type': 'vit',
        'hidden_size': int(config.hidden_size), 'num_hidden_layers': int(t.num_layers),
        'num_attention_heads': int(t.num_heads), 'intermediate_size': int(t.mlp_dim),
        'hidden_act': 'gelu_pytorch_tanh' if approx else 'gelu', 'layer_norm_eps': eps,
        'hidden_dropout_prob': float(t.get('dropout_rate', 0.0)),
        'attention_probs_dropout_prob': float(t.get('attention_dropout_rate', 0.0)),
        'initializer_range': 0.02, 'image_size': image_size(params, config), 'patch_size': int(patch[0]),
        'num_channels': 3, 'qkv_bias': True, 'encoder_stride': int(patch[0]),
        'id2label': {str(i): f'LABEL_{i}' for i in range(classes)},
        'label2id': {f'LABEL_{i}': i for i in range(classes)}, 'torch_dtype': 'float32'}


def _check_exportable(params: Mapping[str, Any], config: Any, fmt: str) -> None:
    target = {'timm': 'timm', 'hf': 'Hugging Face ViT'}[fmt]
    if config.get('resnet') is not None:
        raise CheckpointError(f'{target} export supports plain ViTs only (this is a hybrid R+ViT); '
                              'use --to npz')
    if 'pre_logits' in params:
        raise CheckpointError(f'{target} has no pre_logits layer; re-head the model (e.g. --num-classes N) '
                              'or use --to npz')
    if fmt == 'hf':
        if 'cls' not in params or config.classifier != 'token':
            raise CheckpointError("Hugging Face ViT needs classifier='token'; use --to npz or timm")
        if 'head' not in params:
            raise CheckpointError('Hugging Face ViTForImageClassification needs a head; pass --num-classes N')
        if len(set(config.patches.size)) != 1:
            raise CheckpointError(f'Hugging Face ViT needs square patches, got {tuple(config.patches.size)}')
    if config.classifier not in ('token', 'gap'):
        raise CheckpointError(f'classifier={config.classifier!r} cannot be exported to {target}')


def _safetensors_bytes(sd: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in sd.items()}, metadata=dict(metadata))


def export(params: Mapping[str, Any], model_config: Any, dst: str, format: str = 'npz') -> str:  # noqa: A002
    """Writes `params` as npz (a file), timm safetensors (a file) or a Hugging Face directory.

    Everything is converted and checked before anything is written; the destination is
    complete or untouched. timm has LayerNorm eps 1e-6 and exact GELU built in: exporting a
    model with other numerics warns, since its logits will then differ slightly in timm.
    """
    if format not in EXPORT_FORMATS:
        raise CheckpointError(f'unknown export format {format!r}; expected one of {EXPORT_FORMATS}')
    params = dict(params)
    if 'encoderblock' in params.get('Transformer', {}):
        params = scan_to_blocks(params)
    params = jax.tree_util.tree_map(np.asarray, params)
    dst = os.fspath(dst)
    if format == 'npz':
        checkpoint.save(params, dst)
        return dst
    _check_exportable(params, model_config, format)
    eps, approx = numerics(model_config)
    if format == 'timm':
        differs = ([f'LayerNorm eps {eps:g} (timm: {TIMM_LAYER_NORM_EPS:g})']
                   if eps != TIMM_LAYER_NORM_EPS else []) + \
            (['tanh GELU (timm: exact)'] if approx else [])
        if differs:
            warnings.warn(f'this model uses {" and ".join(differs)}, so its logits in timm will differ '
                          'slightly; vit_jax reads the exact numerics back from the file metadata',
                          stacklevel=2)
        sd = _to_source_names(_canonical_from_linen(params, qkv=True), _TIMM_EXPORT)
        meta = {'format': 'pt', _META_PREFIX + 'num_heads': str(model_config.transformer.num_heads),
                _META_PREFIX + 'layer_norm_eps': repr(eps),
                _META_PREFIX + 'gelu_approximate': 'true' if approx else 'false',
                _META_PREFIX + 'classifier': str(model_config.classifier)}
        if model_config.get('model_name'):
            meta[_META_PREFIX + 'model_name'] = str(model_config.model_name)
        return io_util.write_atomic(dst, _safetensors_bytes(sd, meta))
    sd = _to_source_names(_canonical_from_linen(params, qkv=False), _HF_EXPORT)
    files = {'config.json': json.dumps(_hf_config(params, model_config), indent=2).encode(),
             'model.safetensors': _safetensors_bytes(sd, {'format': 'pt'})}
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise CheckpointError(f'{dst}: exists and is not a directory (Hugging Face export writes one)')
    for name, data in files.items():   # each file complete or untouched
        io_util.write_atomic(os.path.join(dst, name), data)
    return dst


# --- CLI ------------------------------------------------------------------------------------------

def describe(config: Any, params: Mapping[str, Any]) -> str:
    """One-paragraph summary: config name, architecture, numerics, parameter count."""
    t = config.transformer
    name = config_util.get(config, 'model_name') or 'custom (no MODEL_CONFIGS match)'
    resnet = config_util.get(config, 'resnet')
    hybrid = f', ResNet stem {tuple(resnet.num_layers)}' if resnet is not None else ''
    eps, approx = numerics(config)
    return (f'model: {name}\n'
            f'  hidden {config.hidden_size}, {t.num_layers} layers, {t.num_heads} heads, mlp {t.mlp_dim}, '
            f'patch {tuple(config.patches.size)}{hybrid}, classifier {config.classifier}, '
            f'representation_size {config_util.get(config, "representation_size")}, '
            f'{num_classes(params)} classes, image size {image_size(params, config)}\n'
            f'  layer_norm_eps {eps:g}, GELU {"tanh" if approx else "exact"}\n'
            f'parameters: {num_params(params):,}')


def _default_format(dst: str) -> str:
    if dst.endswith('.npz'):
        return 'npz'
    if dst.endswith('.safetensors'):
        return 'timm'
    return 'hf'


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='vit-convert',
        description='Convert a ViT checkpoint between the original/AugReg/big_vision .npz, timm and '
                    'Hugging Face formats (the source format is detected).',
        epilog='SRC may also be a public checkpoint name (downloaded once and cached):\n' + hub.list_names(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', metavar='SRC', help='.npz, .safetensors, .pth/.bin, HF directory, or name')
    parser.add_argument('dst', metavar='DST', help='output .npz / .safetensors file or HF directory')
    parser.add_argument('--to', choices=EXPORT_FORMATS, default=None,
                        help='output format (default: from DST: .npz -> npz, .safetensors -> timm, else hf)')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='replace the head by a zero-initialised N-class head (0 removes it)')
    parser.add_argument('--num-heads', type=int, default=None,
                        help='attention heads, for timm files of non-standard width (not stored in them)')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`vit-convert SRC DST [--to npz|timm|hf] [--num-classes N]`; raises on bad input."""
    args = _parser().parse_args(argv)
    if args.num_classes is not None and args.num_classes < 0:
        raise ValueError(f'--num-classes must be >= 0, got {args.num_classes}')
    found = read_checkpoint(args.src, num_heads=args.num_heads)
    print(f'detected: {FORMAT_NAMES[found.format]} ({found.path})')
    config, params = found.model_config, found.params
    if args.num_classes is not None:
        params = replace_head(params, args.num_classes)
    print(describe(config, params))
    to = args.to or _default_format(args.dst)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        export(params, config, args.dst, format=to)
    for warning in caught:
        print(f'note: {warning.message}')
    print(f'wrote: {FORMAT_NAMES.get(to, to)} -> {args.dst}')
    return 0


def run(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`vit-convert`): exit 2 with one line on bad input."""
    sys.exit(cli.run_cli('vit-convert', lambda: main(argv)))


if __name__ == '__main__':
    run()
