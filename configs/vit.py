"""The original's vit_jax/configs/vit.py (`vit_jax.configs.vit`), as a config file
for --config=configs/vit.py."""

from vit_jax.configs.vit import get_config

__all__ = ['get_config']
