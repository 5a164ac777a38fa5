"""Utility code to create fake pre-trained checkpoints (the original's vit_jax/test_utils.py API)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vit_jax import checkpoint, models


def create_checkpoint(model_config: Any, path: str) -> None:
    """Initializes a VisionTransformer of `model_config` (one class, 16x16 images) and saves its
    parameters as a public `.npz` at `path` (local or gs://)."""
    model = models.VisionTransformer(num_classes=1, **model_config)
    variables = model.init(jax.random.PRNGKey(0), jnp.ones([1, 16, 16, 3], jnp.float32), train=False)
    checkpoint.save(variables['params'], path)
