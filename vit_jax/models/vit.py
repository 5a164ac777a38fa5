"""The Vision Transformer (Dosovitskiy et al., 2020) as Flax linen modules.

The parameter tree, initialisers and numerics are those of the original vit_jax
`models_vit.py`, so the published checkpoints load unchanged and give the same logits.
Fields beyond the original (compute dtype, fused attention, remat, scan over blocks,
stochastic depth, timm/Hugging Face LayerNorm epsilon and GELU form) default to the
original behaviour.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.resnet import ResNetStem

Array = jnp.ndarray


def _field(sub_config: Any, key: str, default: Any = None) -> Any:
    """A field of a sub-config field (`patches`, `transformer`, `resnet`: a dict, ConfigDict or None)."""
    return default if sub_config is None else sub_config.get(key, default)

# 'map': big_vision's multihead attention pooling (pool_type='map', SigLIP image towers). 'token_gap': the
# class token concatenated with the mean of the patch tokens (2 x hidden_size features: DINOv2's linear
# probe, HF Dinov2ForImageClassification).
CLASSIFIERS = ('token', 'gap', 'map', 'unpooled', 'token_unpooled', 'token_gap')
# 'einsum' is the original Flax formula, always. 'auto' (the default) is, on CPU, vit_jax's head-major
# attention (`head_major_attention`: the formula with each (batch, head) a row-major matrix, its
# backward written so that XLA's fast dot path takes every product) and elsewhere
# jax.nn.dot_product_attention, letting JAX choose (XLA on TPUs, cuDNN flash attention on GPUs where
# it applies); 'xla' / 'cudnn' call jax.nn.dot_product_attention with that implementation. They
# agree with the formula to float tolerance (tests/test_models.py); where the attention weights are
# returned or attention dropout is active, every setting computes the formula, since the fused
# kernels have neither.
ATTENTION_IMPLS = ('auto', 'einsum', 'xla', 'cudnn')
POSEMBS = ('learn', 'sincos2d')


def dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                      preferred_element_type=None) -> Array:
    """`lax.dot_general` for dense layers (the inputs' trailing axes against the kernel's leading
    axes, no batch axes) whose weight gradient reaches XLA CPU's fast dot path (YNNPACK).

    jax.grad's weight gradient X^T @ dY contracts the batch and token axes; in a network (an MLP's
    backward) XLA's CPU backend hands that dot to Eigen after copying the wider operand transposed,
    a copy that recomputes its fused producer (bench/xla_dot_layout.py reproduces it). Here the
    backward transposes the smaller of X and dY itself, behind an optimization barrier (else the
    simplifier folds the transpose back into the dot), so that every dot is a row-major
    [m, k] @ [k, n] that YNNPACK takes: the same products, summed in another order (equal to
    jax.grad's to f32 rounding; tests/test_models.py). Any other contraction is plain
    `lax.dot_general`.
    """
    (lhs_contract, rhs_contract), batch = dimension_numbers
    n = len(lhs_contract)
    if (any(batch) or tuple(lhs_contract) != tuple(range(lhs.ndim - n, lhs.ndim))
            or tuple(rhs_contract) != tuple(range(n))):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    return _dense_dot(lhs, rhs, n, precision, preferred_element_type)


def _heads_matmul(a: Array, b: Array, contract_a: int, contract_b: int) -> Array:
    """Per (batch, head) matrix product of [batch, heads, ., .] arrays, contracting the given axes."""
    return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((0, 1), (0, 1))))


def _attention_probs(q: Array, k: Array) -> Array:
    logits = _heads_matmul(q, k, 3, 3) * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)


def head_major_attention(q: Array, k: Array, v: Array) -> Array:
    """softmax(q k^T / sqrt(head_dim)) v of [batch, tokens, heads, head_dim] queries, keys and values
    (the softmax in float32, as the original formula), computed head-major: each (batch, head) is a
    row-major [tokens, head_dim] matrix, so on CPU every product, forward and backward, is a
    [m, k] @ [k, n] (or @ [n, k]) dot that XLA hands to YNNPACK; the backward's key and value
    gradients are formed transposed (head_dim x tokens, from copies of the small q^T and dY^T), not
    by a dot contracting the probabilities' rows, which XLA would give to Eigen."""
    heads_first = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731
    return heads_first(_head_major_attention(heads_first(q), heads_first(k), heads_first(v)))


@jax.custom_vjp
def _head_major_attention(q: Array, k: Array, v: Array) -> Array:
    return _heads_matmul(_attention_probs(q, k), v, 3, 2)


def _head_major_attention_fwd(q, k, v):
    probs = _attention_probs(q, k)
    return _heads_matmul(probs, v, 3, 2), (q, k, v, probs)


def _head_major_attention_bwd(residuals, dy):
    q, k, v, probs = residuals
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    dprobs = _heads_matmul(dy, v, 3, 3).astype(jnp.float32)
    p = probs.astype(jnp.float32)
    dlogits = (p * (dprobs - jnp.sum(dprobs * p, axis=-1, keepdims=True))).astype(q.dtype)
    transposed = lambda a: jax.lax.optimization_barrier(jnp.swapaxes(a, 2, 3))  # noqa: E731
    dq = _heads_matmul(dlogits, k, 3, 2) * scale
    dk = jnp.swapaxes(jax.lax.optimization_barrier(_heads_matmul(transposed(q), dlogits, 3, 2)), 2, 3) * scale
    dv = jnp.swapaxes(jax.lax.optimization_barrier(_heads_matmul(transposed(dy), probs, 3, 2)), 2, 3)
    return dq, dk, dv


_head_major_attention.defvjp(_head_major_attention_fwd, _head_major_attention_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dense_dot(x: Array, w: Array, n: int, precision, preferred_element_type) -> Array:
    return jax.lax.dot_general(x, w, ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ())),
                               precision=precision, preferred_element_type=preferred_element_type)


def _dense_dot_fwd(x, w, n, precision, preferred_element_type):
    return _dense_dot(x, w, n, precision, preferred_element_type), (x, w)


def _dense_dot_bwd(n, precision, preferred_element_type, residuals, g):
    x, w = residuals
    k, f = math.prod(w.shape[:n]), math.prod(w.shape[n:])
    x2, g2, w2 = x.reshape(-1, k), g.reshape(-1, f), w.reshape(k, f)
    matmul = lambda a, b: jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=precision)  # noqa: E731
    dx = jax.lax.dot_general(g2, w2, (((1,), (1,)), ((), ())), precision=precision)
    barrier = jax.lax.optimization_barrier
    if k <= f:   # dW = X^T dY, X^T copied row-major
        dw = matmul(barrier(x2.T), g2)
    else:        # dW = (dY^T X)^T: the copy is of dY, the final transpose only of a kernel-sized array
        dw = barrier(matmul(barrier(g2.T), x2)).T
    return dx.reshape(x.shape).astype(x.dtype), dw.reshape(w.shape).astype(w.dtype)


_dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


_PLATFORM = contextvars.ContextVar('vit_jax_traced_platform', default=None)


@contextlib.contextmanager
def traced_for(platform: str):
    """Models traced inside are formulated for `platform` ('cpu', 'tpu', 'gpu'), not for JAX's default
    backend: vit-plan compiles on a CPU the step vit-train runs on TPUs and GPUs. (Chosen at trace
    time: `lax.platform_dependent` would keep both formulations under jax.grad, whose residuals of the
    branch not taken still cost memory on the other platforms: +2.2 GiB per GPU for H/14 at 384 px.)"""
    token = _PLATFORM.set(platform)
    try:
        yield
    finally:
        _PLATFORM.reset(token)


def _cpu_formulation() -> bool:
    """Whether models are being traced for a CPU (`traced_for`, else JAX's default backend)."""
    return (_PLATFORM.get() or jax.default_backend()) == 'cpu'


def _dot_general(fast_weight_grad: bool) -> Callable | None:
    """The dense layers' `dot_general`: `dense_dot_general` on CPU with `fast_weight_grad`, else
    Flax's default (other backends' compilers lay the weight gradient out themselves)."""
    return dense_dot_general if fast_weight_grad and _cpu_formulation() else None


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per example with prob `rate`."""

    @nn.compact
    def __call__(self, x: Array, rate: Array | float, deterministic: bool) -> Array:
        if deterministic or (isinstance(rate, float) and rate == 0.0):
            return x
        keep = 1.0 - jnp.asarray(rate, jnp.float32)
        mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention with the parameter layout of `flax.linen.MultiHeadDotProductAttention`.

    `query`/`key`/`value` kernels are [D, heads, head_dim], `out` is [heads, head_dim, D].
    """

    num_heads: int
    dropout_rate: float = 0.0
    attention_impl: str = 'auto'
    fast_weight_grad: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: Array, deterministic: bool, return_attention: bool = False,
                 kv: Array | None = None) -> tuple[Array, Array | None]:
        """Self-attention over `x`, or `x` (queries) attending to `kv` (keys and values)."""
        features = x.shape[-1]
        head_dim = features // self.num_heads
        dense = lambda name: nn.DenseGeneral(  # noqa: E731
            features=(self.num_heads, head_dim), axis=-1, kernel_init=self.kernel_init,
            dtype=self.dtype, param_dtype=self.param_dtype, dot_general=_dot_general(self.fast_weight_grad),
            name=name)
        kv = x if kv is None else kv
        q, k, v = dense('query')(x), dense('key')(kv), dense('value')(kv)

        weights = None
        use_einsum = (self.attention_impl == 'einsum' or return_attention
                      or (self.dropout_rate > 0 and not deterministic))
        if use_einsum:
            q = q / jnp.sqrt(head_dim).astype(q.dtype)
            logits = jnp.einsum('...qhd,...khd->...hqk', q, k)
            weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
            if self.dropout_rate > 0 and not deterministic:
                keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.dropout_rate,
                                            weights.shape)
                weights = jnp.where(keep, weights / (1.0 - self.dropout_rate), 0.0).astype(q.dtype)
            y = jnp.einsum('...hqk,...khd->...qhd', weights, v)
        elif self.attention_impl == 'auto' and _cpu_formulation():
            y = head_major_attention(q, k, v)
        else:
            impl = None if self.attention_impl == 'auto' else self.attention_impl
            y = jax.nn.dot_product_attention(q, k, v, implementation=impl)

        out = nn.DenseGeneral(features=features, axis=(-2, -1), kernel_init=self.kernel_init,
                              dtype=self.dtype, param_dtype=self.param_dtype,
                              dot_general=_dot_general(self.fast_weight_grad), name='out')(y)
        return out, (weights if return_attention else None)


class MlpBlock(nn.Module):
    """Transformer MLP: Dense -> GELU -> Dropout -> Dense -> Dropout."""

    mlp_dim: int
    dropout_rate: float = 0.1
    gelu_approximate: bool = True
    fast_weight_grad: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    out_dim: int | None = None
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.normal(stddev=1e-6)

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        out_dim = x.shape[-1] if self.out_dim is None else self.out_dim
        dense = lambda f, name: nn.Dense(  # noqa: E731
            features=f, kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype,
            param_dtype=self.param_dtype, dot_general=_dot_general(self.fast_weight_grad), name=name)
        x = nn.gelu(dense(self.mlp_dim, 'Dense_0')(x), approximate=self.gelu_approximate)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        x = dense(out_dim, 'Dense_1')(x)
        return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class MAPHead(nn.Module):
    """big_vision's multihead attention pooling: a learned `probe` attends over the tokens, then
    x + MLP(LayerNorm(x)); its parameter tree (`probe`, `MultiHeadDotProductAttention_0`,
    `LayerNorm_0`, `MlpBlock_0`) is big_vision's `MAPHead`."""

    num_heads: int
    mlp_dim: int
    layer_norm_eps: float = 1e-6
    gelu_approximate: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n, _, d = x.shape
        probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, d), self.param_dtype)
        probe = jnp.tile(probe, [n, 1, 1]).astype(x.dtype)
        x, _ = MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                            param_dtype=self.param_dtype,
                                            name='MultiHeadDotProductAttention_0')(probe, True, kv=x)
        y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                         name='LayerNorm_0')(x)
        x = x + MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=0.0, gelu_approximate=self.gelu_approximate,
                         dtype=self.dtype, param_dtype=self.param_dtype, name='MlpBlock_0')(y, True)
        return x[:, 0]


class LayerScale(nn.Module):
    """Per-channel scales of a residual branch (CaiT / DeiT-3 / DINOv2 "layer scale", timm `init_values`)."""

    init_value: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param('scale', nn.initializers.constant(self.init_value), (x.shape[-1],),
                           self.param_dtype)
        return x * scale.astype(x.dtype)


class Encoder1DBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

    Called as `block(x, drop_path_rate, deterministic, return_attention)` and returns
    `(x, attention_weights_or_None)` so that it can run under `nn.scan` and `nn.remat`.
    """

    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-6
    gelu_approximate: bool = True
    attention_impl: str = 'auto'
    fast_weight_grad: bool = True
    drop_path: bool = False
    layer_scale: float | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, drop_path_rate: Array | float, deterministic: bool,
                 return_attention: bool) -> tuple[Array, Array | None]:
        norm = lambda name: nn.LayerNorm(  # noqa: E731
            epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        y = norm('LayerNorm_0')(x)
        y, weights = MultiHeadDotProductAttention(
            num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate,
            attention_impl=self.attention_impl, fast_weight_grad=self.fast_weight_grad,
            dtype=self.dtype, param_dtype=self.param_dtype,
            name='MultiHeadDotProductAttention_0')(y, deterministic, return_attention)
        y = nn.Dropout(rate=self.dropout_rate)(y, deterministic=deterministic)
        scale = lambda y, name: (  # noqa: E731
            y if self.layer_scale is None else LayerScale(self.layer_scale, self.param_dtype, name=name)(y))
        drop_path = lambda y, name: (  # noqa: E731
            DropPath(name=name)(y, drop_path_rate, deterministic) if self.drop_path else y)
        x = x + drop_path(scale(y, 'LayerScale_0'), 'DropPath_0')

        y = norm('LayerNorm_1')(x)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
                     gelu_approximate=self.gelu_approximate, fast_weight_grad=self.fast_weight_grad,
                     dtype=self.dtype, param_dtype=self.param_dtype, name='MlpBlock_0')(y, deterministic)
        x = x + drop_path(scale(y, 'LayerScale_1'), 'DropPath_1')
        return x, weights


class Encoder(nn.Module):
    """Position embedding + `num_layers` blocks + final LayerNorm (the `Transformer` scope).

    With `scan_layers` the blocks run under `nn.scan` and their parameters are stacked on a
    leading axis under `encoderblock` (see `scan_to_blocks` / `blocks_to_scan`).
    """

    num_layers: int
    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    stochastic_depth: float = 0.0
    # Initial value of per-channel residual scales (`LayerScale_{0,1}/scale` in each block; timm's
    # `init_values`: DeiT-3 1e-6, DINOv2 1e-5); None: no layer scale, as the original.
    layer_scale: float | None = None
    add_position_embedding: bool = True
    # False: no `encoder_norm` (VisionTransformer sets it: with `fc_norm` the norm follows the pooling).
    final_norm: bool = True
    layer_norm_eps: float = 1e-6
    gelu_approximate: bool = True
    attention_impl: str = 'auto'
    fast_weight_grad: bool = True
    remat: bool = False
    scan_layers: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, return_attention: bool = False
                 ) -> tuple[Array, Array | None]:
        if self.add_position_embedding:
            x = AddPositionEmbs(param_dtype=self.param_dtype, name='posembed_input')(x)
            x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
        x = x.astype(self.dtype or x.dtype)

        block_kwargs = dict(
            mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            layer_norm_eps=self.layer_norm_eps, gelu_approximate=self.gelu_approximate,
            attention_impl=self.attention_impl, fast_weight_grad=self.fast_weight_grad,
            drop_path=self.stochastic_depth > 0,
            layer_scale=self.layer_scale, dtype=self.dtype, param_dtype=self.param_dtype)
        block = Encoder1DBlock
        if self.remat:
            block = nn.remat(block, static_argnums=(3, 4), prevent_cse=not self.scan_layers)
        # Drop-path rate grows linearly with depth, from 0 to `stochastic_depth` (DeiT/timm).
        rates = np.linspace(0.0, self.stochastic_depth, self.num_layers, dtype=np.float32)

        if self.scan_layers:
            block = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                            in_axes=(0, nn.broadcast, nn.broadcast), length=self.num_layers)
            x, weights = block(**block_kwargs, name='encoderblock')(
                x, jnp.asarray(rates), not train, return_attention)
        else:
            all_weights = []
            for i in range(self.num_layers):
                x, w = block(**block_kwargs, name=f'encoderblock_{i}')(
                    x, float(rates[i]), not train, return_attention)
                all_weights.append(w)
            weights = jnp.stack(all_weights) if return_attention else None

        if self.final_norm:
            x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                             param_dtype=self.param_dtype, name='encoder_norm')(x)
        return x, weights


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> Array:
    """big_vision's fixed 2-D sin-cos position embedding [1, h*w, width] (`posemb_sincos_2d`): a
    quarter of the channels each sin(x), cos(x), sin(y), cos(y) at geometric frequencies."""
    if width % 4:
        raise ValueError(f'the sin-cos position embedding needs a width divisible by 4, got {width}')
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    y = np.einsum('m,d->md', y.flatten(), omega)
    x = np.einsum('m,d->md', x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return jnp.asarray(pe, jnp.float32)[None]


class AddPositionEmbs(nn.Module):
    """Adds learned position embeddings [1, tokens, D], initialised normal(0.02)."""

    posemb_init: Callable = nn.initializers.normal(stddev=0.02)
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pe = self.param('pos_embedding', self.posemb_init, (1,) + x.shape[1:], self.param_dtype)
        return x + pe


class VisionTransformer(nn.Module):
    """ViT / hybrid R+ViT classifier, with the original vit_jax fields.

    Construct as `VisionTransformer(num_classes=1000, **MODEL_CONFIGS['ViT-B_16'])` and call
    `model.apply(variables, images, train=False)` on NHWC images in [-1, 1]; training needs
    `train=True, rngs={'dropout': key}`. `return_attention=True` also returns the attention
    weights of every block, stacked as [layers, batch, heads, tokens, tokens].
    """

    num_classes: int | None
    patches: Any
    hidden_size: int
    transformer: Any = None
    resnet: Any = None
    representation_size: int | None = None
    classifier: str = 'token'
    head_bias_init: float = 0.0
    model_name: str | None = None
    # Register tokens ("Vision Transformers Need Registers"; timm `reg_tokens`, DINOv2-reg): `reg`
    # [1, R, D] after the class token, excluded from pooling. 0: none, as the original.
    num_registers: int = 0
    # A class token with any pooling (timm class_token=True, global_pool='avg': MAE / BEiT-style
    # fine-tunes); None: the original rule, a class token exactly for 'token' / 'token_unpooled'.
    class_token: bool | None = None
    # LayerNorm after the pooling (`fc_norm`) instead of before it (`Transformer/encoder_norm`), as
    # timm's fc_norm (its default for average pooling).
    fc_norm: bool = False
    # DeiT's distillation token (timm `dist_token`, `head_dist`): `dist` [1, 1, D] after the class
    # token, its own head `head_dist`; the logits are the mean of the two heads (timm's inference, and
    # its training unless `distilled_training`; HF DeiTForImageClassificationWithTeacher). Needs
    # classifier='token'.
    distillation_token: bool = False
    # With `distillation_token`: False reads the class token alone (no `head_dist`; features and
    # `pre_logits` of the class token): HF DeiTForImageClassification and DeiTModel's pooler, where the
    # distillation token only takes part in the attention.
    distillation_head: bool = True
    # 'learn': learned position embeddings (`Transformer/posembed_input`), as the original;
    # 'sincos2d': big_vision's fixed 2-D sin-cos embedding of the patch grid (no parameters; the
    # class token gets none), added before the class token is prepended, as big_vision does.
    posemb: str = 'learn'
    # Beyond the original; the defaults keep its numerics.
    dtype: Any = None
    param_dtype: Any = jnp.float32
    layer_norm_eps: float = 1e-6
    gelu_approximate: bool = True
    attention_impl: str = 'auto'
    # On CPU, the dense layers' backward (attention and MLP kernels) computes the weight gradients
    # from explicitly transposed activations so that XLA's fast dot path takes them
    # (`dense_dot_general`; equal to jax.grad's to f32 rounding). False: jax.grad's own backward.
    fast_weight_grad: bool = True
    remat: bool = False
    scan_layers: bool = False

    @property
    def has_class_token(self) -> bool:
        if self.class_token is None:
            return self.classifier in ('token', 'token_unpooled', 'token_gap')
        return self.class_token

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: the class token (if any), the distillation token, the registers."""
        return int(self.has_class_token) + int(self.distillation_token) + self.num_registers

    @property
    def patch_stride(self) -> tuple[int, int]:
        """Input pixels per patch token: the patch size times the ResNet stem's downsampling
        (4 from the root conv + max-pool, then 2 for every stage after the first)."""
        ph, pw = _field(self.patches, 'size')
        if self.resnet is None:
            return ph, pw
        stem = 4 * 2 ** max(len(_field(self.resnet, 'num_layers', ())) - 1, 0)
        return ph * stem, pw * stem

    def check_config(self) -> None:
        """ValueError naming the field if this configuration cannot be built (checked when called)."""
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f'classifier={self.classifier!r} is unknown; expected one of {CLASSIFIERS}')
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f'attention_impl={self.attention_impl!r} is unknown; '
                             f'expected one of {ATTENTION_IMPLS}')
        if _field(self.patches, 'size') is None:
            raise ValueError(f'patches.size is missing (patches={self.patches!r})')
        if self.classifier in ('token', 'token_unpooled', 'token_gap') and not self.has_class_token:
            raise ValueError(f'classifier={self.classifier!r} needs a class token (class_token=False)')
        if self.distillation_token and (self.classifier != 'token' or self.transformer is None):
            raise ValueError("distillation_token needs classifier='token' and a transformer (DeiT)")
        if self.distillation_token and self.distillation_head and self.representation_size is not None:
            raise ValueError('distillation_token with its own head (distillation_head=True) has no '
                             'representation_size (DeiT; HF DeiTModel reads the class token alone)')
        if self.posemb not in POSEMBS:
            raise ValueError(f'posemb={self.posemb!r} is unknown; expected one of {POSEMBS}')
        if self.transformer is not None:
            heads = _field(self.transformer, 'num_heads')
            for key in ('num_heads', 'num_layers', 'mlp_dim'):
                if _field(self.transformer, key) is None:
                    raise ValueError(f'transformer.{key} is missing')
            if self.hidden_size % heads:
                raise ValueError(f'hidden_size={self.hidden_size} is not divisible by '
                                 f'transformer.num_heads={heads}')
            unknown = set(self.transformer) - set(TRANSFORMER_FIELDS)
            if unknown:
                raise ValueError(f'transformer.{sorted(unknown)[0]} is not a transformer field')

    @nn.compact
    def __call__(self, inputs: Array, *, train: bool, return_attention: bool = False):
        self.check_config()
        if inputs.ndim != 4 or inputs.shape[-1] != 3:
            raise ValueError(f'images must be NHWC with 3 channels, got shape {inputs.shape}')
        x = inputs.astype(self.dtype or inputs.dtype)

        if self.resnet is not None:
            stem = ResNetStem(num_layers=tuple(_field(self.resnet, 'num_layers', ())),
                              width_factor=_field(self.resnet, 'width_factor', 1),
                              dtype=self.dtype, param_dtype=self.param_dtype)
            nn.share_scope(self, stem)
            x = stem(x)

        patch = tuple(_field(self.patches, 'size'))
        if x.shape[1] < patch[0] or x.shape[2] < patch[1]:
            raise ValueError(f'image grid {x.shape[1]}x{x.shape[2]} (input {inputs.shape[1]}x'
                             f'{inputs.shape[2]}) is smaller than patches.size={patch}')
        # As the original: a side that is not a multiple of the patch size loses its last pixels
        # (a VALID convolution; e.g. ViT-H/14 at 384 px sees a 27x27 grid of the top-left 378x378).
        x = nn.Conv(features=self.hidden_size, kernel_size=patch, strides=patch, padding='VALID',
                    dtype=self.dtype, param_dtype=self.param_dtype, name='embedding')(x)

        weights = None
        if self.transformer is not None:
            n, h, w, c = x.shape
            x = jnp.reshape(x, [n, h * w, c])
            transformer = dict(self.transformer)
            if self.posemb == 'sincos2d':
                x = x + posemb_sincos_2d(h, w, c).astype(x.dtype)
                transformer['add_position_embedding'] = False
            prefix = []   # class token, distillation token, registers: in this order
            if self.has_class_token:
                prefix.append(self.param('cls', nn.initializers.zeros, (1, 1, c), self.param_dtype))
            if self.distillation_token:
                prefix.append(self.param('dist', nn.initializers.normal(0.02), (1, 1, c), self.param_dtype))
            if self.num_registers:
                prefix.append(self.param('reg', nn.initializers.normal(1e-6), (1, self.num_registers, c),
                                         self.param_dtype))
            if prefix:
                x = jnp.concatenate([jnp.tile(p, [n, 1, 1]).astype(x.dtype) for p in prefix] + [x], axis=1)
            x, weights = Encoder(
                **transformer, layer_norm_eps=self.layer_norm_eps,
                gelu_approximate=self.gelu_approximate, attention_impl=self.attention_impl,
                fast_weight_grad=self.fast_weight_grad, remat=self.remat, scan_layers=self.scan_layers,
                final_norm=not self.fc_norm,
                dtype=self.dtype, param_dtype=self.param_dtype, name='Transformer',
            )(x, train=train, return_attention=return_attention)

        distilled = None
        if self.classifier == 'token':
            x, distilled = x[:, 0], (x[:, 1] if self.distillation_token and self.distillation_head else None)
        elif self.classifier == 'gap':
            tokens = x[:, self.num_prefix_tokens:] if x.ndim == 3 else x   # nor class token nor registers
            x = jnp.mean(tokens, axis=list(range(1, x.ndim - 1)))
        elif self.classifier == 'token_gap':
            if x.ndim != 3:
                raise ValueError("classifier='token_gap' needs a transformer (it pools tokens)")
            x = jnp.concatenate([x[:, 0], jnp.mean(x[:, self.num_prefix_tokens:], axis=1)], axis=-1)
        elif self.classifier == 'map':
            if self.transformer is None:
                raise ValueError("classifier='map' needs a transformer (it pools tokens)")
            t = self.transformer
            x = MAPHead(num_heads=_field(t, 'num_heads'), mlp_dim=_field(t, 'mlp_dim'),
                        layer_norm_eps=self.layer_norm_eps, gelu_approximate=self.gelu_approximate,
                        dtype=self.dtype, param_dtype=self.param_dtype, name='MAPHead_0')(x)
        if self.fc_norm:
            x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                             name='fc_norm')(x)

        if self.representation_size is not None:
            x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name='pre_logits')(x))
        if self.num_classes:
            head = lambda name: nn.Dense(  # noqa: E731
                self.num_classes, kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.constant(self.head_bias_init),
                dtype=self.dtype, param_dtype=self.param_dtype, name=name)
            x = head('head')(x)
            if distilled is not None:
                x = (x + head('head_dist')(distilled)) / 2
        elif distilled is not None:   # features: the mean of the two tokens, as timm's pre_logits
            x = (x + distilled) / 2
        x = x.astype(jnp.float32)
        return (x, weights) if return_attention else x


# The fields of the `transformer` sub-config: the Encoder's, but for those VisionTransformer passes
# itself (numerics, kernels, dtypes, remat / scan, and `final_norm`, which follows its `fc_norm`).
TRANSFORMER_FIELDS = tuple(f for f in Encoder.__dataclass_fields__
                           if f not in ('parent', 'name', 'final_norm')
                           and f not in VisionTransformer.__dataclass_fields__)


# --- Parameter layouts: per-block (`encoderblock_{i}`) <-> scanned (`encoderblock`, stacked).

def blocks_to_scan(params: Mapping[str, Any]) -> dict:
    """Stacks `Transformer/encoderblock_{i}` into one `Transformer/encoderblock` tree."""
    params = dict(params)
    enc = dict(params['Transformer'])
    names = sorted((k for k in enc if k.startswith('encoderblock_')), key=lambda k: int(k.split('_')[1]))
    if not names:
        raise ValueError('no Transformer/encoderblock_{i} in params: already in scan layout?')
    blocks = [enc.pop(k) for k in names]
    enc['encoderblock'] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)
    params['Transformer'] = enc
    return params


def scan_to_blocks(params: Mapping[str, Any]) -> dict:
    """Splits a stacked `Transformer/encoderblock` into `Transformer/encoderblock_{i}`."""
    params = dict(params)
    enc = dict(params['Transformer'])
    if 'encoderblock' not in enc:
        raise ValueError('no Transformer/encoderblock in params: already in per-block layout?')
    stacked = enc.pop('encoderblock')
    depth = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    for i in range(depth):
        enc[f'encoderblock_{i}'] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
    params['Transformer'] = enc
    return params


def num_params(params: Any) -> int:
    """Total number of scalars in a parameter tree (works on ShapeDtypeStructs too)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))

