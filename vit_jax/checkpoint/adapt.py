"""Adapting a checkpoint to a model: checking keys and shapes, new heads, resized embeddings.

`load_pretrained` is the original's fine-tuning load: the head is re-initialised (zeros) for
the new classes, `pre_logits` is dropped when the new model has no `representation_size`, and
the position-embedding grid is resized linearly like `scipy.ndimage.zoom(order=1)` with the
class-token row kept. Beyond it: the source may be anything the one loader reads, a different
patch size resizes the patch-embedding kernel (FlexiViT), and scan-layout models are supported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from vit_jax import trees
from vit_jax.checkpoint import arch, loader
from vit_jax.errors import CheckpointError
from vit_jax.models import MlpMixer, VisionTransformer, blocks_to_scan, family

logger = logging.getLogger(__name__)

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


def interpolate_posembed(posemb: Any, num_tokens: int, has_class_token: bool = True,
                         num_prefix_tokens: int | None = None) -> np.ndarray:
    """Resizes [1, (1+)g*g, D] position embeddings to `num_tokens` tokens (the original rule).

    The g x g grid is resampled linearly as `scipy.ndimage.zoom(grid, (g'/g, g'/g, 1), order=1)`;
    the class-token row, if any, is kept as is (`num_prefix_tokens`: rows kept before the grid,
    e.g. class token + registers; default 1 with a class token, else 0).
    """
    posemb = np.asarray(posemb)
    n_extra = (1 if has_class_token else 0) if num_prefix_tokens is None else num_prefix_tokens
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


# The architecture facts that decide the parameter shapes (a patch size is resized, FlexiViT-style).
_SHAPE_FACTS = (('hidden_size', 'hidden_size'), ('transformer.num_layers', 'layers'),
                ('transformer.mlp_dim', 'mlp_dim'), ('resnet.num_layers', 'ResNet stem'))


def _fact(config: Any, dotted: str) -> Any:
    """A field of a model config (mapping) or module, e.g. 'transformer.num_layers'; None if absent."""
    node = config
    for part in dotted.split('.'):
        node = node.get(part) if hasattr(node, 'get') else getattr(node, part, None)
    return tuple(node) if isinstance(node, list | tuple) else node


def _family(config: Any) -> str:
    """`models.family` of a model config or of a module built from one."""
    if isinstance(config, VisionTransformer):
        return 'ViT'
    return 'Mixer' if isinstance(config, MlpMixer) else family(config)


def check_architecture(source: loader.Checkpoint, model_config: Any) -> None:
    """One CheckpointError naming every differing shape fact when `source` is another architecture
    than `model_config` (instead of a list of mismatched tensor shapes)."""
    if _family(source.model_config) != _family(model_config):
        raise CheckpointError(f'{source.path} is a {_family(source.model_config)} model but config.model '
                              f'is a {_family(model_config)}')
    if _family(model_config) != 'ViT':
        return
    diffs = [f'{label} {_fact(source.model_config, key)} (config.model: {_fact(model_config, key)})'
             for key, label in _SHAPE_FACTS if _fact(source.model_config, key) != _fact(model_config, key)]
    if diffs:
        name, target = _fact(source.model_config, 'model_name'), _fact(model_config, 'model_name')
        raise CheckpointError(f'{source.path}{f" ({name})" if name else ""} has another architecture than '
                              f'config.model ({target or "custom"}): '
                              f'{", ".join(diffs)}; set config.model to the checkpoint\'s (configs/custom.py:'
                              'SOURCE,FOLDER reads it from the source) or use a checkpoint of this model')


def load_pretrained(*, pretrained_path: str, init_params: Mapping[str, Any],
                    model_config: Any) -> dict:
    """Loads a checkpoint for fine-tuning a model whose fresh params are `init_params`.

    As the original: the head is taken from `init_params` (re-initialised for the new
    classes), `pre_logits` is dropped when `model_config` has no `representation_size`, and
    the position-embedding grid is resized linearly (class-token row kept). Beyond it: a
    different patch size resizes the patch-embedding kernel (FlexiViT), `pretrained_path`
    may be anything the one loader (`vit_jax.checkpoint.loader.read`) reads: a file or bucket URL
    in any supported format, a catalogue name, a `vit-train` workdir; scan-layout models are
    supported. Raises `CheckpointError` naming missing or wrong-shape keys.
    """
    return adapt_pretrained(loader.read(pretrained_path), init_params, model_config)[0]


def adapt_pretrained(source: loader.Checkpoint, init_params: Mapping[str, Any], model_config: Any
                     ) -> tuple[dict, str]:
    """`load_pretrained` of a checkpoint already read: (params, one line saying what was loaded from
    where and what was re-initialised, dropped or resized, and why)."""
    pretrained_path = source.path
    check_architecture(source, model_config)
    loader.warn_numerics(source, model_config)
    restored = dict(source.params)
    notes: list[str] = []
    expected = init_params
    scan = 'encoderblock' in expected.get('Transformer', {})

    if arch.model_field(model_config, 'representation_size') is None and 'pre_logits' in restored:
        logger.info('load_pretrained: drop-head variant (no representation_size)')
        del restored['pre_logits']
        notes.append('pre_logits dropped (config.model has no representation_size)')
    for head in ('head', 'head_dist'):   # head_dist: DeiT's distillation head
        old = restored.pop(head, None)
        if head in expected:  # Abstract init params (jax.eval_shape) get the model's zero init.
            was = f'{trees.shape(old["kernel"])[-1]} classes' if old is not None else 'none'
            notes.append(f'{head} re-initialised to zeros for {trees.shape(expected[head]["kernel"])[-1]} '
                         f'classes (the checkpoint\'s: {was})')
            restored[head] = {k: np.zeros(v.shape, v.dtype) if isinstance(v, jax.ShapeDtypeStruct) else v
                              for k, v in expected[head].items()}

    posemb = restored.get('Transformer', {}).get('posembed_input', {}).get('pos_embedding')
    posemb_new = expected.get('Transformer', {}).get('posembed_input', {}).get('pos_embedding')
    if posemb is not None and posemb_new is not None and trees.shape(posemb) != trees.shape(posemb_new):
        logger.info('load_pretrained: resized variant %s -> %s',
                    trees.shape(posemb), trees.shape(posemb_new))
        prefix = (('cls' in expected) + ('dist' in expected)
                  + (trees.shape(expected['reg'])[1] if 'reg' in expected else 0))
        restored['Transformer']['posembed_input']['pos_embedding'] = interpolate_posembed(
            posemb, trees.shape(posemb_new)[1], num_prefix_tokens=prefix)
        notes.append(f'pos_embedding resized from {trees.shape(posemb)[1]} to {trees.shape(posemb_new)[1]} '
                     'tokens (another image size)')

    kernel = restored.get('embedding', {}).get('kernel')
    kernel_new = expected.get('embedding', {}).get('kernel')
    if kernel is not None and kernel_new is not None:
        old_hw, new_hw = trees.shape(kernel)[:2], trees.shape(kernel_new)[:2]
        if trees.shape(kernel)[2:] == trees.shape(kernel_new)[2:] and old_hw != new_hw:
            logger.info('load_pretrained: patch size %s -> %s', old_hw, new_hw)
            restored['embedding']['kernel'] = resize_patch_embedding(kernel, new_hw)
            notes.append(f'patch embedding resized from {old_hw} to {new_hw} (FlexiViT)')

    if scan and 'encoderblock_0' in restored.get('Transformer', {}):
        restored = jax.tree_util.tree_map(np.asarray, blocks_to_scan(restored))
    arch.inspect_params(restored, expected, fail_if_extra=False, source=str(pretrained_path))
    # Keep only what the model has, in the model's parameter dtype.
    got = trees.flatten(restored)
    wanted = trees.flatten(expected)
    heads = {k for k in wanted if k.split('/')[0] in ('head', 'head_dist')}
    params = trees.unflatten({k: np.asarray(got[k]).astype(getattr(v, 'dtype', np.float32))
                              for k, v in wanted.items()})
    report = (f'Loaded {len(wanted) - len(heads)} of {len(wanted)} tensors from {pretrained_path} '
              f'({loader.FORMAT_NAMES.get(source.format, source.format)})'
              + ''.join(f'; {n}' for n in notes))
    return params, report


def replace_head(params: Mapping[str, Any], classes: int, distillation_head: bool | None = None) -> dict:
    """A zero-initialised `classes`-way head (as fine-tuning does); 0 removes the head (DeiT's
    distillation head `head_dist` alike). With a distillation token, `distillation_head` (the model
    config's; None: whether `params` has `head_dist`, else True) says whether it gets a `head_dist`."""
    params = dict(params)
    norm = (params.get('fc_norm') or params.get('Transformer', {}).get('encoder_norm')
            or params['pre_head_layer_norm'])
    # The head's input: an existing head's (2 x hidden_size for classifier='token_gap'), else the features.
    features = (trees.shape(params['head']['kernel'])[0] if 'head' in params
                else trees.shape(params['pre_logits']['kernel'])[1] if 'pre_logits' in params
                else trees.shape(norm['scale'])[0])
    dtype = np.asarray(norm['scale']).dtype
    if distillation_head is None:
        distillation_head = 'head_dist' in params or 'head' not in params
    for head in ('head', 'head_dist') if 'dist' in params else ('head',):
        params.pop(head, None)
        if classes and (head == 'head' or distillation_head):
            params[head] = {'kernel': np.zeros((features, classes), dtype), 'bias': np.zeros(classes, dtype)}
    return params
