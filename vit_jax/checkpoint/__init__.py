"""ViT checkpoints: the original's `vit_jax.checkpoint` API on top of one loader.

The original's functions keep their names and semantics: `load(path)` reads a public `.npz`
(any published layout) as a Linen parameter tree, `save(params, path)` writes one,
`load_pretrained(pretrained_path=, init_params=, model_config=)` adapts a checkpoint for
fine-tuning, `inspect_params`, `interpolate_posembed`, `recover_tree`. Inside, one module per
concern:

  tensors   the canonical torch-style naming <-> Linen; safetensors / torch reading, safetensors writing
  npz       the public .npz format (every published layout in, the original's out; big_vision's)
  timm      timm state dicts and hub directories (in and out); timm_archs: its architecture table
  hf        Hugging Face ViT, DeiT, DINOv2 and SigLIP vision directories (in and out)
  facts     what a user states about a checkpoint (one Facts object) and the pooling names
  arch      the model config a parameter tree implies, checked, never guessed
  download  verified, resumable, cached downloads (nothing ViT-specific)
  hub       the public catalogue (names -> URLs, AugReg index, LiT vocabularies)
  workdir   the vit-train directory: layout, one writer, resume, reading for inference
  loader    THE loader: any source -> (model config, params), or a model ready for inference
  adapt     fine-tuning: new head, position-embedding and patch-embedding resize
"""

from collections.abc import Sequence
from typing import Any

from vit_jax import trees
from vit_jax.checkpoint import arch, npz
from vit_jax.checkpoint.adapt import (
    interpolate_posembed,
    load_pretrained,
    replace_head,
    resize_patch_embedding,
)
from vit_jax.checkpoint.arch import inspect_params
from vit_jax.checkpoint.facts import Facts
from vit_jax.checkpoint.npz import save
from vit_jax.errors import CheckpointError


def load(path: str) -> dict:
    """A public `.npz` (any published layout) as a Linen parameter tree; its values are checked
    (real floating point, finite) as every loader's are."""
    params = npz.load(path)
    arch.check_values(params, source=str(path))
    return params


def recover_tree(keys: Sequence[str], values: Sequence[Any]) -> dict:
    """The nested tree of flat '/'-joined `keys` and their `values` (the original's)."""
    return trees.unflatten(dict(zip(keys, values, strict=True)))


__all__ = ['CheckpointError', 'Facts', 'inspect_params', 'interpolate_posembed', 'load', 'load_pretrained',
           'recover_tree', 'replace_head', 'resize_patch_embedding', 'save']
