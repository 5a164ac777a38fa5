"""trainer='inference_time': how fast a model classifies (the original's vit_jax/inference_time.py).

    vit-train --workdir=/tmp/timing --config=configs/inference_time.py \
        --config.model_name=ViT-B_16 --config.batch=64 --config.image_size=224 --config.num_classes=1000

`inference_time(config, workdir)` builds `config.model_name` (a ViT or a Mixer of MODEL_CONFIGS),
with random weights or those of `{pretrained_dir}/{model_name}.npz`, compiles its forward pass
over a constant batch split across every device, runs `initial_steps` unmeasured and then times
`steps` calls. It prints and writes (metrics.jsonl, TensorBoard, step 0) the images per second per
device: min / max / mean / std over the timed steps, plus the compile time. (The original timed
`initial_steps` calls where it meant `steps`; here `steps` are timed.)
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import metrics, paths, resolve, sharding
from vit_jax.checkpoint import adapt
from vit_jax.errors import ConfigError
from vit_jax.models import build_model, get_config


def inference_time(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Times the forward pass of `config.model_name` (see the module doc); returns the statistics."""
    config = resolve.resolve(config)
    devices = jax.device_count()
    if config.batch % devices:
        raise ConfigError(f'config.batch={config.batch} must be divisible by the {devices} devices')
    model_config = get_config(config.model_name)
    model = build_model(model_config, int(config.num_classes), inference=True)
    size = int(config.image_size)
    mesh = sharding.create_mesh()
    replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)

    def init(key):
        return model.init(key, jnp.zeros((1, size, size, 3), jnp.float32), train=False)['params']

    if config.pretrained_dir:
        path = paths.join(str(config.pretrained_dir), f'{config.model_name}.npz')
        abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
        params = jax.device_put(adapt.load_pretrained(pretrained_path=path, init_params=abstract,
                                                      model_config=model_config), replicated)
    else:
        params = jax.jit(init, out_shardings=replicated)(jax.random.PRNGKey(0))
    apply = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False),
                    in_shardings=(replicated, batch_sharding))
    images = jax.device_put(jnp.ones((int(config.batch), size, size, 3), jnp.float32), batch_sharding)

    t0 = time.perf_counter()
    apply(params, images).block_until_ready()
    compile_s = time.perf_counter() - t0
    for _ in range(int(config.initial_steps)):
        apply(params, images).block_until_ready()
    times = []
    for _ in range(int(config.steps)):
        t0 = time.perf_counter()
        apply(params, images).block_until_ready()
        times.append(time.perf_counter() - t0)
    per_core = int(config.batch) / devices / np.asarray(times)
    stats: dict[str, Any] = dict(
        imgs_sec_core_min=float(per_core.min()), imgs_sec_core_max=float(per_core.max()),
        imgs_sec_core_mean=float(per_core.mean()), imgs_sec_core_std=float(per_core.std()),
        compile_s=compile_s)
    writer = metrics.MetricWriter(workdir, total_steps=0, progress=False)
    try:
        writer.write_scalars(0, stats)
    finally:
        writer.close()
    if jax.process_index() == 0:
        print(f'{config.model_name} at {size} px, batch {config.batch} on {devices} device(s): '
              f'{stats["imgs_sec_core_mean"]:.1f} img/s/device (min {stats["imgs_sec_core_min"]:.1f}, '
              f'max {stats["imgs_sec_core_max"]:.1f}, {config.steps} timed steps); '
              f'compile {compile_s:.1f} s', flush=True)
    return stats
