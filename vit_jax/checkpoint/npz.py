"""The public `.npz` checkpoint format: read every published layout, write the original one.

`read(path)` returns the flat arrays of an npz (never unpickled; bfloat16 stored as raw 2-byte
voids by big_vision comes back as bfloat16); `normalize(flat)` turns every published layout —
the original / AugReg files with pre-Linen or Linen block names, an `opt/target/` prefix,
big_vision files (`params/` prefix, a top-level `pos_embedding` without the class-token slot,
scan-stacked blocks), old GroupNorm shapes — into the per-block Linen tree of
`vit_jax.models.VisionTransformer`; `load(path)` does both. `save(params, path)` writes the
public format (flat, '/'-joined Linen names), complete or not at all, local or gs://.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import ml_dtypes
import numpy as np

from vit_jax import archives, paths, trees
from vit_jax.checkpoint import arch
from vit_jax.errors import CheckpointError
from vit_jax.models import scan_to_blocks

# Pre-Linen (and Linen) submodule names: a type name and an index, e.g. `MlpBlock_3`.
_NUMBERED = re.compile(r'^(.*)_(\d+)$')
_GROUPNORM = re.compile(r'^gn(\d+|_root|_proj)$')


def _fix_dtype(x: np.ndarray) -> np.ndarray:
    """bfloat16 arrays saved by `np.savez` come back as raw 2-byte voids (big_vision files)."""
    if x.dtype.kind == 'V' and x.dtype.itemsize == 2:
        return x.view(ml_dtypes.bfloat16)
    return x


def _open(path: str) -> Any:
    """An `np.load` handle (lazy, no pickles) on a local file or a remote object."""
    f = paths.open_read(path)
    magic = f.read(6)
    f.seek(0)
    if not magic.startswith(b'PK'):
        f.close()
        if magic.startswith(b'\x93NUMPY'):
            raise CheckpointError(f'{path}: is a single .npy array, not a .npz checkpoint')
        raise CheckpointError(f'{path}: not a .npz file (no zip header); is it truncated or another format?')
    try:
        handle = np.load(f, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        f.close()
        raise CheckpointError(f'{path}: corrupt or truncated .npz ({e})') from None
    try:
        archives.check_npz(handle.zip, path)   # sizes and headers, before anything is inflated
    except CheckpointError:
        handle.close()
        raise
    return handle


def keys(path: str) -> list[str]:
    """The flat array names of a `.npz`, without reading the arrays."""
    with _open(path) as npz:
        return [k.removesuffix('.npy') for k in npz.files]


def read(path: str) -> dict[str, np.ndarray]:
    """Reads a `.npz` into a flat {'a/b/c': array} dict; never unpickles anything."""
    flat = {}
    with _open(path) as npz:
        for key in npz.files:
            try:
                flat[key] = _fix_dtype(npz[key])
            except ValueError as e:   # (object arrays never get here: `_open` refuses them)
                raise CheckpointError(f'{path}: array {key!r} is unreadable ({e})') from None
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise CheckpointError(f'{path}: corrupt or truncated .npz ({e})') from None
    if not flat:
        raise CheckpointError(f'{path}: the .npz holds no arrays')
    return flat


def convert_pre_linen(tree: Any) -> Any:
    """Renumbers `Type_N` submodules per type from 0, as Flax's `convert_pre_linen` does.

    Pre-Linen files number blocks globally (`MultiHeadDotProductAttention_1`, `LayerNorm_2`,
    `MlpBlock_3`); Linen numbers them per type. Linen names are left unchanged.
    """
    if not isinstance(tree, Mapping):
        return tree
    counts: dict[str, int] = {}
    out = {}

    def order(name: str) -> tuple:
        m = _NUMBERED.match(name)
        return (m.group(1), int(m.group(2))) if m else (name, -1)

    for name in sorted(tree, key=order):
        m = _NUMBERED.match(name)
        new = name
        if m:
            prefix = m.group(1)
            new = f'{prefix}_{counts.get(prefix, 0)}'
            counts[prefix] = counts.get(prefix, 0) + 1
        out[new] = convert_pre_linen(tree[name])
    return out


def _fix_groupnorm(tree: dict, source: str) -> dict:
    """GroupNorm scale/bias of old hybrid files are [1,1,1,C]; Linen wants [C]."""
    flat = trees.flatten(tree)
    for key, value in flat.items():
        parts = key.split('/')
        if len(parts) > 1 and _GROUPNORM.match(parts[-2]) and parts[-1] in ('scale', 'bias'):
            flat[key] = np.reshape(value, (-1,))
    return trees.unflatten(flat, source=source)


def strip_prefix(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Keeps the parameters of `opt/target/...` or big_vision `params/...` files."""
    for prefix in ('opt/target/', 'params/'):
        if any(k.startswith(prefix) for k in flat):
            return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    return dict(flat)


def _from_big_vision(tree: dict) -> dict:
    """Moves big_vision's top-level `pos_embedding` (no class slot) into the original place.

    big_vision adds position embeddings before prepending the class token, so the class
    token gets no position embedding: a zero row in the original layout is exactly that.
    """
    posemb = np.asarray(tree.pop('pos_embedding'))
    if 'cls' in tree:
        posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
    tree.setdefault('Transformer', {})['posembed_input'] = {'pos_embedding': posemb}
    return tree


def is_big_vision(keys: Any) -> bool:
    """Whether flat npz keys are big_vision's: a `params/` prefix, a top-level pos_embedding, or a ViT
    without any position embedding (big_vision's fixed sin-cos one, `posemb='sincos2d'`, has no
    parameters; every original / AugReg ViT has `Transformer/posembed_input`)."""
    names = strip_prefix(dict.fromkeys(keys))
    if any(k.startswith('params/') for k in keys) or 'pos_embedding' in names:
        return True
    vit = 'embedding/kernel' in names and any(k.startswith('Transformer/encoderblock') for k in names)
    return vit and not any(k.endswith('pos_embedding') for k in names)


def is_lit(keys: Any) -> bool:
    """Whether flat npz keys are an image-text model's (`img/...`, `txt/...` and the temperature `t`,
    also under a big_vision `params/` prefix)."""
    keys = set(strip_prefix(dict.fromkeys(keys)))
    return 't' in keys and any(k.startswith('img/') for k in keys) and any(k.startswith('txt/') for k in keys)


def is_siglip(keys: Any) -> bool:
    """Whether flat npz keys are a big_vision SigLIP model's: image-text towers and the learned bias `b`
    of the sigmoid loss."""
    return is_lit(keys) and 'b' in strip_prefix(dict.fromkeys(keys))


def image_tower(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The `img/` tower of an image-text model's flat keys, as a big_vision file of its own."""
    return {'params/' + k.removeprefix('img/'): v for k, v in strip_prefix(flat).items()
            if k.startswith('img/')}


def text_tower(flat: Mapping[str, Any], source: str = 'checkpoint') -> dict:
    """The `txt/` tower of a big_vision two-tower model's flat keys as the per-block Linen tree of
    `TextTransformer`, as big_vision's `text_transformer.load` reads it: pre-Linen names renumbered,
    scan-stacked blocks split, and the position embedding some older files also hold under
    `Encoder_0` (added twice by mistake, big_vision says) merged into `pos_embedding`."""
    txt = {k.removeprefix('txt/'): v for k, v in strip_prefix(flat).items() if k.startswith('txt/')}
    tree = convert_pre_linen(trees.unflatten(txt, source=source))
    encoder = dict(tree.get('Encoder_0', {}))
    if 'pos_embedding' in encoder and 'pos_embedding' in tree:
        tree['pos_embedding'] = np.asarray(tree['pos_embedding']) + np.asarray(encoder.pop('pos_embedding'))
    if 'encoderblock' in encoder:
        encoder = jax.tree_util.tree_map(np.asarray, scan_to_blocks({'Transformer': encoder})['Transformer'])
    if encoder:
        tree['Encoder_0'] = encoder
    return tree


def two_tower(flat: Mapping[str, Any], source: str = 'checkpoint') -> dict:
    """A big_vision two-tower (SigLIP) file's flat keys as the `LitModel` tree: `img` (a big_vision ViT,
    see `normalize`), `txt` (`text_tower`), the temperature `t` and the bias `b`."""
    names = strip_prefix(flat)
    tree = {'img': normalize(image_tower(flat), source), 'txt': text_tower(flat, source)}
    tree.update({k: names[k] for k in ('t', 'b') if k in names})
    return tree


def normalize(flat: Mapping[str, np.ndarray], source: str = 'checkpoint') -> dict:
    """A flat checkpoint dict in any published layout -> the per-block Linen tree."""
    tree = trees.unflatten(strip_prefix(flat), source=source)
    tree = convert_pre_linen(tree)
    if 'pos_embedding' in tree:
        tree = _from_big_vision(tree)
    if 'encoderblock' in tree.get('Transformer', {}):
        tree = jax.tree_util.tree_map(np.asarray, scan_to_blocks(tree))
    return _fix_groupnorm(tree, source)


def vit_config(flat: Mapping[str, Any], params: Mapping[str, Any], source: str = 'checkpoint'
               ) -> ml_collections.ConfigDict:
    """The model config of an npz ViT / hybrid / Mixer (`flat`: its keys, `params`: `normalize`d): from its
    shapes, with the original's numerics (an .npz records none), and big_vision's one position embedding
    without parameters (fixed sin-cos, `posemb='sincos2d'`) where a big_vision file has none."""
    config = arch.infer_config(params, source=source)
    if is_big_vision(flat) and 'posembed_input' not in params.get('Transformer', {'': 0}):
        config.posemb = 'sincos2d'
    return config


def load(path: str) -> dict:
    """Loads a `.npz` checkpoint (any published layout, see the module doc) as a Linen tree."""
    path = str(path)
    return normalize(read(path), path)


def to_bytes(params: Mapping[str, Any], source: str = 'params') -> bytes:
    """The public `.npz` bytes of a parameter tree (flat, '/'-joined Linen names)."""
    flat = {k: np.asarray(v) for k, v in trees.flatten(params).items()}
    for key, value in flat.items():
        if value.dtype.kind == 'O':
            raise CheckpointError(f'{source}: parameter {key!r} is not a numeric array ({value.dtype})')
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    return buffer.getvalue()


def save(params: Mapping[str, Any], path: str) -> str:
    """Writes params as the public `.npz` (loadable by the original code); complete or untouched."""
    path = str(path)
    return paths.write_atomic(path, to_bytes(params, source=path))
