"""ViT-B/16 (ImageNet-21k pre-trained) fine-tuned on CIFAR-10 at 384 px: the paper's recipe.

Shorthand for configs/finetune.py:ViT-B_16,cifar10 (10k steps, batch 512, SGD 0.9, lr 0.03,
cosine, 500 warm-up, clip 1; paper App. B.1.1 / original vit_jax). Pass another model as the
argument: --config=configs/cifar10.py:ViT-L_16.
"""

import os

import ml_collections

from vit_jax import config_util


def get_config(model: str = 'ViT-B_16') -> ml_collections.ConfigDict:
    finetune = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'finetune.py')
    return config_util.load_file(f'{finetune}:{model},cifar10')
