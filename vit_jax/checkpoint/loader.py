"""THE loader: any checkpoint source -> (model config, parameters), each format detected once.

Sources: a catalogue name (`ViT-B_16`, `augreg/B_16`, ...: downloaded once, verified, cached by
`hub`), a vit-train workdir, the original / AugReg `.npz`, a big_vision `.npz`, a timm state
dict (`.safetensors`, `.pth`/`.bin`, or a timm hub directory: config.json naming an `architecture`
beside model.safetensors), a Hugging Face ViT, DeiT, DINOv2 or SigLIP directory — local or in a bucket
(gs://...). `read(source)` returns a `Checkpoint` (config, per-block Linen params, format,
class names and eval preprocessing of a workdir); `load(source)` the pair `(model_config,
params)`; `load_model(source)` a `LoadedModel` ready for inference.

Nothing is guessed: the architecture comes from the weights' shapes and what the format states
(numerics from Hugging Face config.json or our metadata; the original's for npz). A fact that
is not in the file (the number of heads of a timm file) must be given, else a one-line
CheckpointError says how.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vit_jax import paths
from vit_jax.checkpoint import arch, hf, hub, npz, tensors, timm, workdir
from vit_jax.checkpoint.facts import Facts
from vit_jax.errors import CheckpointError, ConfigError
from vit_jax.models import (
    MODEL_CONFIGS,
    VisionTransformer,
    build_model,
    check_image_size,
    family,
    get_config,
    scan_to_blocks,
)

FORMAT_NAMES = {
    'npz': 'original/AugReg .npz', 'big_vision': 'big_vision .npz',
    'timm': 'timm state dict', 'hf': 'Hugging Face', 'workdir': 'vit-train workdir'}


@dataclasses.dataclass
class Checkpoint:
    """What `read` found: the model config, the per-block Linen params and their origin."""

    model_config: ml_collections.ConfigDict
    params: dict
    format: str                            # a FORMAT_NAMES key
    path: str                              # the local path or URL that was read
    class_names: list[str] | None = None   # a vit-train workdir's, an HF config.json's id2label
    eval_pp: dict | None = None            # eval pp (crop, eval_crop, resize): a workdir's, an HF center crop
    image_size: int | None = None          # stated by the caller (a sin-cos position embedding has none)


def _kind(path: str) -> str:
    """'workdir', 'hf', 'npz' or 'weights' from the path alone."""
    if not paths.exists(path):
        raise FileNotFoundError(2, 'no such file or directory', path)
    if workdir.is_workdir(path):
        return 'workdir'
    if timm.timm_hub_weights(path):
        return 'weights'
    if paths.is_dir(path) or paths.name(path) == 'config.json':
        hf.hf_files(path)
        return 'hf'
    if path.endswith('.npz'):
        return 'npz'
    if path.endswith(('.safetensors', '.safetensors.index.json', '.pth', '.pt', '.bin')):
        return 'weights'
    raise CheckpointError(f'{path}: unknown checkpoint format; expected .npz, .safetensors, .pth/.bin, '
                          'a Hugging Face directory or a vit-train workdir')


def _weights_path(path: str) -> str:
    """The weights file of a timm hub snapshot (a directory or its config.json), else `path`."""
    return path if workdir.is_workdir(path) else timm.timm_hub_weights(path) or path


def weights_format(path: str, keys: Sequence[str]) -> str:
    """'hf' or 'timm' from the tensor names of a .safetensors / .pth / .bin file."""
    hf_starts = ('embeddings.', 'encoder.layer', 'layers.')
    if any(re.sub(r'^(vit|deit|dinov2_with_registers|dinov2|vision_model)\.', '', k).startswith(hf_starts)
           for k in keys):
        return 'hf'
    if any(k.removeprefix('module.').startswith(('patch_embed.', 'blocks.')) for k in keys):
        return 'timm'
    raise CheckpointError(f'{path}: neither timm nor Hugging Face ViT weights (keys: {list(keys)[:4]} ...)')



def detect_format(path: str) -> str:
    """'npz', 'big_vision', 'timm', 'hf' or 'workdir', reading as little of `path` as it can."""
    path = str(path)
    kind = _kind(path)
    path = _weights_path(path)
    if kind == 'npz':
        return 'big_vision' if npz.is_big_vision(npz.keys(path)) else 'npz'
    if kind == 'weights':
        fmt = weights_format(path, tensors.weight_names(path))
        if fmt == 'hf':
            hf.hf_files(path)
        return fmt
    return kind


def _from_workdir(path: str) -> Checkpoint:
    saved, params = workdir.load_trained(path)
    config = ml_collections.ConfigDict(saved['model'])
    if 'scan_layers' in config:
        config.scan_layers = False   # the parameters are now in the per-block layout
    info = saved.get('dataset_info') or {}
    names = info.get('class_names')
    pp = saved.get('pp') or {}
    eval_pp = {k: pp.get(k) for k in ('crop', 'eval_crop', 'resize')}
    return Checkpoint(config, params, 'workdir', path, list(names) if names else None, eval_pp)


def _lit_config(source: str, path: str, params: dict, facts: Facts) -> ml_collections.ConfigDict:
    """A LiT file's config: `facts.model_name`, else the LiT name of a catalogue source or of the file
    (the original saves `LiT-B16B.npz`), else what the weights record plus `facts.text_heads` / `max_len`."""
    names = arch.lit_models()
    stem = paths.name(path).removesuffix('.npz')
    named = facts.model_name or next((n for n in names if str(source) in (n, f'lit/{n}') or stem == n), None)
    if named is None:
        return arch.infer_lit_config(params, text_heads=facts.text_heads, max_len=facts.max_len, source=path)
    if named not in names:
        raise ConfigError(f'{path} is a LiT checkpoint; --model {named!r} is not a LiT model '
                          f'({", ".join(names)})')
    return get_config(named)


def read(source: str, facts: Facts | None = None) -> Checkpoint:
    """Reads any supported checkpoint, workdir or catalogue name (see the module doc), once.

    `facts` (`vit_jax.checkpoint.facts.Facts`) states what a file does not record: a timm
    architecture (`arch`, `timm.TIMM_ARCHS`) or `num_heads` and `pool` ('token' | 'avg' | 'map') for
    a timm state dict, needed only for those, and not when the config.json timm saves beside its weights
    names the architecture and its model_args (then one that contradicts it is a CheckpointError). A
    LiT `.npz` takes the config of `model_name`, or of its catalogue name or file name
    (`LiT-B16B.npz`), or else from its shapes, with `text_heads` and `max_len` for a BERT text tower
    (which records neither); a SigLIP model (big_vision `.npz` with the bias `b`, HF SiglipModel) is read
    whole, both towers, from its shapes and config.json (`is_siglip`; `load_model` serves its image
    tower). `image_size`: the input size of a model with a fixed sin-cos position
    embedding (big_vision's `posemb='sincos2d'`, which records none); for other models it must be the
    one their position embedding records. Raises CheckpointError (one line) on unreadable or
    inconsistent files, FileNotFoundError or DownloadError when there is nothing to read.
    """
    facts = facts or Facts()
    path = hub.resolve(str(source))
    kind = _kind(path)
    if kind == 'workdir':
        found = _from_workdir(path)
    elif kind == 'npz':
        flat = npz.read(path)
        params = npz.two_tower(flat, path) if npz.is_siglip(flat) else npz.normalize(flat, path)
        if npz.is_siglip(flat):
            config = arch.infer_siglip_config(params, source=path)
        elif npz.is_lit(flat):
            config = _lit_config(source, path, params, facts)
        else:
            config = npz.vit_config(flat, params, path)
        found = Checkpoint(config, params, 'big_vision' if npz.is_big_vision(flat) else 'npz', path)
    elif kind == 'hf':
        found = Checkpoint(*hf.read_hf(path), 'hf', path)
    else:
        path = _weights_path(path)
        sd, meta = tensors.read_weights(path)
        fmt = weights_format(path, list(sd))
        config, params = (hf.read_hf(path, sd) if fmt == 'hf'
                          else timm.read_timm(path, sd, meta, facts))
        found = Checkpoint(config, params, fmt, path)
        if fmt == 'timm':   # what timm's config.json records beside the weights: labels
            found.class_names = timm.timm_class_names(path, meta, arch.num_classes(params))
    if found.format == 'hf':   # what the directory records beside the weights: labels, center crop
        found.class_names, found.eval_pp = hf.hf_class_names(path), hf.hf_eval_pp(path)
    arch.check_params(found.params, found.model_config, source=path)
    arch.check_values(found.params, source=path)
    image_size = facts.image_size
    if image_size is not None and family(found.model_config) == 'ViT':
        if arch.model_field(found.model_config, 'posemb') == 'learn':
            recorded = arch.image_size(found.params, found.model_config)
            if image_size != recorded:
                raise CheckpointError(f'{path}: --image-size {image_size}, but the position embedding is '
                                      f'for {recorded}-pixel images')
        found.image_size = image_size
    return found


def load(source: str, facts: Facts | None = None) -> tuple[ml_collections.ConfigDict, dict]:
    """`(model_config, params)` of any supported checkpoint, workdir or catalogue name (`facts` as for
    `read`)."""
    found = read(source, facts)
    return found.model_config, found.params


def warn_numerics(found: Checkpoint, model_config: Any) -> None:
    """Warns when a model is given weights trained with another LayerNorm eps or GELU form.

    Only formats that record their numerics are checked (an .npz says nothing about them).
    """
    if found.format not in ('timm', 'hf', 'workdir'):
        return
    names = ('layer_norm_eps', 'gelu_approximate')
    for key, have, want in zip(names, arch.numerics(found.model_config), arch.numerics(model_config),
                               strict=True):
        if have != want:
            warnings.warn(f'{found.path} has {key}={have} but the model uses {want}; set it in the model '
                          'config to reproduce the source model', stacklevel=3)


def is_siglip(model_config: Any) -> bool:
    """Whether a model config is SigLIP's: a two-tower model with the learned bias of the sigmoid loss."""
    return family(model_config) == 'LiT' and model_config.get('bias_init') is not None


# --- Inference ---------------------------------------------------------------------------------

@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference: module, parameters and what its inputs and outputs mean."""

    model: VisionTransformer
    params: Any
    image_size: int                    # side of the square input the position embeddings were made for
    class_names: list[str] | None
    source: str
    crop_fraction: float | None = None   # eval center crop of a training workdir (None: resize)

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    @property
    def num_prefix_tokens(self) -> int:
        """1 for a class token, else 0 (the tokens before the patch tokens)."""
        return self.model.num_prefix_tokens

    @property
    def stride(self) -> int:
        """Input pixels per token along each side (patch size x ResNet stem stride)."""
        return self.model.patch_stride[0]

    @property
    def grid(self) -> int:
        return self.image_size // self.stride


def from_params(model_config: Any, params: Any, source: str, class_names: list[str] | None = None,
                image_size: int | None = None) -> LoadedModel:
    """The inference module for `params` (head size, pre-logits and class token read from them)."""
    params = dict(params)
    if set(params) == {'params'}:   # Flax variables
        params = dict(params['params'])
    if 'encoderblock' in params.get('Transformer', {}):
        params = scan_to_blocks(params)
    num_classes = arch.num_classes(params) or None
    config = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
    if family(config) == 'ViT':
        fixed = arch.model_field(config, 'posemb') == 'sincos2d'
        if not fixed and 'posembed_input' not in params.get('Transformer', {}):
            raise CheckpointError(f'{source}: no Transformer/posembed_input/pos_embedding in the parameters')
        # What the parameters record (the same reading as for a config read from them); a named config
        # (--model) may differ from the file in its pre-logits layer, tokens or fc_norm.
        config.update({k: arch.model_default(k) for k in ('num_registers', 'fc_norm', 'distillation_token')})
        config.update(arch.tree_fields(params, config.get('classifier', 'token'), source))
    model = build_model(config, num_classes, inference=True)
    if image_size is not None:   # stated (a sin-cos position embedding); a recorded one tiles
        check_image_size(model, image_size, '--image-size')
    try:
        size = image_size or arch.image_size(params, config)
    except CheckpointError as e:
        raise CheckpointError(f'{source}: {e}') from None
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise CheckpointError(f'{source}: {len(class_names)} class names for a {num_classes}-class head')
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return LoadedModel(model=model, params=params, image_size=size, class_names=class_names, source=source)


def load_model(source: str, facts: Facts | None = None) -> LoadedModel:
    """A checkpoint (file, URL, workdir or catalogue name) as a model ready for inference.

    `facts.model_name` (a `MODEL_CONFIGS` key) replaces the architecture read from the file, keeping
    the file's LayerNorm epsilon and GELU form; the other `facts` are `read`'s.
    """
    facts = facts or Facts()
    model_name = facts.model_name
    if model_name is not None and model_name not in MODEL_CONFIGS:
        raise ConfigError(f'--model {model_name!r} is unknown; known models: {", ".join(MODEL_CONFIGS)}')
    found = read(source, dataclasses.replace(facts, model_name=None))
    model_config = found.model_config
    if is_siglip(model_config):
        warnings.warn(f'{found.path}: a two-tower SigLIP model; using its image tower (the image embeddings '
                      'SigLIP scores against texts; vit-zeroshot classifies with both towers)', stacklevel=2)
        model_config, found.params = model_config.image, found.params['img']
    elif family(model_config) == 'LiT':
        raise CheckpointError(f'{found.path} is a LiT image-text model: classify with it zero-shot '
                              '(vit-zeroshot, vit_jax.zeroshot)')
    if model_name is not None:
        named = get_config(model_name)
        named.layer_norm_eps, named.gelu_approximate = arch.numerics(model_config)
        model_config = named
    loaded = from_params(model_config, found.params, str(source), found.class_names, found.image_size)
    pp = found.eval_pp or {}
    if pp.get('eval_crop') == 'center' and pp.get('resize'):
        loaded.crop_fraction = float(pp['crop']) / float(pp['resize'])
    return loaded

