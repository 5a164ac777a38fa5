"""vit_jax: the Vision Transformer in JAX/Flax, faithful to the original code and checkpoints."""

__version__ = '0.1.0'
