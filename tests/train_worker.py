"""Runs a few training steps of a tiny ViT on synthetic data; used by tests/test_sharding.py.

The data is injected into `vit_jax.train.train` (the loop takes its iterator as an argument).

  python tests/train_worker.py WORKDIR FSDP [PROCESS_ID NUM_PROCESSES PORT]

Every process feeds its slice of the same global batches, so any device / process layout must
give the same loss curve. Process 0 prints the per-step training losses as one JSON line.
$VIT_JAX_TEST_PRETRAINED, when set, is the npz to fine-tune from (config.pretrained_path).
"""

import collections
import json
import os
import sys

import jax
import numpy as np

GLOBAL_BATCH, STEPS, CLASSES, SIZE = 8, 4, 3, 8
Info = collections.namedtuple('DatasetInfo', 'num_classes num_train num_eval class_names image_size')


def _batch(seed, n):
    rng = np.random.default_rng(seed)
    return {'image': rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32),
            'label': np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, n)]}


def _global(batch, sharding):
    """This process's rows -> global arrays, as input_pipeline does with a batch_sharding."""
    from vit_jax import sharding as sharding_lib
    return sharding_lib.to_global(batch, sharding)


class Synthetic:
    def __init__(self, sharding):
        self.step = 0
        self.sharding = sharding

    def __next__(self):
        batch = _batch(self.step, GLOBAL_BATCH)
        self.step += 1
        per = GLOBAL_BATCH // jax.process_count()
        lo = jax.process_index() * per
        return _global({k: v[lo:lo + per] for k, v in batch.items()}, self.sharding)

    def get_state(self):
        return {'step': self.step}

    def set_state(self, state):
        self.step = state['step']


def main():
    workdir, fsdp = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) > 3:
        pid, num, port = (int(a) for a in sys.argv[3:6])
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
        jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=num, process_id=pid)
    from vit_jax import metrics, models, resolve, sharding, train
    from vit_jax.configs import common
    config = common.get_config()
    config.dataset = 'synthetic'
    config.model = models.get_config('testing', **{'patches.size': (4, 4), 'transformer.dropout_rate': 0.0})
    config.update(dict(batch=GLOBAL_BATCH, batch_eval=GLOBAL_BATCH, total_steps=STEPS, warmup_steps=1,
                       base_lr=0.1, accum_steps=2, progress_every=1, eval_every=0, checkpoint_every=0,
                       progress_bar=False, optimizer='adam', weight_decay=0.1, optim_dtype=None))
    config.pretrained_path = os.environ.get('VIT_JAX_TEST_PRETRAINED') or None
    config.pretrained_dir = None
    config.mesh.fsdp = fsdp
    config.mesh.fsdp_min_size = 1
    config = resolve.resolve(config)
    mesh = sharding.create_mesh(config.mesh.data, config.mesh.fsdp)
    info = Info(CLASSES, 64, GLOBAL_BATCH, ['a', 'b', 'c'], SIZE)
    train.train(config, workdir, model=models.build_model(config.model, CLASSES), mesh=mesh,
                train_iter=Synthetic(sharding.batch_sharding(mesh)), info=info)
    if jax.process_index() == 0:
        losses = [r['train_loss'] for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
                  if 'train_loss' in r]
        print('LOSSES ' + json.dumps({'devices': jax.device_count(), 'processes': jax.process_count(),
                                      'fsdp': fsdp, 'losses': losses}), flush=True)


if __name__ == '__main__':
    main()
