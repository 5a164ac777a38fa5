"""Fine-tuning a pretrained ViT (paper App. B.1.1; original vit_jax): finetune.py:MODEL,DATASET

e.g. `--config=configs/finetune.py:ViT-B_16,cifar10`. SGD momentum 0.9, no weight decay, batch 512,
clip at global norm 1, cosine decay after 500 warm-up steps, resolution 384 (as the original, also
for ViT-H/14, whose 14 px patches then cover the top-left 378x378) with position-embedding
interpolation and a new zero head (vit_jax/configs/common.py). Steps per data set are the paper's
(and the original presets): ImageNet 20k, CIFAR-10/100 10k, Oxford Pets / Flowers 500. The paper
swept the learning rate over {0.001, 0.003, 0.01, 0.03}; BASE_LR holds the value used here (0.03 as
in the original common.py; 0.01 for the 500-step sets). Warm-up is 500 steps, but 50 (10 %) for the
500-step sets, which the original's 500 would leave without decay (WARMUP_STEPS). The weights:
`pretrained_path` = the model's catalogue name (downloaded and verified by vit_jax.checkpoint.hub)
unless overridden with --config.pretrained_path=FILE.
"""

import ml_collections

from vit_jax import models
from vit_jax.configs import common

BASE_LR = {'imagenet2012': 0.03, 'cifar10': 0.03, 'cifar100': 0.03, 'oxford_iiit_pet': 0.01,
           'oxford_flowers102': 0.01}
WARMUP_STEPS = {'oxford_iiit_pet': 50, 'oxford_flowers102': 50}


def get_config(arg: str = 'ViT-B_16,cifar10') -> ml_collections.ConfigDict:
    model, dataset = (arg.split(',') + ['cifar10'])[:2]
    config = common.with_dataset(common.get_config(), dataset)
    config.model = models.get_config(model)
    config.pp.partial_patches = True   # the original's 384 px for every model: H/14 sees the top-left 378x378
    config.pretrained_path = model
    config.base_lr = BASE_LR.get(dataset, 0.03)
    config.warmup_steps = WARMUP_STEPS.get(dataset, config.warmup_steps)
    return config
