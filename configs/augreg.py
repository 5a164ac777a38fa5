"""The original's vit_jax/configs/augreg.py (`vit_jax.configs.augreg`), as a config file
for --config=configs/augreg.py."""

from vit_jax.configs.augreg import get_config

__all__ = ['get_config']
