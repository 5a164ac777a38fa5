"""Fine-tuning a pretrained ViT (paper App. B.1.1; original vit_jax): finetune.py:MODEL,DATASET

e.g. `--config=configs/finetune.py:ViT-B_16,cifar10`. SGD momentum 0.9, no weight decay, batch 512,
clip at global norm 1, cosine decay after 500 warm-up steps, resolution 384 (ViT-H/14: 378, a multiple
of its patch size) with position-embedding
interpolation and a new zero head (configs/common.py). Steps per data set are the paper's (and the
original presets): ImageNet 20k, CIFAR-10/100 10k, Oxford Pets / Flowers 500. The paper swept the
learning rate over {0.001, 0.003, 0.01, 0.03}; BASE_LR holds the value used here (0.03 as in the
original common.py; 0.01 for the 500-step sets). Warm-up is 500 steps (common.py), but 50 (10 %,
as configs/custom.py) for the 500-step sets, which the original's 500 would leave without decay
(WARMUP_STEPS). The weights: `pretrained_path` = the model's
catalogue name (downloaded by vit_jax.hub) unless overridden with --config.pretrained_path=FILE.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from configs import common  # noqa: E402

BASE_LR = {'imagenet2012': 0.03, 'cifar10': 0.03, 'cifar100': 0.03, 'oxford_iiit_pet': 0.01,
           'oxford_flowers102': 0.01}
WARMUP_STEPS = {'oxford_iiit_pet': 50, 'oxford_flowers102': 50}


def get_config(arg: str = 'ViT-B_16,cifar10') -> ml_collections.ConfigDict:
    model, dataset = (arg.split(',') + ['cifar10'])[:2]
    config = common.with_dataset(common.get_config(), dataset)
    config.model = common.model_config(model)
    config.pretrained_path = model
    common.fit_crop(config, model)
    config.base_lr = BASE_LR.get(dataset, 0.03)
    config.warmup_steps = WARMUP_STEPS.get(dataset, config.warmup_steps)
    return config
