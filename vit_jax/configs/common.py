"""The default experiment config: every field vit-train reads, with its default and meaning.

As the original `vit_jax/configs/common.py` (same field names and fine-tuning defaults: batch
512, accum_steps 8, clip 1.0, SGD momentum with a bfloat16 accumulator, base lr 0.03, cosine
decay after 500 warm-up steps, eval every 100 steps, progress every 10, checkpoint every 1000,
shuffle buffer 50k, prefetch 2; `pretrained_dir='.'`), plus the fields of what this project
adds (optimizers, augmentation, few-shot probe, device mesh, multi-host). The code reads fields
and holds no defaults of its own: a config that lacks a field gets it from here when it is
resolved (`vit_jax.resolve`), so `vit-train` prints every value it uses and any of them can be
overridden on the command line (`--config.pp.flip=False`).

`with_dataset(config, name)` writes a data set's preset (splits, crop, steps, ...) INTO the
config, as the original does; nothing downstream looks presets up by data set name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from vit_jax import images
from vit_jax.errors import ConfigError

placeholder = ml_collections.config_dict.placeholder


def get_config() -> ml_collections.ConfigDict:
    """Returns every field other than the model's, at its default (locked: no new fields)."""
    config = ml_collections.ConfigDict()

    # Which model family `model` configures: 'ViT' (vit_jax.models.VisionTransformer, also the
    # hybrids), 'Mixer' or 'LiT'.
    config.model_type = 'ViT'
    # The model config (set by the experiment: e.g. `vit_jax.configs.models.get_b16_config()`);
    # every field of the module appears here once the config is resolved.
    config.model = None

    # Pretrained weights. `pretrained_path` (a file, a bucket URL, a catalogue name such as
    # ViT-B_16, or a vit-train workdir) wins; else `{pretrained_dir}/{name}.npz` as the original,
    # name = `model_or_filename` (AugReg) or `model.model_name`; both None: from scratch.
    config.pretrained_path = placeholder(str)
    config.pretrained_dir = '.'
    # AugReg: a model key (B_16: the best i21k checkpoint) or a full AugReg filename.
    config.model_or_filename = placeholder(str)

    # Data: a tfds name, 'digits' (scikit-learn's, no download), a folder root/<class>/<image>
    # (or root/{train,test}/<class>/...), or a CSV of path,label[,split] rows.
    config.dataset = ''
    config.tfds_data_dir = placeholder(str)     # tfds data_dir (None: tfds' default)
    config.tfds_manual_dir = placeholder(str)   # manual downloads (imagenet2012 tars)
    config.pp = ml_collections.ConfigDict(dict(
        train='train',          # tfds split for training (folders/CSVs/digits: their own)
        test='test',            # tfds split for evaluation
        crop=224,               # model input side (pixels)
        train_crop='inception',  # 'inception' (5-100 % area box) | 'random' (from `resize`) | 'resize'
        eval_crop='resize',     # 'resize' (whole image) | 'center' (central crop from `resize`)
        resize=placeholder(int),  # side before a 'random' / 'center' crop (required by those)
        flip=True,              # random horizontal flip in training
        holdout=0.1,            # eval fraction of sources without an eval split (stratified)
        check_images=True,      # decode every folder/CSV image once up front, skip unreadable
        partial_patches=False,  # True: a crop the patches do not tile loses its last pixels (original)
        max_image_pixels=images.MAX_PIXELS,   # skip folder/CSV images that declare more (decompression
                                              # bombs), from their header; needs check_images
    ))
    config.batch = 512
    config.batch_eval = 512
    config.shuffle_buffer = 50_000
    config.prefetch = 2
    config.aug = ml_collections.ConfigDict(dict(
        randaugment_layers=0, randaugment_magnitude=0.0, mixup_alpha=0.0, cutmix_alpha=0.0,
        mixup_switch_prob=0.5, mixup_prob=1.0, label_smoothing=0.0))

    # Optimisation (vit_jax.optim): the original's SGD-momentum fine-tuning recipe.
    config.trainer = 'train'
    config.total_steps = placeholder(int)      # set by with_dataset() or the experiment
    config.optimizer = 'sgd'                   # 'sgd' | 'adam' (AdamW: weight_decay > 0)
    config.momentum = 0.9                      # sgd
    config.b1 = 0.9                            # adam
    config.b2 = 0.999
    config.eps = 1e-8
    config.optim_dtype = 'bfloat16'            # first-moment accumulator dtype (None: params')
    config.base_lr = 0.03
    config.decay_type = 'cosine'               # 'cosine' | 'linear' | 'constant'
    config.warmup_steps = 500
    config.linear_end = 1e-5
    config.grad_norm_clip = 1.0                # None: no clipping
    config.weight_decay = 0.0                  # weight matrices only
    config.weight_decay_type = 'decoupled'     # 'decoupled' (times lr, AdamW) | 'l2'
    config.layer_decay = placeholder(float)    # layer-wise lr decay (BEiT), None: off
    config.accum_steps = 8
    config.loss = 'softmax_xent'               # 'softmax_xent' | 'sigmoid_xent'
    config.seed = 0

    # Loop, logging, checkpoints.
    config.eval_every = 100                    # 0: only at the end
    config.progress_every = 10
    config.checkpoint_every = 1_000            # 0: only at the end (and on SIGTERM)
    config.keep_checkpoints = 3                # the latest N, plus the best by accuracy
    config.progress_bar = True

    # Few-shot linear probe during training (paper §4.1), off unless `dataset` is set: every
    # `every` steps (0: eval_every) and at the end logs fewshot/<n>shot, with max(shots) train
    # images per class and at most `max_eval` test images of `dataset`.
    config.fewshot = ml_collections.ConfigDict(dict(
        dataset=placeholder(str), every=0, shots=(1, 5, 10, 25), max_eval=2_000, l2_reg=2.0 ** 10))

    # Devices: one mesh over all devices of all hosts; fsdp > 1 shards params + optimizer state
    # (tensors of fewer than fsdp_min_size elements stay replicated).
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2 ** 14))
    config.distributed = ml_collections.ConfigDict(dict(
        auto=False, coordinator_address=placeholder(str), num_processes=placeholder(int),
        process_id=placeholder(int)))
    return config.lock()


# Per data set: splits, resolution and fine-tuning steps, written into the config by
# `with_dataset`. cifar10/100 and imagenet2012 are the original's (it leaves a subset of the
# training split out for validation); the rest are the paper's (App. B.1.1) and this project's.
DATASET_PRESETS: dict[str, ml_collections.ConfigDict] = {
    'cifar10': ml_collections.ConfigDict(
        {'total_steps': 10_000, 'pp': {'train': 'train[:98%]', 'test': 'test', 'crop': 384}}),
    'cifar100': ml_collections.ConfigDict(
        {'total_steps': 10_000, 'pp': {'train': 'train[:98%]', 'test': 'test', 'crop': 384}}),
    'imagenet2012': ml_collections.ConfigDict(
        {'total_steps': 20_000, 'pp': {'train': 'train[:99%]', 'test': 'validation', 'crop': 384}}),
    'oxford_iiit_pet': ml_collections.ConfigDict(
        {'total_steps': 500, 'pp': {'train': 'train[:90%]', 'test': 'test', 'crop': 384}}),
    'oxford_flowers102': ml_collections.ConfigDict(
        {'total_steps': 500, 'pp': {'train': 'train+validation', 'test': 'test', 'crop': 384}}),
    # big_vision's ImageNet-21k splits (the data set must be prepared in tfds_data_dir).
    'imagenet21k': ml_collections.ConfigDict(
        {'total_steps': 312_000, 'pp': {'train': 'full[51200:]', 'test': 'full[:51200]', 'crop': 224}}),
    # scikit-learn's 8x8 digits: upsampled to 18x18, a random 16x16 crop (a +-1 px shift) for
    # training and the central crop for eval; no flip (digits are not mirror-symmetric); 20 % of
    # each class held out (359 of 1,797 images).
    'digits': ml_collections.ConfigDict(
        {'total_steps': 500, 'pp': {'crop': 16, 'resize': 18, 'train_crop': 'random',
                                    'eval_crop': 'center', 'flip': False, 'holdout': 0.2}}),
}


def with_dataset(config: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
    """`config` with `dataset` and its preset written in (returns a new, unlocked config)."""
    if dataset not in DATASET_PRESETS:
        raise ConfigError(f'dataset {dataset!r} has no preset; known: {", ".join(DATASET_PRESETS)} '
                         '(other data sets: set config.dataset and config.pp yourself)')
    config = ml_collections.ConfigDict(config.to_dict())
    config.dataset = dataset
    config.update(DATASET_PRESETS[dataset])
    return config


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: tuple[str, ...] = ('config',)
            ) -> Iterable[tuple[str, Any]]:
    """Returns a flat representation of `config`, e.g. for use in sweeps (the original's)."""
    for k, v in config.items():
        if isinstance(v, Mapping | ml_collections.ConfigDict):
            yield from flatten(v, prefix + (k,))
        else:
            yield ('.'.join(prefix + (k,)), v)
