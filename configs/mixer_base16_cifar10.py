"""The original's vit_jax/configs/mixer_base16_cifar10.py (`vit_jax.configs.mixer_base16_cifar10`),
as a config file for --config=configs/mixer_base16_cifar10.py."""

from vit_jax.configs.mixer_base16_cifar10 import get_config

__all__ = ['get_config']
