"""MLP-Mixer (Tolstikhin et al., 2021) as Flax linen modules, as the original vit_jax `models_mixer.py`.

The parameter tree (`stem`, `MixerBlock_{i}/{LayerNorm_0, token_mixing/Dense_{0,1}, LayerNorm_1,
channel_mixing/Dense_{0,1}}`, `pre_head_layer_norm`, `head`), initialisers and numerics are the
original's, so the public `gs://mixer_models` checkpoints load unchanged. Fields beyond the
original (LayerNorm epsilon, GELU form, compute / parameter dtypes) default to its numerics; timm's
Mixer uses exact GELU.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class MlpBlock(nn.Module):
    """Dense -> GELU -> Dense back to the input width."""

    mlp_dim: int
    gelu_approximate: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        y = nn.gelu(y, approximate=self.gelu_approximate)
        return nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype)(y)


class MixerBlock(nn.Module):
    """Token mixing (an MLP across patches) then channel mixing, each pre-LayerNorm and residual."""

    tokens_mlp_dim: int
    channels_mlp_dim: int
    layer_norm_eps: float = 1e-6
    gelu_approximate: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        norm = lambda: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,  # noqa: E731
                                    param_dtype=self.param_dtype)
        mlp = lambda dim, name: MlpBlock(  # noqa: E731
            dim, self.gelu_approximate, self.dtype, self.param_dtype, name=name)
        y = jnp.swapaxes(norm()(x), 1, 2)
        y = jnp.swapaxes(mlp(self.tokens_mlp_dim, 'token_mixing')(y), 1, 2)
        x = x + y
        return x + mlp(self.channels_mlp_dim, 'channel_mixing')(norm()(x))


class MlpMixer(nn.Module):
    """Mixer classifier with the original's fields (`MlpMixer(num_classes=1000, **config)`).

    Applied as `model.apply(variables, images, train=False)` on NHWC images in [-1, 1];
    `num_classes=None` returns the pooled features (the representation).
    """

    patches: Any
    num_classes: int | None
    num_blocks: int
    hidden_dim: int
    tokens_mlp_dim: int
    channels_mlp_dim: int
    model_name: str | None = None
    # Beyond the original; the defaults keep its numerics.
    layer_norm_eps: float = 1e-6
    gelu_approximate: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    @property
    def patch_stride(self) -> tuple[int, int]:
        ph, pw = self.patches['size']
        return int(ph), int(pw)

    @nn.compact
    def __call__(self, inputs: jnp.ndarray, *, train: bool, return_attention: bool = False):
        del train
        if return_attention:
            raise ValueError('MLP-Mixer has no attention to return (it mixes tokens with an MLP)')
        if inputs.ndim != 4 or inputs.shape[-1] != 3:
            raise ValueError(f'images must be NHWC with 3 channels, got shape {inputs.shape}')
        patch = self.patch_stride
        # padding 'SAME' as the original (the same as 'VALID' when the image divides into patches).
        x = nn.Conv(self.hidden_dim, patch, strides=patch, padding='SAME', dtype=self.dtype,
                    param_dtype=self.param_dtype, name='stem')(inputs.astype(self.dtype or inputs.dtype))
        n, h, w, c = x.shape
        x = jnp.reshape(x, (n, h * w, c))
        for _ in range(self.num_blocks):
            x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim, self.layer_norm_eps,
                           self.gelu_approximate, self.dtype, self.param_dtype)(x)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                         name='pre_head_layer_norm')(x)
        x = jnp.mean(x, axis=1)
        if self.num_classes:
            x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                         param_dtype=self.param_dtype, name='head')(x)
        return x.astype(jnp.float32)
