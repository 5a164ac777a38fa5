"""ResNet stem of the hybrid R+ViT models (BiT-style: weight-standardised convs + GroupNorm).

Parameter names follow the original vit_jax `models_resnet.py` so that the published hybrid
checkpoints (`conv_root`, `gn_root`, `block{i}/unit{j}/{conv,gn}{1,2,3,_proj}`) load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def weight_standardize(w: jnp.ndarray, axis: Sequence[int], eps: float) -> jnp.ndarray:
    """Standardises a conv kernel to zero mean and unit std over `axis` (BiT)."""
    w = w - jnp.mean(w, axis=axis)
    return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
    """Convolution whose kernel is weight-standardised over its (H, W, in) axes."""

    def param(self, name: str, *args, **kwargs):
        param = super().param(name, *args, **kwargs)
        if name == 'kernel':
            param = weight_standardize(param, axis=[0, 1, 2], eps=1e-5)
        return param


class ResidualUnit(nn.Module):
    """Bottleneck residual unit: 1x1 -> 3x3 (strided) -> 1x1 (x4 features)."""

    features: int
    strides: tuple[int, int] = (1, 1)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = lambda f, k, s, name: StdConv(  # noqa: E731
            features=f, kernel_size=k, strides=s, use_bias=False, name=name,
            dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name, **kw: nn.GroupNorm(  # noqa: E731
            name=name, dtype=self.dtype, param_dtype=self.param_dtype, **kw)

        needs_projection = x.shape[-1] != self.features * 4 or self.strides != (1, 1)
        residual = x
        if needs_projection:
            residual = conv(self.features * 4, (1, 1), self.strides, 'conv_proj')(residual)
            residual = norm('gn_proj')(residual)

        y = nn.relu(norm('gn1')(conv(self.features, (1, 1), (1, 1), 'conv1')(x)))
        y = nn.relu(norm('gn2')(conv(self.features, (3, 3), self.strides, 'conv2')(y)))
        y = conv(self.features * 4, (1, 1), (1, 1), 'conv3')(y)
        y = norm('gn3', scale_init=nn.initializers.zeros)(y)
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    """A stage of `block_size` residual units; the first one may be strided."""

    block_size: int
    nout: int
    first_stride: tuple[int, int]
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for i in range(self.block_size):
            x = ResidualUnit(
                self.nout, strides=self.first_stride if i == 0 else (1, 1),
                dtype=self.dtype, param_dtype=self.param_dtype, name=f'unit{i + 1}')(x)
        return x


class ResNetStem(nn.Module):
    """Root conv + max-pool + stages: the CNN in front of the hybrid ViTs.

    Its submodules are named as in the original (they live at the top level of the ViT's
    parameter tree, not under a module of their own): the ViT calls this with
    `parent`-sharing via `nn.share_scope`.
    """

    num_layers: Sequence[int]
    width_factor: float
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        width = int(64 * self.width_factor)
        x = StdConv(features=width, kernel_size=(7, 7), strides=(2, 2), use_bias=False,
                    dtype=self.dtype, param_dtype=self.param_dtype, name='conv_root')(x)
        x = nn.GroupNorm(dtype=self.dtype, param_dtype=self.param_dtype, name='gn_root')(x)
        x = nn.relu(x)
        x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
        for i, block_size in enumerate(self.num_layers):
            x = ResNetStage(block_size=block_size, nout=width * 2**i,
                            first_stride=(1, 1) if i == 0 else (2, 2),
                            dtype=self.dtype, param_dtype=self.param_dtype,
                            name=f'block{i + 1}')(x)
        return x
