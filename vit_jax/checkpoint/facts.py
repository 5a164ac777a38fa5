"""What a user may state about a checkpoint that its file does not record, as one object.

`Facts` is built once at the boundary — a CLI (`add_checkpoint_args` / `add_args` add the shared
flags, `from_args` builds it) or the Python API (`vit_jax.load`, `vit_jax.zeroshot.load`) — and passed
down whole to the one loader and the format readers. Every field is optional: a stated fact that the
file contradicts is an error, one it does not need is unused, none is ever guessed.

Pooling has one set of names here: vit_jax's `classifier` ('token', 'gap', 'map') and timm's
`global_pool` ('token', 'avg', 'map', also the CLIs' --pool) map one to one (`CLASSIFIER_OF_POOL`).
"""

from __future__ import annotations

import argparse
import dataclasses

from vit_jax import cli

# timm's global_pool (and --pool) -> vit_jax's classifier, and back.
CLASSIFIER_OF_POOL = {'token': 'token', 'avg': 'gap', 'map': 'map'}
POOL_OF_CLASSIFIER = {classifier: pool for pool, classifier in CLASSIFIER_OF_POOL.items()}
POOLS = tuple(CLASSIFIER_OF_POOL)


@dataclasses.dataclass(frozen=True)
class Facts:
    """Facts stated about a checkpoint (None: not stated)."""

    num_heads: int | None = None    # attention heads (a timm state dict does not record them)
    pool: str | None = None         # timm's pooling name (POOLS) of a timm state dict
    arch: str | None = None         # a timm architecture (vit-convert --list-archs)
    image_size: int | None = None   # input size of a fixed sin-cos position embedding (records none)
    model_name: str | None = None   # a MODEL_CONFIGS name: the architecture by name (LiT: its config)
    text_heads: int | None = None   # attention heads of a BERT text tower (LiT)
    max_len: int | None = None      # tokens per text of a BERT text tower (LiT)


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--checkpoint / --model and `add_args`, shared by the CLIs that load a model through the one loader."""
    parser.add_argument('--checkpoint', required=True,
                        help='npz file, vit-train workdir, timm/HF/big_vision checkpoint, bucket URL '
                             '(gs://...) or catalogue name (e.g. ViT-B_16)')
    parser.add_argument('--model', default=None, metavar='NAME',
                        help='the architecture by name (vit_jax.models.MODEL_CONFIGS) where the '
                             'checkpoint does not record it')
    add_args(parser)


def add_args(parser: argparse.ArgumentParser) -> None:
    """--arch / --num-heads / --image-size / --pool: what some files do not record (`from_args`)."""
    parser.add_argument('--arch', default=None, metavar='TIMM_NAME',
                        help='timm architecture of a timm state dict without timm\'s config.json (e.g. '
                             'vit_base_patch16_224; vit-convert --list-archs); one that contradicts the '
                             'config.json is an error')
    parser.add_argument('--num-heads', type=cli.positive_int, default=None,
                        help='attention heads of a timm state dict (its weights do not record them; '
                             'timm\'s config.json beside them does)')
    parser.add_argument('--image-size', type=cli.positive_int, default=None, metavar='N',
                        help='input size of a model with a fixed sin-cos position embedding (big_vision), '
                             'which records none')
    parser.add_argument('--pool', choices=POOLS, default=None,
                        help='pooling of a timm state dict (its weights do not record it; timm\'s '
                             'config.json beside them does)')


def from_args(args: argparse.Namespace) -> Facts:
    """The `Facts` of parsed arguments: those of `add_args`, and --model where the CLI has it."""
    return Facts(num_heads=args.num_heads, pool=args.pool, arch=args.arch, image_size=args.image_size,
                 model_name=getattr(args, 'model', None))
