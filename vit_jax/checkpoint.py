"""ViT parameter checkpoints: read and write the public `.npz` format, adapt them for fine-tuning.

`load(path)` accepts every published layout (original / AugReg with pre-Linen or Linen block
names, an `opt/target/` prefix, big_vision files with a `params/` prefix, a top-level
`pos_embedding` without the class-token slot, scan-stacked blocks and bfloat16 stored as raw
bytes) and returns the Linen tree of `vit_jax.models.VisionTransformer`. `save` writes the
public format. `load_pretrained` adapts a checkpoint to a new head, resolution and patch size
with the original semantics. Files are never unpickled.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np

from vit_jax import config_util, io_util
from vit_jax.models import blocks_to_scan, scan_to_blocks

logger = logging.getLogger(__name__)

# How many keys an error message lists per category before it says "and N more".
_MAX_LISTED = 8
# Pre-Linen (and Linen) submodule names: a type name and an index, e.g. `MlpBlock_3`.
_NUMBERED = re.compile(r'^(.*)_(\d+)$')
_GROUPNORM = re.compile(r'^gn(\d+|_root|_proj)$')


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (one-line message)."""


# --- Files (local or remote) -----------------------------------------------------------------

def _fix_dtype(x: np.ndarray) -> np.ndarray:
    """bfloat16 arrays saved by `np.savez` come back as raw 2-byte voids (big_vision files)."""
    if x.dtype.kind == 'V' and x.dtype.itemsize == 2:
        return x.view(ml_dtypes.bfloat16)
    return x


def _open_npz(path: str) -> Any:
    """An `np.load` handle (lazy, no pickles): local files are read in place, remote ones fetched."""
    path = os.fspath(path)
    if io_util.is_remote(path):
        source: Any = io.BytesIO(io_util.read_bytes(path))
        magic = source.getvalue()[:6]
    else:
        source = path
        with open(path, 'rb') as f:
            magic = f.read(6)
    if not magic.startswith(b'PK'):
        if magic.startswith(b'\x93NUMPY'):
            raise CheckpointError(f'{path}: is a single .npy array, not a .npz checkpoint')
        raise CheckpointError(f'{path}: not a .npz file (no zip header); is it truncated or another format?')
    try:
        return np.load(source, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f'{path}: corrupt or truncated .npz ({e})') from None


def npz_keys(path: str) -> list[str]:
    """The flat array names of a `.npz`, without reading the arrays."""
    with _open_npz(path) as npz:
        return [k.removesuffix('.npy') for k in npz.files]


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Reads a `.npz` into a flat {'a/b/c': array} dict; never unpickles anything."""
    flat = {}
    with _open_npz(path) as npz:
        for key in npz.files:
            try:
                flat[key] = _fix_dtype(npz[key])
            except ValueError as e:
                if 'pickle' in str(e):
                    raise CheckpointError(f'{path}: array {key!r} holds pickled Python objects; refusing to '
                                          'load it (unpickling can run code)') from None
                raise CheckpointError(f'{path}: array {key!r} is unreadable ({e})') from None
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise CheckpointError(f'{path}: corrupt or truncated .npz ({e})') from None
    if not flat:
        raise CheckpointError(f'{path}: the .npz holds no arrays')
    return flat


# --- Trees ------------------------------------------------------------------------------------

def unflatten(flat: Mapping[str, Any], source: str = 'checkpoint') -> dict[str, Any]:
    """`io_util.unflatten`, with its error as a CheckpointError naming the key and `source`."""
    try:
        return io_util.unflatten(flat, source=source)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


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


def _fix_groupnorm(tree: dict) -> dict:
    """GroupNorm scale/bias of old hybrid files are [1,1,1,C]; Linen wants [C]."""
    flat = io_util.flatten(tree)
    for key, value in flat.items():
        parts = key.split('/')
        if len(parts) > 1 and _GROUPNORM.match(parts[-2]) and parts[-1] in ('scale', 'bias'):
            flat[key] = np.reshape(value, (-1,))
    return unflatten(flat)


def strip_prefix(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Keeps the parameters of `opt/target/...` or big_vision `params/...` files."""
    for prefix in ('opt/target/', 'params/'):
        if any(k.startswith(prefix) for k in flat):
            return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    return flat


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
    """Whether flat npz keys are big_vision's (a `params/` prefix or a top-level pos_embedding)."""
    return any(k.startswith('params/') for k in keys) or 'pos_embedding' in strip_prefix(dict.fromkeys(keys))


def normalize(flat: Mapping[str, np.ndarray], source: str = 'checkpoint') -> dict:
    """A flat checkpoint dict in any published layout -> the per-block Linen tree."""
    tree = unflatten(strip_prefix(dict(flat)), source)
    tree = convert_pre_linen(tree)
    if 'pos_embedding' in tree:
        tree = _from_big_vision(tree)
    if 'encoderblock' in tree.get('Transformer', {}):
        tree = jax.tree_util.tree_map(np.asarray, scan_to_blocks(tree))
    return _fix_groupnorm(tree)


def load(path: str) -> dict:
    """Loads a `.npz` checkpoint (any published layout, see module doc) as a Linen tree."""
    return normalize(read_npz(path), os.fspath(path))


def save(params: Mapping[str, Any], path: str) -> None:
    """Writes params as the public `.npz` (flat, '/'-joined Linen names; loadable by the original).

    The file appears complete or not at all.
    """
    flat = {k: np.asarray(v) for k, v in io_util.flatten(params).items()}
    for key, value in flat.items():
        if value.dtype.kind == 'O':
            raise CheckpointError(f'{path}: parameter {key!r} is not a numeric array ({value.dtype}); '
                                  'nothing was written')
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    io_util.write_atomic(path, buffer.getvalue())


# --- Checking and adapting ------------------------------------------------------------------

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
    got, want = io_util.flatten(params), io_util.flatten(expected)
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    shape = sorted(k for k in want.keys() & got.keys() if array_shape(got[k]) != array_shape(want[k]))
    problems = []
    if missing and fail_if_missing:
        problems.append('missing ' + _listed([f'{k} {array_shape(want[k])}' for k in missing]))
    if extra and fail_if_extra:
        problems.append('extra ' + _listed([f'{k} {array_shape(got[k])}' for k in extra]))
    if shape and fail_if_shape:
        problems.append('wrong shape ' + _listed(
            [f'{k} {array_shape(got[k])} (expected {array_shape(want[k])})' for k in shape]))
    if problems:
        raise CheckpointError(f'{source} does not match the model: ' + '; '.join(problems))
    if extra:
        logger.info('inspect_params: ignoring extra keys %s', _listed(extra))
    return params


def _zoom_linear_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear resampling of one axis with corners aligned: `scipy.ndimage.zoom(order=1)`."""
    n = x.shape[axis]
    if size == n:
        return x
    coords = np.zeros(1) if size == 1 else np.arange(size) * ((n - 1) / (size - 1))
    lo = np.clip(np.floor(coords).astype(int), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    w = (coords - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def interpolate_posembed(posemb: Any, num_tokens: int, has_class_token: bool = True) -> np.ndarray:
    """Resizes [1, (1+)g*g, D] position embeddings to `num_tokens` tokens (the original rule).

    The g x g grid is resampled linearly as `scipy.ndimage.zoom(grid, (g'/g, g'/g, 1), order=1)`;
    the class-token row, if any, is kept as is.
    """
    posemb = np.asarray(posemb)
    n_extra = 1 if has_class_token else 0
    tok, grid = posemb[:, :n_extra], posemb[0, n_extra:]
    gs_old, gs_new = int(round(np.sqrt(len(grid)))), int(round(np.sqrt(num_tokens - n_extra)))
    if gs_old ** 2 != len(grid) or gs_new ** 2 != num_tokens - n_extra:
        raise CheckpointError(f'position embeddings {posemb.shape} -> {num_tokens} tokens: '
                              'only square grids can be resized')
    logger.info('interpolate_posembed: grid %dx%d -> %dx%d', gs_old, gs_old, gs_new, gs_new)
    g = grid.reshape(gs_old, gs_old, -1).astype(np.float64)
    g = _zoom_linear_axis(_zoom_linear_axis(g, gs_new, 0), gs_new, 1)
    g = g.reshape(1, gs_new * gs_new, -1).astype(posemb.dtype)
    return np.concatenate([tok, g], axis=1)


def _resize_matrix(old_hw: tuple[int, int], new_hw: tuple[int, int]) -> np.ndarray:
    """[new_h*new_w, old_h*old_w]: bilinear resize (half-pixel centres, no antialias) as a matrix."""
    n_old = old_hw[0] * old_hw[1]
    basis = np.eye(n_old, dtype=np.float32).reshape(n_old, *old_hw)
    resized = jax.image.resize(basis, (n_old, *new_hw), method='linear', antialias=False)
    return np.asarray(resized, np.float64).reshape(n_old, -1).T


def resize_patch_embedding(kernel: Any, new_hw: tuple[int, int]) -> np.ndarray:
    """Resizes a [h, w, C, D] patch-embedding kernel to [h', w', C, D] (FlexiViT PI-resize).

    The new kernel is pinv(B^T) @ old, with B the bilinear resize from h x w to h' x w'
    patches, so that `<new, resize(patch)> == <old, patch>` (exactly when upsampling).
    """
    kernel = np.asarray(kernel)
    old_hw = tuple(kernel.shape[:2])
    new_hw = tuple(int(s) for s in new_hw)
    if old_hw == new_hw:
        return kernel
    resize = _resize_matrix(old_hw, new_hw)
    pinv = np.linalg.pinv(resize.T)  # [new, old]
    flat = kernel.reshape(old_hw[0] * old_hw[1], -1).astype(np.float64)
    return (pinv @ flat).reshape(*new_hw, *kernel.shape[2:]).astype(kernel.dtype)


def array_shape(x: Any) -> tuple[int, ...]:
    """Shape of an array, jax array or `jax.ShapeDtypeStruct` (from `jax.eval_shape`)."""
    return tuple(x.shape) if hasattr(x, 'shape') else tuple(np.shape(x))


def load_pretrained(*, pretrained_path: str, init_params: Mapping[str, Any],
                    model_config: Any) -> dict:
    """Loads a checkpoint for fine-tuning a model whose fresh params are `init_params`.

    As the original: the head is taken from `init_params` (re-initialised for the new
    classes), `pre_logits` is dropped when `model_config` has no `representation_size`, and
    the position-embedding grid is resized linearly (class-token row kept). Beyond it: a
    different patch size resizes the patch-embedding kernel (FlexiViT), `pretrained_path`
    may be anything `vit_jax.convert.load_checkpoint` reads (a catalogue name, a timm / Hugging
    Face checkpoint, a `vit-train` workdir), and scan-layout models are supported.
    Raises `CheckpointError` naming missing or wrong-shape keys.
    """
    from vit_jax import convert  # convert reads every format and imports this module

    source = convert.read_checkpoint(pretrained_path)
    convert.warn_numerics(source, model_config)
    restored = dict(source.params)
    expected = init_params
    scan = 'encoderblock' in expected.get('Transformer', {})

    if config_util.get(model_config, 'representation_size') is None and 'pre_logits' in restored:
        logger.info('load_pretrained: drop-head variant (no representation_size)')
        del restored['pre_logits']
    restored.pop('head', None)
    if 'head' in expected:  # Abstract init params (jax.eval_shape) get the model's zero init.
        restored['head'] = {k: np.zeros(v.shape, v.dtype) if isinstance(v, jax.ShapeDtypeStruct) else v
                            for k, v in expected['head'].items()}

    posemb = restored.get('Transformer', {}).get('posembed_input', {}).get('pos_embedding')
    posemb_new = expected.get('Transformer', {}).get('posembed_input', {}).get('pos_embedding')
    if posemb is not None and posemb_new is not None and array_shape(posemb) != array_shape(posemb_new):
        logger.info('load_pretrained: resized variant %s -> %s',
                    array_shape(posemb), array_shape(posemb_new))
        restored['Transformer']['posembed_input']['pos_embedding'] = interpolate_posembed(
            posemb, array_shape(posemb_new)[1], has_class_token='cls' in expected)

    kernel = restored.get('embedding', {}).get('kernel')
    kernel_new = expected.get('embedding', {}).get('kernel')
    if kernel is not None and kernel_new is not None:
        old_hw, new_hw = array_shape(kernel)[:2], array_shape(kernel_new)[:2]
        if array_shape(kernel)[2:] == array_shape(kernel_new)[2:] and old_hw != new_hw:
            logger.info('load_pretrained: patch size %s -> %s', old_hw, new_hw)
            restored['embedding']['kernel'] = resize_patch_embedding(kernel, new_hw)

    if scan and 'encoderblock_0' in restored.get('Transformer', {}):
        restored = jax.tree_util.tree_map(np.asarray, blocks_to_scan(restored))
    inspect_params(restored, expected, fail_if_extra=False, source=str(pretrained_path))
    # Keep only what the model has, in the model's parameter dtype.
    got = io_util.flatten(restored)
    return io_util.unflatten({k: np.asarray(got[k]).astype(getattr(v, 'dtype', np.float32))
                             for k, v in io_util.flatten(expected).items()})
