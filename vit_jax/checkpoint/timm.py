"""timm VisionTransformer and MlpMixer state dicts: timm's name table, reading them into the Linen tree,
writing them back (state dict, config.json, hub directory).

A timm state dict does not record its heads or pooling: they come from the config.json timm saves
beside it (its `architecture`, whose registered defaults (`TIMM_ARCHS`, in `timm_archs`) its
`model_args` override: `timm_model_facts`), our own export's metadata (the same record), or the
caller, never from a guess; every fact is checked against the weights. timm has LayerNorm eps 1e-6 and
exact GELU built in. Exports strict-load into `timm.create_model(architecture, **model_args)` of the
config they are written with (`timm_config`).
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
from vit_jax.checkpoint import arch, tensors
from vit_jax.checkpoint.facts import CLASSIFIER_OF_POOL, POOL_OF_CLASSIFIER, POOLS, Facts
from vit_jax.checkpoint.timm_archs import TIMM_ARCHS
from vit_jax.errors import CheckpointError
from vit_jax.models import family

TIMM_LAYER_NORM_EPS = 1e-6  # built into timm's VisionTransformer (with exact GELU)
META_PREFIX = 'vit_jax.'    # safetensors metadata keys of our own timm export

# timm's names -> canonical (`tensors.rename`).
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
# Canonical -> timm's names, for export (`tensors.to_source_names`).
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
            if value not in POOLS:
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
    config = tensors.read_json(path)
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
    config = tensors.read_json(config_path)
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
    if paths.is_file(beside) and 'architecture' in tensors.read_json(beside):
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
    tensors.warn_normalisation(f'{where}: pretrained_cfg', 'mean', 'std', pretrained, "timm's")
    return list(names) if names else None


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


def _timm_facts(path: str, sd: Mapping[str, np.ndarray], meta: Mapping[str, str], stated_by_user: Facts
                ) -> dict[str, Any]:
    """The facts of a timm ViT state dict (num_heads, pool, approx: tanh GELU; no_embed_class and
    img_size where recorded). From what the file records of itself first (timm's config.json beside
    it: architecture, model_args, global_pool, num_classes; or our export's metadata), then the
    architecture name the caller gives, then the caller's `num_heads` / `pool` (`stated_by_user`); never
    assumed. A caller's statement that contradicts the file is an error; every fact is checked against the
    weights."""
    num_heads, pool, arch_name = stated_by_user.num_heads, stated_by_user.pool, stated_by_user.arch
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
        if root_pool not in POOLS:
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
    meta_pool = POOL_OF_CLASSIFIER.get(meta.get(META_PREFIX + 'classifier', ''))
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


def read_timm(path: str, sd: Mapping[str, np.ndarray], meta: Mapping[str, str], stated_by_user: Facts
              ) -> tuple[ml_collections.ConfigDict, dict]:
    """(model_config, params) of a timm VisionTransformer (or MlpMixer) state dict; `stated_by_user`: the
    architecture, heads or pooling the caller states (needed only where the file does not record them)."""
    sd = {k.removeprefix('module.'): v for k, v in sd.items()}
    if 'stem.proj.weight' in sd:
        return read_timm_mixer(path, sd, meta)
    facts = _timm_facts(path, sd, meta, stated_by_user)
    canonical = tensors.rename(sd, _TIMM_NAMES, path)
    params = tensors.linen_from_canonical(canonical, facts['num_heads'], path, facts['no_embed_class'])
    eps = float(meta.get(META_PREFIX + 'layer_norm_eps', TIMM_LAYER_NORM_EPS))
    classifier = CLASSIFIER_OF_POOL[facts['pool']]
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


def check_exportable(params: Mapping[str, Any], config: Any) -> None:
    """CheckpointError (one line) unless timm's layout can express the model (every Mixer; a plain ViT
    without pre_logits, a distilled one only with its distillation head)."""
    if family(config) == 'Mixer':
        return   # timm's MlpMixer expresses every Mixer
    tensors.check_exportable(params, config, 'timm')
    if 'pre_logits' in params:
        raise CheckpointError('timm has no pre_logits (representation) layer (timm removed it); use --to '
                              'npz, or --to hf --num-classes 0 (a ViTModel whose pooler is pre_logits)')
    if 'dist' in params and not arch.model_field(config, 'distillation_head'):
        raise CheckpointError("timm's distilled DeiT averages the class token's head with the distillation "
                              "token's; this model reads the class token alone (Hugging Face "
                              'DeiTForImageClassification / DeiTModel): use --to hf or npz')

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
    check_exportable(params, config)
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
        pool = POOL_OF_CLASSIFIER[config.classifier]
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
    check_exportable(params, config)
    if family(config) == 'Mixer':
        return timm_mixer_state_dict(params)
    c = tensors.canonical_from_linen(params, qkv=True)
    qkv_bias, no_embed_class = _timm_layout(params)
    if not qkv_bias:
        c = {k: v for k, v in c.items() if not re.fullmatch(r'\d+\.qkv\.b', k)}
    if no_embed_class:
        prefix = ('cls' in params) + (int(np.shape(params['reg'])[1]) if 'reg' in params else 0)
        c['pos'] = np.ascontiguousarray(c['pos'][:, prefix:])
    return tensors.to_source_names(c, _TIMM_EXPORT)


def timm_bytes(params: Mapping[str, Any], config: Any) -> bytes:
    """A timm state dict (.safetensors, `timm_state_dict`) with vit_jax's numerics and, for a ViT, timm's
    config (`timm_config`: architecture and model_args) in its metadata.

    timm's LayerNorm eps is 1e-6: a model with another warns, since its logits in timm will differ
    slightly (vit_jax reads the exact numerics back).
    """
    check_exportable(params, config)
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
    return tensors.safetensors_bytes(timm_state_dict(params, config), meta)


def timm_files_bytes(params: Mapping[str, Any], config: Any, class_names: Sequence[str] | None = None,
                     eval_pp: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """The files of a timm hub directory (as `timm.models.save_for_hf` writes it): config.json
    (`timm_config`, with `class_names` as label_names and `eval_pp` as its pretrained_cfg's crop) and
    model.safetensors (`timm_bytes`)."""
    record = timm_config(params, config, class_names, eval_pp)
    return {'config.json': json.dumps(record, indent=2).encode(),
            'model.safetensors': timm_bytes(params, config)}
