"""Optax recipes of the paper: schedules, SGD-momentum / Adam(W), decay masks, LLRD, accumulation.

Config fields read (vit_jax/configs/common.py has each one's default and meaning): optimizer,
base_lr, total_steps, warmup_steps, decay_type, linear_end, momentum (sgd), b1, b2, eps (adam),
optim_dtype, weight_decay, weight_decay_type, grad_norm_clip, layer_decay.

Weight decay is one setting for both optimizers: `weight_decay` (0 = none) applied to weight
matrices only, 'decoupled' (p -= lr(step) * wd * p after the moments: AdamW, and the paper's
Table 3 Adam, which used Flax's decoupled Adam weight decay) or 'l2' (wd * p added to the gradient
before the moments). So AdamW is optimizer='adam' with weight_decay > 0 (decoupled is the default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax.config_util import get
from vit_jax.errors import ConfigError

logger = logging.getLogger(__name__)

Schedule = Callable[[Any], jnp.ndarray]
OPTIMIZERS = ('sgd', 'adam')
DECAY_TYPES = ('cosine', 'linear', 'constant')


def create_learning_rate_schedule(total_steps: int, base: float, decay_type: str = 'cosine',
                                  warmup_steps: int = 0, linear_end: float = 1e-5) -> Schedule:
    """The original vit_jax schedule (utils.create_learning_rate_schedule), exactly.

    progress = clip((step - warmup) / (total - warmup), 0, 1); cosine: base * (1 + cos(pi *
    progress)) / 2; linear: end + (base - end) * (1 - progress); then during warm-up the rate
    is multiplied by min(1, step / warmup). `step` is the optimizer's update count (0-based).
    """
    if decay_type not in DECAY_TYPES:
        raise ConfigError(f'decay_type={decay_type!r} is unknown; expected one of {DECAY_TYPES}')

    def step_fn(step):
        step = jnp.asarray(step, jnp.float32)
        lr = jnp.float32(base)
        progress = jnp.clip((step - warmup_steps) / float(max(total_steps - warmup_steps, 1)), 0.0, 1.0)
        if decay_type == 'linear':
            lr = linear_end + (lr - linear_end) * (1.0 - progress)
        elif decay_type == 'cosine':
            lr = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        if warmup_steps:
            lr = lr * jnp.minimum(1.0, step / warmup_steps)
        return jnp.asarray(lr, jnp.float32)

    return step_fn


def schedule_from_config(config: Any) -> Schedule:
    warmup, total = int(get(config, 'warmup_steps')), int(get(config, 'total_steps'))
    if warmup >= total and get(config, 'decay_type') != 'constant':   # once per optimizer built
        logger.warning('warmup_steps=%d >= total_steps=%d: the learning rate only warms up and never decays',
                       warmup, total)
    return create_learning_rate_schedule(
        total_steps=int(get(config, 'total_steps')), base=float(get(config, 'base_lr')),
        decay_type=get(config, 'decay_type'), warmup_steps=int(get(config, 'warmup_steps')),
        linear_end=float(get(config, 'linear_end')))


def _names(path: tuple) -> list[str]:
    return [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]


def weight_decay_mask(params: Any) -> Any:
    """True for weight matrices / conv kernels (leaves named `kernel`); False for biases,
    LayerNorm/GroupNorm scales, the class token and position embeddings (as in big_vision and
    timm; the patch-embedding projection is a kernel and is decayed like every other)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _names(path)[-1] == 'kernel', params)


def _depth(params: Any) -> int:
    enc = params.get('Transformer', {}) if hasattr(params, 'get') else {}
    if 'encoderblock' in enc:
        return int(jax.tree_util.tree_leaves(enc['encoderblock'])[0].shape[0])
    return sum(1 for k in enc if str(k).startswith('encoderblock_'))


def layer_lr_multipliers(params: Any, decay: float) -> Any:
    """Layer-wise learning-rate decay factors (BEiT / big_vision convention), one per leaf.

    With `depth` blocks numbered i = 0..depth-1: block i gets decay**(depth - i) (the last block
    decay**1); the embeddings (patch projection, class token, position embeddings, ResNet
    stem) decay**(depth + 1); the final encoder norm, pre_logits and head 1. In the scan layout
    (`Transformer/encoderblock` stacked on axis 0) the factor is an array broadcast over that axis.
    """
    depth = _depth(params)

    def mult(path, leaf):
        names = _names(path)
        if names[0] in ('head', 'pre_logits'):
            return np.float32(1.0)
        if names[0] != 'Transformer':
            return np.float32(decay ** (depth + 1))
        scope = names[1]
        if scope == 'encoderblock':
            factors = decay ** (depth - np.arange(depth, dtype=np.float64))
            return factors.astype(np.float32).reshape((depth,) + (1,) * (np.ndim(leaf) - 1))
        if scope.startswith('encoderblock_'):
            return np.float32(decay ** (depth - int(scope.split('_')[1])))
        if scope == 'posembed_input':
            return np.float32(decay ** (depth + 1))
        return np.float32(1.0)  # encoder_norm

    return jax.tree_util.tree_map_with_path(mult, params)


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    """Multiplies each update leaf by a fixed factor (scalar or broadcastable array)."""
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        updates = jax.tree_util.tree_map(lambda g, m: g * jnp.asarray(m, g.dtype), updates, multipliers)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config: Any, params: Any) -> tuple[optax.GradientTransformation, Schedule]:
    """The optax chain for `config` (params may be abstract; only their tree and shapes are used).

    Order: clip global norm -> (L2 decay) -> momentum / Adam moments -> (decoupled decay) ->
    layer-wise factors -> -lr(step). Decoupled decay is multiplied by lr(step), as in AdamW.
    """
    name = get(config, 'optimizer')
    if name == 'adamw':
        raise ConfigError("optimizer='adamw' is optimizer='adam' with weight_decay > 0 (decoupled by "
                          'default)')
    if name not in OPTIMIZERS:
        raise ConfigError(f'optimizer={name!r} is unknown; expected one of {OPTIMIZERS}')
    lr_fn = schedule_from_config(config)
    dtype = get(config, 'optim_dtype')
    dtype = jnp.dtype(dtype) if dtype else None
    wd = float(get(config, 'weight_decay'))
    wd_type = get(config, 'weight_decay_type')
    if wd_type not in ('decoupled', 'l2'):
        raise ConfigError(f"weight_decay_type={wd_type!r} is unknown; expected 'decoupled' or 'l2'")
    mask = weight_decay_mask(params)

    chain = []
    clip = get(config, 'grad_norm_clip')
    if clip:
        chain.append(optax.clip_by_global_norm(float(clip)))
    if wd and wd_type == 'l2':
        chain.append(optax.add_decayed_weights(wd, mask))
    if name == 'sgd':
        momentum = get(config, 'momentum')
        if momentum:
            chain.append(optax.trace(decay=float(momentum), accumulator_dtype=dtype))
    else:
        chain.append(optax.scale_by_adam(
            b1=float(get(config, 'b1')), b2=float(get(config, 'b2')),
            eps=float(get(config, 'eps')), mu_dtype=dtype))
    if wd and wd_type == 'decoupled':
        chain.append(optax.add_decayed_weights(wd, mask))
    layer_decay = get(config, 'layer_decay')
    if layer_decay:
        chain.append(scale_by_tree(layer_lr_multipliers(params, float(layer_decay))))
    chain.append(optax.scale_by_learning_rate(lr_fn))
    return optax.chain(*chain), lr_fn


class Accumulated(NamedTuple):
    loss: jnp.ndarray
    aux: Any
    grads: Any


def accumulate_gradient(loss_and_grad_fn: Callable, params: Any, batch: Any, rng: jax.Array,
                        accum_steps: int) -> Accumulated:
    """Mean loss/aux/gradients over `accum_steps` equal micro-batches, via `lax.scan`.

    `loss_and_grad_fn(params, micro_batch, rng) -> ((loss, aux), grads)` with mean losses. As
    the micro-batches have equal size, the result is the full batch's mean gradient (the same
    update as the large batch, up to float summation order). Example k goes to micro-batch
    k % accum_steps, so that every device contributes to every micro-batch and the
    batch sharding is kept (the original split contiguous slices per device, which is the same
    set of examples per device under `pmap`). Dropout keys are folded with the micro-batch index.
    """
    if accum_steps <= 1:
        (loss, aux), grads = loss_and_grad_fn(params, batch, rng)
        return Accumulated(loss, aux, grads)

    def split(x):
        if x.shape[0] % accum_steps:
            raise ConfigError(f'batch of {x.shape[0]} is not divisible by accum_steps={accum_steps}')
        x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    micro = jax.tree_util.tree_map(split, batch)

    def body(carry, xs):
        i, mb = xs
        (loss, aux), grads = loss_and_grad_fn(params, mb, jax.random.fold_in(rng, i))
        carry = jax.tree_util.tree_map(jnp.add, carry, Accumulated(loss, aux, grads))
        return carry, None

    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    shapes = jax.eval_shape(loss_and_grad_fn, params, first, rng)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), Accumulated(
        shapes[0][0], shapes[0][1], shapes[1]))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
    return jax.tree_util.tree_map(lambda x: x / accum_steps, total)
