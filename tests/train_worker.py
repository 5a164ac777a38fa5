"""Runs a few training steps of a tiny ViT on synthetic data; used by tests/test_sharding.py.

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


def get_datasets(config, *, batch_sharding=None, seed=None):
    per = GLOBAL_BATCH // jax.process_count()
    ev = _batch(1000, GLOBAL_BATCH)
    ev = {k: v[jax.process_index() * per:][:per] for k, v in ev.items()}
    ev['mask'] = np.ones(per, np.float32)
    info = Info(CLASSES, 64, GLOBAL_BATCH, ['a', 'b', 'c'], SIZE)
    return Synthetic(batch_sharding), [_global(ev, batch_sharding)], info


def main():
    workdir, fsdp = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) > 3:
        pid, num, port = (int(a) for a in sys.argv[3:6])
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
        jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=num, process_id=pid)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import common
    from vit_jax import input_pipeline, train
    input_pipeline.get_datasets = get_datasets
    config = common.get_config()
    config.dataset = 'synthetic'
    config.model = common.model_config('testing', **{'patches.size': (4, 4), 'transformer.dropout_rate': 0.0})
    config.update(dict(batch=GLOBAL_BATCH, batch_eval=GLOBAL_BATCH, total_steps=STEPS, warmup_steps=1,
                       base_lr=0.1, accum_steps=2, progress_every=1, eval_every=0, checkpoint_every=0,
                       progress_bar=False, optimizer='adam', weight_decay=0.1, optim_dtype=None))
    config.pretrained_path = os.environ.get('VIT_JAX_TEST_PRETRAINED') or None
    config.mesh.fsdp = fsdp
    config.mesh.fsdp_min_size = 1
    train.train_and_evaluate(config, workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, 'metrics.jsonl')) as f:
            losses = [r['train_loss'] for r in map(json.loads, f) if 'train_loss' in r]
        print('LOSSES ' + json.dumps({'devices': jax.device_count(), 'processes': jax.process_count(),
                                      'fsdp': fsdp, 'losses': losses}), flush=True)


if __name__ == '__main__':
    main()
