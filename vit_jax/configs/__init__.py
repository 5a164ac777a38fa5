"""The original vit_jax configuration modules (`from vit_jax.configs import common, models`).

Configuration data only (ml_collections): experiment files in the repository's `configs/`
build on them; `vit_jax.models` builds modules from `models.MODEL_CONFIGS`.
"""
