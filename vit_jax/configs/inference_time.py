"""Measures inference speed (the original's configs/inference_time.py): trainer='inference_time'.

    vit-train --workdir=/tmp/timing --config=configs/inference_time.py \
        --config.model_name=ViT-B_16 --config.batch=64 --config.image_size=224 --config.num_classes=1000

Every field `vit_jax.inference_time` reads, with its default. The images are a constant batch,
data-parallel over every device; img/s/core statistics go to TensorBoard and metrics.jsonl in the
workdir and are printed.
"""

import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config() -> ml_collections.ConfigDict:
    """Returns the configuration of `vit_jax.inference_time` (locked: no new fields)."""
    config = ml_collections.ConfigDict()
    config.trainer = 'inference_time'
    # Which model to use: a name of vit_jax.configs.models.MODEL_CONFIGS (ViT or Mixer).
    config.model_name = 'ViT-B_32'
    # Weights to time with: `{pretrained_dir}/{model_name}.npz` (None: random initialisation,
    # which takes the same time).
    config.pretrained_dir = placeholder(str)
    # Number of steps to measure, after this many steps not measured.
    config.steps = 30
    config.initial_steps = 10
    # Global batch size, number of output classes and image size (width = height): all required.
    config.batch = 0
    config.num_classes = 0
    config.image_size = 0
    return config.lock()
