"""The original vit_jax fine-tuning defaults (configs/common.py of google-research/vision_transformer).

Every other config starts from `get_config()` and changes what its recipe changes. Numbers:
DESIGN.md "Fine-tuning defaults" = the original code: batch 512 (eval 512), accum_steps 8,
gradient clipping at global norm 1, SGD momentum 0.9 with a bfloat16 accumulator, base lr 0.03,
cosine decay after 500 warm-up steps, eval every 100 steps, progress every 10, checkpoint every
1000, shuffle buffer 50k, prefetch 2.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Data (read by vit_jax.input_pipeline).
    config.dataset = ''
    config.tfds_data_dir = ml_collections.config_dict.placeholder(str)
    config.tfds_manual_dir = ml_collections.config_dict.placeholder(str)
    config.pp = ml_collections.ConfigDict()
    config.batch = 512
    config.batch_eval = 512
    config.shuffle_buffer = 50_000
    config.prefetch = 2
    config.aug = ml_collections.ConfigDict(dict(
        randaugment_layers=0, randaugment_magnitude=0, mixup_alpha=0.0, cutmix_alpha=0.0,
        mixup_switch_prob=0.5, mixup_prob=1.0, label_smoothing=0.0))
    # Model: a vit_jax.models config (patches, hidden_size, transformer, classifier, ...),
    # optionally with dtype / attention_impl / remat / scan_layers.
    config.model = ml_collections.ConfigDict()
    config.pretrained_path = ml_collections.config_dict.placeholder(str)  # npz path or catalogue name
    # Optimiser (vit_jax.optim).
    config.optimizer = 'sgd'
    config.momentum = 0.9
    config.optim_dtype = 'bfloat16'
    config.base_lr = 0.03
    config.decay_type = 'cosine'
    config.warmup_steps = 500
    config.linear_end = 1e-5
    config.total_steps = 10_000
    config.grad_norm_clip = 1.0
    config.weight_decay = 0.0
    config.weight_decay_type = 'decoupled'
    config.layer_decay = ml_collections.config_dict.placeholder(float)
    config.accum_steps = 8
    config.loss = 'softmax_xent'
    # Loop, logging, checkpoints.
    config.eval_every = 100
    config.progress_every = 10
    config.checkpoint_every = 1_000
    config.keep_checkpoints = 3
    config.progress_bar = True
    # Few-shot linear probe during training (vit_jax.fewshot; paper §4.1), off unless `dataset` is
    # set: every `every` steps [eval_every] and at the end, logs fewshot/<n>shot for n in `shots`,
    # with max(shots) train images per class and at most `max_eval` test images of `dataset`.
    config.fewshot = ml_collections.ConfigDict(dict(
        dataset=ml_collections.config_dict.placeholder(str), every=0, shots=(1, 5, 10, 25),
        max_eval=2_000, l2_reg=2.0 ** 10))
    # Devices: mesh over all devices of all hosts; fsdp > 1 shards params + optimizer state.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2 ** 14))
    config.distributed = ml_collections.ConfigDict(dict(
        auto=False, coordinator_address=ml_collections.config_dict.placeholder(str),
        num_processes=ml_collections.config_dict.placeholder(int),
        process_id=ml_collections.config_dict.placeholder(int)))
    return config


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """`vit_jax.models.get_config(name)` with dotted overrides ('transformer.dropout_rate': 0.1)."""
    from vit_jax import models
    return models.get_config(name, **overrides)


def with_dataset(config: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
    """Sets `dataset`, the preprocessing (`pp`) and `total_steps` of the original presets."""
    from vit_jax.input_pipeline import DATASET_PRESETS
    if dataset not in DATASET_PRESETS:
        raise ValueError(f'dataset {dataset!r} has no preset; known: {", ".join(DATASET_PRESETS)}')
    preset = dict(DATASET_PRESETS[dataset])
    config.dataset = dataset
    total_steps = preset.pop('total_steps', None)
    if total_steps:
        config.total_steps = total_steps
    config.pp.update(preset)
    return config


def fit_crop(config: ml_collections.ConfigDict, model: str) -> ml_collections.ConfigDict:
    """Rounds `pp.crop` down to a multiple of the model's input pixels per token (ViT-H/14 at
    384 -> 378 = 27 x 14: the original's VALID patch convolution also dropped the remainder)."""
    from vit_jax import models
    stride = max(models.get_model(model, num_classes=1).patch_stride)
    config.pp.crop -= config.pp.crop % stride
    return config

