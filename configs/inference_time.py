"""The original's vit_jax/configs/inference_time.py (`vit_jax.configs.inference_time`), as a config file
for --config=configs/inference_time.py."""

from vit_jax.configs.inference_time import get_config

__all__ = ['get_config']
