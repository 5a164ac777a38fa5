"""The canonical "torch-style" naming every torch format is read through, and tensor file I/O.

Canonical names (cls, pos, patch, {i}.{ln1,q,k,v,o,ln2,fc1,fc2}, norm, pre_logits, head, ...; Linear
weights [out, in], conv weights OIHW) <-> the Linen VisionTransformer tree (`linen_from_canonical`,
`canonical_from_linen`); a format's own names -> canonical by a regex table (`rename`), canonical ->
a format's by an inverse table (`to_source_names`). Files are read through `vit_jax.paths` (local or
gs://): safetensors (never a pickle), a sharded `.safetensors.index.json`, `.pth`/`.bin` only through
`torch.load(weights_only=True)`; safetensors written by `safetensors_bytes`. The format modules (`timm`,
`hf`) hold their name tables, readers, writers and the facts of their own metadata; nothing here is
format-specific.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vit_jax import paths
from vit_jax.checkpoint import arch
from vit_jax.errors import CheckpointError
from vit_jax.models import family

# --- Canonical "torch-style" names: the naming every torch format is read through -------------
# Canonical keys: cls, dist (DeiT's distillation token), reg, pos, patch.{w,b},
# {i}.{ln1,q,k,v,o,ln2,fc1,fc2}.{w,b}, {i}.{ls1,ls2} (layer scale), norm.{w,b}, fc_norm.{w,b}, the
# attention-pooling head map_probe, map_{q,k,v,o,ln,fc1,fc2}.{w,b} (`map_kv` / `map_qkv`: k, v / q, k,
# v concatenated), pre_logits.{w,b}, head.{w,b}, head_dist.{w,b}; the q/k/v/o/fc weights are torch
# Linear [out, in].


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


def rename(sd: Mapping[str, np.ndarray], table: Sequence[tuple[str, str]], source: str,
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

@contextlib.contextmanager
def building_from(c: dict[str, np.ndarray], source: str, what: str = ''):
    """Around popping canonical weights `c` into a Linen tree: a missing key or a shape that does not
    fit is one CheckpointError naming `source` (and `what`, e.g. 'text_model '); so is a weight left
    unused at the end."""
    try:
        yield
    except KeyError as e:
        raise CheckpointError(f'{source}: missing {what}weight for {e.args[0]!r}') from None
    except ValueError as e:
        raise CheckpointError(f'{source}: inconsistent {what}shapes ({e})') from None
    if c:
        raise CheckpointError(f'{source}: unused {what}weights {sorted(c)[:6]}')


def linen_from_canonical(c: dict[str, np.ndarray], num_heads: int, source: str,
                          no_embed_class: bool | None = None) -> dict:
    """Canonical torch-style weights -> the VisionTransformer parameter tree. `no_embed_class`: whether
    the position embedding has rows for the patches only (timm's), where the source records it; else
    its row count says, refused when either reading fits."""
    with building_from(c, source):
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
            enc[f'encoderblock_{i}'] = encoder_block(c, i, num_heads, d)
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
    return jax.tree_util.tree_map(np.ascontiguousarray, params)


def encoder_block(c: dict[str, np.ndarray], i: int, num_heads: int, d: int) -> dict:
    """Canonical block `i` ({i}.{ln1,q,k,v,o,ln2,fc1,fc2}) -> the Linen `Encoder1DBlock` tree (popped)."""
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


def canonical_from_linen(params: Mapping[str, Any], qkv: bool) -> dict[str, np.ndarray]:
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


def to_source_names(c: Mapping[str, np.ndarray], table: Mapping[str, str]) -> dict[str, np.ndarray]:
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


def read_json(path: str) -> dict:
    try:
        value = json.loads(paths.read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(value, dict):
        raise CheckpointError(f'{path}: expected a JSON object, got {type(value).__name__}')
    return value


def warn_normalisation(where: str, mean_key: str, std_key: str, record: Mapping[str, Any], source: str
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


def safetensors_bytes(sd: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in sd.items()}, metadata=dict(metadata))


def check_exportable(params: Mapping[str, Any], config: Any, target: str) -> None:
    """CheckpointError (one line) unless the model is a plain ViT that a torch format (`target`, its name in
    messages) can hold: not LiT, not a hybrid, a learned position embedding, token / gap / map pooling.
    The formats' own limits are theirs (`timm.check_exportable`, `hf.check_exportable`)."""
    if family(config) == 'LiT':
        raise CheckpointError(f'{target} has no LiT image-text model; the public .npz is its format '
                              '(--to npz)')
    if config.get('resnet') is not None:
        raise CheckpointError(f'{target} export supports plain ViTs only (this is a hybrid R+ViT); '
                              'use --to npz')
    if arch.model_field(config, 'posemb') != 'learn':
        raise CheckpointError(f'{target} has no fixed sin-cos position embedding; use --to npz')
    if config.classifier not in ('token', 'gap', 'map'):
        raise CheckpointError(f'classifier={config.classifier!r} cannot be exported to {target}')
