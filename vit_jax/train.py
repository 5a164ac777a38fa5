"""The training / evaluation loop: one jitted step over a device Mesh, Orbax checkpoints, metrics.

`train_and_evaluate(config, workdir)` trains `config.model` on `config.dataset` and leaves in
`workdir`:
  config.json    the resolved config (+ `dataset_info` = {num_classes, class_names, ...}, and
                 `model_npz_step` once model.npz is written)
  checkpoints/   Orbax checkpoints (params, optimizer state, step, RNG, data-iterator position):
                 the last `keep_checkpoints` and the best by eval accuracy; resumed automatically
  model.npz      the final params in the public npz format (`vit_jax.checkpoint.save`)
  metrics.jsonl  + TensorBoard event files (loss, lr, grad_norm, accuracy, img/s/core, step time,
                 fewshot/<n>shot when `config.fewshot.dataset` is set)

The step is the original's: split the batch into `accum_steps` micro-batches, average the
gradients (over all devices: the batch is one global array), clip, update. Under `jax.jit`
with a ('data', 'fsdp') mesh this is data parallelism (what `pmap` + `pmean` did), with the
parameters and optimizer state optionally sharded over 'fsdp'.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vit_jax import checkpoint, hub, io_util, optim, sharding
from vit_jax import metrics as metrics_lib
from vit_jax.config_util import get
from vit_jax.models import VisionTransformer, build_model

LOSSES = ('softmax_xent', 'sigmoid_xent')


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...); the message says what to do."""


# --- Model and loss.

def loss_fn(logits: jax.Array, labels: jax.Array, kind: str = 'softmax_xent') -> jax.Array:
    """Per-example loss. Labels are (smoothed / mixed) one-hot targets [B, C]."""
    if kind == 'softmax_xent':
        return -jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1)
    if kind == 'sigmoid_xent':
        return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)
    raise ValueError(f'loss={kind!r} is unknown; expected one of {LOSSES}')


# --- Jitted steps.

def make_train_step(model: VisionTransformer, tx: optax.GradientTransformation,
                    lr_fn: Callable, *, accum_steps: int = 1, loss: str = 'softmax_xent') -> Callable:
    """`step(state, batch) -> (state, metrics)`; state = {step, params, opt_state, rng}."""

    def micro_loss(params, batch, rng):
        logits = model.apply({'params': params}, batch['image'], train=True, rngs={'dropout': rng})
        return jnp.mean(loss_fn(logits, batch['label'], loss)), None

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state, batch):
        rng = jax.random.fold_in(state['rng'], state['step'])
        acc = optim.accumulate_gradient(grad_fn, state['params'], batch, rng, accum_steps)
        updates, opt_state = tx.update(acc.grads, state['opt_state'], state['params'])
        params = optax.apply_updates(state['params'], updates)
        new_state = dict(step=state['step'] + 1, params=params, opt_state=opt_state, rng=state['rng'])
        out = dict(loss=acc.loss, grad_norm=optax.global_norm(acc.grads), lr=lr_fn(state['step']))
        return new_state, out

    return step


def make_eval_step(model: VisionTransformer, loss: str = 'softmax_xent') -> Callable:
    """`eval_step(params, batch) -> sums` of loss, top-1 / top-5 hits and real examples."""

    def eval_step(params, batch):
        logits = model.apply({'params': params}, batch['image'], train=False)
        mask = batch.get('mask', jnp.ones(logits.shape[:1], jnp.float32))
        label = jnp.argmax(batch['label'], axis=-1)
        top1 = (jnp.argmax(logits, axis=-1) == label).astype(jnp.float32)
        k = min(5, logits.shape[-1])
        topk = jnp.any(jax.lax.top_k(logits, k)[1] == label[:, None], axis=-1).astype(jnp.float32)
        return dict(loss=jnp.sum(loss_fn(logits, batch['label'], loss) * mask),
                    top1=jnp.sum(top1 * mask), top5=jnp.sum(topk * mask), count=jnp.sum(mask))

    return eval_step


def evaluate(eval_step: Callable, params: Any, eval_ds: Any, dataset: str = 'the data set') -> dict:
    """Loss, accuracy (top-1) and top-5 on one full pass over `eval_ds` (global batches)."""
    totals = None
    for batch in eval_ds:
        sums = eval_step(params, batch)
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError(f'config.dataset={dataset!r}: the eval split is empty')
    totals = jax.device_get(totals)
    count = max(float(totals['count']), 1.0)
    return dict(eval_loss=float(totals['loss']) / count, accuracy=float(totals['top1']) / count,
                top5_accuracy=float(totals['top5']) / count)


# --- Checkpoints.

def checkpoint_manager(directory: str, keep: int = 3) -> ocp.CheckpointManager:
    """Async Orbax manager keeping the latest `keep` checkpoints and the best by accuracy."""
    from orbax.checkpoint import checkpoint_managers as cm
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: m['accuracy'], reverse=False, n=1,
                 keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=True,
                                           create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=('state', 'data'))


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  tree, shardings)


# --- Helpers.


def _check_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f'.write_test_{jax.process_index()}')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f'workdir {workdir!r} is not writable: {e.strerror or e}') from None


def _json_config(config: Any, info: Any) -> dict:
    out = json.loads(config.to_json_best_effort()) if hasattr(config, 'to_json_best_effort') else dict(config)
    out['dataset_info'] = dict(num_classes=int(info.num_classes), class_names=list(info.class_names),
                               num_train=int(info.num_train), num_eval=int(info.num_eval),
                               image_size=[int(info.image_size)] * 2)
    return out


def _npz_step_entry(workdir: str) -> dict:
    """{'model_npz_step': n} of an existing workdir's model.npz (kept when a run resumes)."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(os.path.join(workdir, 'model.npz')) or not os.path.exists(path):
        return {}
    with open(path) as f:
        step = json.load(f).get('model_npz_step')
    return {} if step is None else {'model_npz_step': step}


@contextlib.contextmanager
def _sigterm_flag():
    """Sets flag['stop'] on SIGTERM (preemption) so that the loop can save and exit."""
    flag = {'stop': False}

    def handler(signum, frame):
        del signum, frame
        flag['stop'] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no preemption handling
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _any_process(value: bool) -> bool:
    if jax.process_count() == 1:
        return value
    return bool(np.any(multihost_utils.process_allgather(np.asarray(value))))


def _gather_params(params: Any) -> Any:
    """Fully replicated host numpy copy of (possibly fsdp-sharded, multi-host) params."""
    return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(params, tiled=True))


def _load_pretrained(config: Any, abstract_params: Any, shardings: Any) -> Any:
    """`config.pretrained_path` adapted to the model (new zero head, resized position embeddings),
    placed with `shardings`. Every process reads the file: nothing needs the (possibly sharded,
    multi-host) fresh params."""
    path = hub.resolve(config.pretrained_path)
    params = checkpoint.load_pretrained(pretrained_path=path, init_params=abstract_params,
                                        model_config=config.model)
    return jax.device_put(params, shardings)


def _fewshot_evaluator(config: Any, model: VisionTransformer, image_size: int) -> Any:
    """A `fewshot.FewShotEvaluator` on `config.fewshot.dataset` (None when unset), on process 0.

    Images at this model's input size, eval-preprocessed: max(shots) per class from the train
    split (`fewshot.support_set`) and the first `max_eval` test images.
    """
    name = get(config, 'fewshot.dataset')
    if not name or jax.process_index() != 0:
        return None
    from vit_jax import fewshot, input_pipeline  # TensorFlow: not for `load_trained` users
    shots = tuple(int(n) for n in get(config, 'fewshot.shots', fewshot.SHOTS))
    seed = int(get(config, 'seed', 0))
    pp = dict(crop=image_size, eval_crop=get(config, 'pp.eval_crop', 'resize'),
              resize=get(config, 'pp.resize'))
    if name == config.dataset:  # the same splits as training
        pp.update({k: get(config, 'pp.' + k) for k in ('train', 'test', 'holdout')
                   if get(config, 'pp.' + k) is not None})
    fs_config = ml_collections.ConfigDict(dict(
        dataset=name, pp=pp, tfds_data_dir=get(config, 'tfds_data_dir'),
        tfds_manual_dir=get(config, 'tfds_manual_dir')))
    train_images, train_labels = fewshot.support_set(fs_config, max(shots), seed)
    test = list(itertools.islice(input_pipeline.eval_examples(fs_config, 'test'),
                                 int(get(config, 'fewshot.max_eval', 2_000))))
    if not test:
        raise ValueError(f'config.fewshot.dataset={name!r}: the test split is empty')
    return fewshot.FewShotEvaluator(
        model, train_images, train_labels, np.stack([x for x, _ in test]), np.array([y for _, y in test]),
        shots=shots, l2_reg=float(get(config, 'fewshot.l2_reg', fewshot.L2_REG)), seed=seed)


# --- The loop.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates per `config`, resuming from `workdir` when it has a checkpoint.

    Returns the last evaluation metrics (plus `step` and `preempted`).
    """
    from vit_jax import input_pipeline

    sharding.maybe_initialize_distributed(config)
    _check_workdir(workdir)
    mesh = sharding.create_mesh(config.get('mesh'))
    batch_sh = sharding.batch_sharding(mesh)
    accum_steps = int(config.get('accum_steps', 1) or 1)
    loss_kind = config.get('loss', 'softmax_xent')
    if loss_kind not in LOSSES:
        raise ValueError(f'config.loss={loss_kind!r} is unknown; expected one of {LOSSES}')
    for key in ('batch', 'batch_eval'):
        per_process = config[key] // jax.process_count()
        if config[key] % jax.device_count() or per_process % (accum_steps if key == 'batch' else 1):
            raise ValueError(f'config.{key}={config[key]} must be divisible by the {jax.device_count()} '
                             f'devices' + (f' and accum_steps={accum_steps}' if key == 'batch' else ''))

    train_iter, eval_ds, info = input_pipeline.get_datasets(config, batch_sharding=batch_sh,
                                                            seed=config.get('seed', 0))
    model = build_model(config.model, info.num_classes)
    image_hw = (int(info.image_size),) * 2
    total_steps = int(config.total_steps)

    if jax.process_index() == 0:
        io_util.write_atomic(os.path.join(workdir, 'config.json'), json.dumps(
            dict(_json_config(config, info), **_npz_step_entry(workdir)), indent=2))

    # Abstract state -> shardings -> sharded init (no full copy on one device).
    seed = int(config.get('seed', 0))

    def init_params(key):
        dummy = jnp.zeros((1, *image_hw, 3), jnp.float32)
        return model.init({'params': key}, dummy, train=False)['params']

    abstract_params = jax.eval_shape(init_params, jax.random.PRNGKey(seed))
    tx, lr_fn = optim.make_optimizer(config, abstract_params)

    def init_state(key):
        params = init_params(key)
        return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(seed + 1))

    abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(seed))
    min_size = int((config.get('mesh') or {}).get('fsdp_min_size', sharding.FSDP_MIN_SIZE))
    state_sh = sharding.tree_shardings(mesh, abstract_state, min_size)
    repl = sharding.replicated(mesh)

    manager = checkpoint_manager(os.path.join(workdir, 'checkpoints'), int(config.get('keep_checkpoints', 3)))
    latest = manager.latest_step()
    if latest is not None:
        try:
            target = _abstract(abstract_state, state_sh)
            restored = manager.restore(latest, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        except ValueError as e:
            raise ValueError(f'checkpoint {latest} in {manager.directory} does not fit this config (another '
                             f'model or optimizer?): use a new workdir ({str(e).splitlines()[0]})') from None
        state = restored['state']
        data_state = restored['data'] or {}
        if data_state.get('iterator') is not None:
            train_iter.set_state(data_state['iterator'])
        logging.info('Resumed from %s at step %d', manager.directory, latest)
    else:
        state = jax.jit(init_state, out_shardings=state_sh)(jax.random.PRNGKey(seed))
        if config.get('pretrained_path'):
            state['params'] = _load_pretrained(config, abstract_params, state_sh['params'])
    start_step = int(jax.device_get(state['step']))

    train_step = jax.jit(make_train_step(model, tx, lr_fn, accum_steps=accum_steps, loss=loss_kind),
                         in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(model, loss_kind), in_shardings=(state_sh['params'], batch_sh),
                        out_shardings=repl)

    eval_every = int(get(config, 'eval_every', 100) or 0)  # 0: only at the end
    fewshot_eval = _fewshot_evaluator(config, model, int(info.image_size))
    fewshot_every = int(get(config, 'fewshot.every', 0) or eval_every)

    def run_fewshot(step):
        """fewshot/<n>shot of the current params (gathered on every process, probed on process 0)."""
        if not get(config, 'fewshot.dataset'):
            return
        t0 = time.perf_counter()
        params = _gather_params(state['params'])
        if fewshot_eval is not None:
            scores = fewshot_eval(params)
            writer.write_scalars(step, {**scores, 'fewshot_time_s': time.perf_counter() - t0})

    writer = metrics_lib.MetricWriter(workdir, total_steps, start_step,
                                      progress=bool(config.get('progress_bar', True)))
    progress_every = max(int(config.get('progress_every', 10)), 1)
    checkpoint_every = int(config.get('checkpoint_every', 1000) or 0)
    n_dev = jax.device_count()
    writer.log(f'Training {config.model.get("model_name") or "ViT"} on {config.dataset}: '
               f'{info.num_train} train / {info.num_eval} eval images, {info.num_classes} classes, '
               f'{n_dev} device(s) in mesh {dict(mesh.shape)}, steps {start_step} -> {total_steps}')

    pending: list = []
    last_eval: dict = {}
    last_good_step = latest
    t_last, steps_since = time.perf_counter(), 0

    def flush(step):
        """Fetches the pending step metrics, stops on NaN/Inf, writes averages."""
        nonlocal pending, t_last, steps_since
        if not pending:
            return
        values = jax.device_get(pending)
        pending = []
        losses = np.array([v['loss'] for v in values])
        norms = np.array([v['grad_norm'] for v in values])
        if not (np.all(np.isfinite(losses)) and np.all(np.isfinite(norms))):
            first = step - len(values) + 1 + int(np.argmin(np.isfinite(losses) & np.isfinite(norms)))
            kept = f'last good checkpoint: step {last_good_step}' if last_good_step else 'no checkpoint saved'
            raise TrainingError(f'non-finite loss/gradient at step {first} (loss {losses.max()}); {kept} '
                                f'in {manager.directory}; lower base_lr or set grad_norm_clip')
        dt = time.perf_counter() - t_last
        rate = steps_since / dt if dt > 0 else 0.0
        out = dict(train_loss=float(losses.mean()), grad_norm=float(norms.mean()),
                   lr=float(values[-1]['lr']), steps_per_sec=rate,
                   img_per_sec_per_core=rate * config.batch / n_dev,
                   step_time_ms=1000.0 / rate if rate else 0.0)
        writer.write_scalars(step, out)
        shown = dict(loss=out['train_loss'], **({'acc': last_eval['accuracy']} if last_eval else {}))
        writer.progress(step, shown)
        t_last, steps_since = time.perf_counter(), 0

    def save(step, eval_metrics=None):
        nonlocal last_good_step
        data_state = {'iterator': train_iter.get_state(), 'process_count': jax.process_count()}
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=ocp.args.JsonSave(data_state)),
                     metrics=({'accuracy': eval_metrics['accuracy']} if eval_metrics else None), force=True)
        last_good_step = step

    step = start_step
    preempted = False
    try:
        with _sigterm_flag() as sigterm, mesh:
            if start_step >= total_steps:
                last_eval = evaluate(eval_step, state['params'], eval_ds, config.dataset)
            while step < total_steps:
                state, step_metrics = train_step(state, next(train_iter))
                pending.append(step_metrics)
                step += 1
                steps_since += 1
                last = step == total_steps
                if step % progress_every == 0 or last:
                    flush(step)
                if (eval_every and step % eval_every == 0) or last:
                    t0 = time.perf_counter()
                    last_eval = evaluate(eval_step, state['params'], eval_ds, config.dataset)
                    writer.write_scalars(step, {**last_eval, 'eval_time_s': time.perf_counter() - t0})
                    writer.progress(step, dict(acc=last_eval['accuracy']))
                    t_last = time.perf_counter()
                if (fewshot_every and step % fewshot_every == 0) or last:
                    run_fewshot(step)
                    t_last = time.perf_counter()
                stop = sigterm['stop']
                if jax.process_count() > 1 and not (step % progress_every == 0 or last):
                    stop = False  # processes agree on stopping only at progress boundaries
                elif jax.process_count() > 1:
                    stop = _any_process(stop)
                if (checkpoint_every and step % checkpoint_every == 0) or last or stop:
                    flush(step)
                    evaluated_now = last or (eval_every and step % eval_every == 0)
                    save(step, last_eval if last_eval and evaluated_now else None)
                if stop and not last:
                    preempted = True
                    writer.log(f'SIGTERM at step {step}: checkpoint saved in {manager.directory}; '
                               f'rerun the same command to resume.')
                    break
        manager.wait_until_finished()
        if not preempted:
            params = _gather_params(state['params'])
            if jax.process_index() == 0:
                checkpoint.save(params, os.path.join(workdir, 'model.npz'))
                saved = dict(_json_config(config, info), model_npz_step=step)
                io_util.write_atomic(os.path.join(workdir, 'config.json'), json.dumps(saved, indent=2))
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()

    result = dict(last_eval, step=step, preempted=preempted)
    if not preempted and last_eval and jax.process_index() == 0:
        top5 = f', top-5 {100 * last_eval["top5_accuracy"]:.2f}%' if info.num_classes > 5 else ''
        print(f'Final test accuracy after {step} steps: {100 * last_eval["accuracy"]:.2f}%{top5} '
              f'({info.num_eval} {config.dataset} test images); model in {workdir}', flush=True)
    return result


# --- Loading a trained workdir.

def load_trained(workdir: str) -> tuple[ml_collections.ConfigDict, int, Any, list[str]]:
    """(model_config, num_classes, params, class_names) of a workdir written by `train_and_evaluate`.

    Params come from the newest of `model.npz` (end of training; its step is config.json's
    `model_npz_step`) and the latest Orbax checkpoint (a run in progress, preempted, or resumed
    with more `total_steps` after model.npz was written).
    """
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found: is {workdir!r} a vit-train workdir?')
    with open(path) as f:
        saved = json.load(f)
    model_config = ml_collections.ConfigDict(saved['model'])
    info = saved['dataset_info']
    npz = os.path.join(workdir, 'model.npz')
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    manager = None
    if os.path.isdir(ckpt_dir):
        manager = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=('state', 'data'),
                                        options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        latest = manager.latest_step() if manager else None
        npz_step = saved.get('model_npz_step', -1 if latest is None else latest)
        if os.path.exists(npz) and (latest is None or npz_step >= latest):
            params = checkpoint.load(npz)
        elif latest is not None:
            restored = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
            params = jax.tree_util.tree_map(np.asarray, restored['state']['params'])
        else:
            raise FileNotFoundError(f'{workdir!r} has neither model.npz nor a checkpoint in checkpoints/')
    finally:
        if manager:
            manager.close()
    return model_config, int(info['num_classes']), params, list(info['class_names'])
