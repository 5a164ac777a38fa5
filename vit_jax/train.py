"""The training loop: a jitted step over a device Mesh, evaluators, hooks, Orbax checkpoints.

`train_and_evaluate(config, workdir)` (the original's entry point) resolves the config, builds
the data, the model, the evaluators (eval split, optional few-shot probe) and the preemption hook,
and calls `train`. `train(config, workdir, ...)` is the loop itself, in small steps:
`init_or_restore` (fresh or pretrained params, or the newest intact checkpoint with the data
position), the jitted `make_train_step`, `evaluate` (every evaluator whose period has come),
`save` (async Orbax checkpoint). Data, evaluators and hooks are arguments, so tests and other
drivers inject data and faults without patching anything. The workdir's layout, its lock and
checkpoint handling are `vit_jax.checkpoint.workdir`'s.

The step is the original's: split the batch into `accum_steps` micro-batches, average the
gradients (over all devices: the batch is one global array), clip, update. Under `jax.jit`
with a ('data', 'fsdp') mesh this is data parallelism (what `pmap` + `pmean` did), with the
parameters and optimizer state optionally sharded over 'fsdp'.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from vit_jax import config_util, fewshot, input_pipeline, optim, paths, resolve, sharding, trees
from vit_jax import metrics as metrics_lib
from vit_jax.checkpoint import adapt, hub, loader, npz
from vit_jax.checkpoint import workdir as workdir_lib
from vit_jax.errors import ConfigError, TrainingError
from vit_jax.models import VisionTransformer, build_model

logger = logging.getLogger(__name__)
LOSSES = resolve.LOSSES


# --- Model, loss and the jitted steps ---------------------------------------------------------

def loss_fn(logits: jax.Array, labels: jax.Array, kind: str = 'softmax_xent') -> jax.Array:
    """Per-example loss. Labels are (smoothed / mixed) one-hot targets [B, C]."""
    if kind == 'softmax_xent':
        return -jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1)
    if kind == 'sigmoid_xent':
        return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)
    raise ValueError(f'loss={kind!r} is unknown; expected one of {LOSSES}')


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


# --- Evaluators and hooks ---------------------------------------------------------------------

class Evaluator(Protocol):
    """Called with the current (sharded) params every `every` steps (0: only at the end) and at
    the end of training, on every process; returns the scalars to log."""

    every: int

    def __call__(self, params: Any) -> dict[str, float]: ...


class Evaluation:
    """Loss, accuracy (top-1) and top-5 on one full pass over an eval split (global batches)."""

    def __init__(self, model: VisionTransformer, eval_ds: Any, *, every: int, loss: str, mesh: Any,
                 dataset: str = 'the data set'):
        self.every, self.eval_ds, self.dataset = every, eval_ds, dataset
        self._step = jax.jit(make_eval_step(model, loss), out_shardings=sharding.replicated(mesh))

    def __call__(self, params: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        totals = None
        for batch in self.eval_ds:
            sums = self._step(params, batch)
            totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
        if totals is None:
            raise TrainingError(f'config.dataset={self.dataset!r}: the eval split is empty')
        totals = jax.device_get(totals)
        count = max(float(totals['count']), 1.0)
        return dict(eval_loss=float(totals['loss']) / count, accuracy=float(totals['top1']) / count,
                    top5_accuracy=float(totals['top5']) / count, eval_time_s=time.perf_counter() - t0)


class FewShotProbe:
    """The few-shot linear probe (`vit_jax.fewshot`) on the current params, as an evaluator.

    Every process gathers the (possibly sharded) params; process 0 fits and scores.
    """

    def __init__(self, evaluator: Any, every: int):
        self.evaluator, self.every = evaluator, every

    def __call__(self, params: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        host_params = gather_params(params)
        if jax.process_index() != 0:
            return {}
        return {**self.evaluator(host_params), 'fewshot_time_s': time.perf_counter() - t0}


Hook = Callable[[int], bool | None]
"""Called after every train step with the step number; True asks the loop to checkpoint and stop
(as after a preemption)."""


class Preemption:
    """A hook that is True once SIGTERM arrived (a scheduler preempting the job).

    As a context manager it installs the signal handler (main thread only) and restores the
    previous one on exit. With several processes they agree at progress boundaries
    (`every` steps), so that all of them stop at the same step.
    """

    def __init__(self, every: int = 1):
        self.every = max(int(every), 1)
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def __enter__(self) -> Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread: no preemption handling
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def __call__(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.requested
        if step % self.every:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))


def gather_params(params: Any) -> Any:
    """Fully replicated host numpy copy of (possibly fsdp-sharded, multi-host) params."""
    return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(params, tiled=True))


# --- State --------------------------------------------------------------------------------------

def sharded_abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `shardings` (nothing allocated)."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  tree, shardings)


def pretrained_source(config: Any) -> str | None:
    """Where the pretrained weights come from: `pretrained_path`, else `{pretrained_dir}/{name}.npz`
    as the original, name = `model_or_filename` (an AugReg model key picks the best i21k
    pre-training from `{pretrained_dir}/index.csv`) else `model.model_name`; None: from scratch."""
    if config.pretrained_path:
        return str(config.pretrained_path)
    if config.pretrained_dir is None:
        return None
    name = str(config.model_or_filename or config.model.get('model_name') or '')
    if not name:
        raise ConfigError('config.pretrained_dir is set but neither config.model_or_filename nor '
                          'config.model.model_name names the file to load from it (set '
                          'config.pretrained_dir=None to train from scratch)')
    directory = str(config.pretrained_dir)
    if config.model_or_filename and '-' not in hub.check_augreg_name(name):   # a model key
        rows = hub.read_augreg_index(paths.join(directory, 'index.csv'))
        name = str(hub.select_augreg(rows, name)['filename'])
    return paths.join(directory, name if name.endswith('.npz') else f'{name}.npz')


@dataclasses.dataclass
class Setup:
    """The train state's abstract shapes and shardings, the optimizer, the schedule, and
    `init_state(key)` (fresh state; jit it with `out_shardings=shardings`)."""

    abstract_state: Any
    shardings: Any
    tx: optax.GradientTransformation
    lr_fn: Callable
    init_state: Callable


def make_setup(config: Any, model: VisionTransformer, mesh: Any, image_size: int) -> Setup:
    """Abstract state -> shardings, without allocating anything."""
    seed = int(config.seed)

    def init_params(key):
        dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        return model.init({'params': key}, dummy, train=False)['params']

    abstract_params = jax.eval_shape(init_params, jax.random.PRNGKey(seed))
    tx, lr_fn = optim.make_optimizer(config, abstract_params)

    def init_state(key):
        params = init_params(key)
        return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(seed + 1))

    abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(seed))
    shardings = sharding.tree_shardings(mesh, abstract_state, int(config.mesh.fsdp_min_size))
    return Setup(abstract_state, shardings, tx, lr_fn, init_state)


def jit_train_step(config: Any, model: VisionTransformer, setup: Setup, mesh: Any) -> Any:
    """vit-train's step, jitted with its shardings (state donated): what `train` runs and
    `vit-plan` compiles for a TPU topology."""
    step_fn = make_train_step(model, setup.tx, setup.lr_fn, accum_steps=int(config.accum_steps),
                              loss=config.loss)
    return jax.jit(step_fn, in_shardings=(setup.shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(setup.shardings, sharding.replicated(mesh)), donate_argnums=0)


def abstract_batch(config: Any, num_classes: int, image_size: int, mesh: Any) -> dict:
    """The global train batch as ShapeDtypeStructs with the batch sharding (input_pipeline's
    layout: float32 images [B, H, W, 3], float32 one-hot labels [B, C])."""
    batch_sh = sharding.batch_sharding(mesh)
    b = int(config.batch)
    return dict(image=jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.float32, sharding=batch_sh),
                label=jax.ShapeDtypeStruct((b, num_classes), jnp.float32, sharding=batch_sh))


def check_batch(config: Any, num_devices: int, num_processes: int) -> None:
    """ConfigError unless the batches split evenly over the devices, processes and micro-batches."""
    if config.batch % num_devices or config.batch_eval % num_devices:
        raise ConfigError(f'config.batch={config.batch} and config.batch_eval={config.batch_eval} '
                          f'must be divisible by the {num_devices} devices')
    if (config.batch // num_processes) % config.accum_steps:
        raise ConfigError(f'config.batch={config.batch} split over {num_processes} '
                          f'processes is not divisible by accum_steps={config.accum_steps}')


def _warn_changed(previous: dict, config: dict, workdir: str, step: int) -> None:
    """A resumed run whose config differs from the workdir's config.json (a new learning rate, more
    steps, ...) is allowed, and said in one warning that names every changed field."""
    before, now = trees.flatten(previous, '.'), trees.flatten(config, '.')
    changed = [f'{k} {before.get(k)!r} -> {now.get(k)!r}' for k in sorted(before.keys() | now.keys())
               if k != 'model_npz_step' and before.get(k) != now.get(k)]
    if changed:
        logger.warning('Resuming %s from step %d with a config that differs from its config.json: %s',
                       workdir, step, '; '.join(changed))


def init_or_restore(config: Any, setup: Setup, checkpoints: workdir_lib.Checkpoints, train_iter: Any
                    ) -> tuple[dict, int | None]:
    """(state, restored step or None): the newest intact checkpoint (with the data position), else
    fresh params (sharded init) with the pretrained weights loaded when configured."""
    restored = checkpoints.restore(sharded_abstract(setup.abstract_state, setup.shardings))
    if restored is not None:
        state, data_state, step = restored
        if data_state.get('iterator') is not None:
            train_iter.set_state(data_state['iterator'])
        logger.info('Resumed from %s', checkpoints.path(step))
        return state, step
    state = jax.jit(setup.init_state, out_shardings=setup.shardings)(jax.random.PRNGKey(int(config.seed)))
    source = pretrained_source(config)
    if source is not None:
        # Every process reads the file: nothing needs the (possibly sharded, multi-host) fresh params.
        params, report = adapt.adapt_pretrained(loader.read(source), setup.abstract_state['params'],
                                                config.model)
        if jax.process_index() == 0:
            print(report, flush=True)
        state['params'] = jax.device_put(params, setup.shardings['params'])
    return state, None


def _dataset_info(info: Any) -> dict:
    return dict(num_classes=int(info.num_classes), class_names=list(info.class_names),
                num_train=int(info.num_train), num_eval=int(info.num_eval),
                image_size=[int(info.image_size)] * 2)


# --- The loop -----------------------------------------------------------------------------------

@dataclasses.dataclass
class _Progress:
    """Step metrics not yet fetched from the devices, and the throughput clock."""

    pending: list = dataclasses.field(default_factory=list)
    t_last: float = dataclasses.field(default_factory=time.perf_counter)
    steps_since: int = 0
    last_eval: dict = dataclasses.field(default_factory=dict)


def _flush_progress(progress: _Progress, step: int, writer: metrics_lib.MetricWriter, config: Any,
                    last_good: str) -> None:
    """Fetches the pending step metrics, stops on NaN/Inf, writes averages."""
    if not progress.pending:
        return
    values = jax.device_get(progress.pending)
    progress.pending = []
    losses = np.array([v['loss'] for v in values])
    norms = np.array([v['grad_norm'] for v in values])
    if not (np.all(np.isfinite(losses)) and np.all(np.isfinite(norms))):
        first = step - len(values) + 1 + int(np.argmin(np.isfinite(losses) & np.isfinite(norms)))
        raise TrainingError(f'non-finite loss/gradient at step {first} (loss {losses.max()}); {last_good}; '
                            'lower base_lr or set grad_norm_clip')
    dt = time.perf_counter() - progress.t_last
    rate = progress.steps_since / dt if dt > 0 else 0.0
    out = dict(train_loss=float(losses.mean()), grad_norm=float(norms.mean()), lr=float(values[-1]['lr']),
               steps_per_sec=rate, img_per_sec_per_core=rate * config.batch / jax.device_count(),
               step_time_ms=1000.0 / rate if rate else 0.0)
    writer.write_scalars(step, out)
    shown = dict(loss=out['train_loss'], **({'acc': progress.last_eval['accuracy']}
                                            if 'accuracy' in progress.last_eval else {}))
    writer.progress(step, shown)
    progress.t_last, progress.steps_since = time.perf_counter(), 0


def evaluate(evaluators: Sequence[Evaluator], params: Any, step: int, last: bool) -> dict[str, float]:
    """The scalars of every evaluator whose period has come (all of them at the last step)."""
    out: dict[str, float] = {}
    for evaluator in evaluators:
        if last or (evaluator.every and step % evaluator.every == 0):
            out.update(evaluator(params))
    return out


def train(config: ml_collections.ConfigDict, workdir: str, *, model: VisionTransformer, mesh: Any,
          train_iter: Iterator, info: Any, evaluators: Sequence[Evaluator] = (), hooks: Sequence[Hook] = ()
          ) -> dict:
    """Trains `model` on `train_iter` per the resolved `config`, resuming from `workdir`.

    Returns the last evaluation metrics plus `step` and `preempted` (a hook asked to stop: the
    state is checkpointed and a rerun resumes).
    """
    total_steps = int(config.total_steps)
    is_chief = jax.process_index() == 0
    lock = workdir_lib.Lock(workdir) if is_chief else None
    created = is_chief and not paths.exists(workdir)   # removed again if this run leaves it empty
    if is_chief:
        workdir_lib.ensure_writable(workdir)
        lock.acquire()
    checkpoints = None
    writer = None
    try:
        setup = make_setup(config, model, mesh, int(info.image_size))
        checkpoints = workdir_lib.Checkpoints(workdir, int(config.keep_checkpoints))
        state, restored_step = init_or_restore(config, setup, checkpoints, train_iter)
        start_step = int(jax.device_get(state['step']))
        saved = dict(config_util.to_dict(config), dataset_info=_dataset_info(info))
        if is_chief:
            in_workdir = lambda name: paths.exists(workdir_lib.file(workdir, name))  # noqa: E731
            finished = in_workdir(workdir_lib.MODEL)   # an earlier run's model.npz
            resumed = restored_step is not None and in_workdir(workdir_lib.CONFIG)
            previous = workdir_lib.read_config(workdir) if finished or resumed else {}
            if resumed:
                _warn_changed(previous, saved, workdir, restored_step)
            if finished and previous.get('model_npz_step') is not None:
                saved['model_npz_step'] = previous['model_npz_step']
            workdir_lib.write_config(workdir, saved)

        train_step = jit_train_step(config, model, setup, mesh)
        writer = metrics_lib.MetricWriter(workdir, total_steps, start_step,
                                          progress=bool(config.progress_bar))
        writer.log(f'Training {config.model.get("model_name") or "ViT"} on {config.dataset}: '
                   f'{info.num_train} train / {info.num_eval} eval images, {info.num_classes} classes, '
                   f'{jax.device_count()} device(s) in mesh {dict(mesh.shape)}, '
                   f'steps {start_step} -> {total_steps}')
        progress = _Progress()
        last_saved = restored_step
        progress_every = max(int(config.progress_every), 1)
        checkpoint_every = int(config.checkpoint_every)

        def last_good() -> str:
            where = checkpoints.path(last_saved) if last_saved is not None else None
            return f'last good checkpoint: step {last_saved} ({where})' if where else 'no checkpoint saved'

        step, preempted = start_step, False
        if start_step >= total_steps:
            progress.last_eval = evaluate(evaluators, state['params'], step, last=True)
        while step < total_steps:
            state, step_metrics = train_step(state, next(train_iter))
            progress.pending.append(step_metrics)
            step += 1
            progress.steps_since += 1
            last = step == total_steps
            if step % progress_every == 0 or last:
                _flush_progress(progress, step, writer, config, last_good())
            scalars = evaluate(evaluators, state['params'], step, last)
            if scalars:
                writer.write_scalars(step, scalars)
                progress.last_eval.update(scalars)
                if 'accuracy' in scalars:
                    writer.progress(step, dict(acc=scalars['accuracy']))
                progress.t_last = time.perf_counter()
            stop = any([bool(hook(step)) for hook in hooks])
            if (checkpoint_every and step % checkpoint_every == 0) or last or stop:
                _flush_progress(progress, step, writer, config, last_good())
                data_state = {'iterator': train_iter.get_state(), 'process_count': jax.process_count()}
                checkpoints.save(step, state, data_state, scalars.get('accuracy'))
                writer.flush()
                last_saved = step
            if stop and not last:
                preempted = True
                writer.log(f'Stopping at step {step} (SIGTERM): checkpoint saved in '
                           f'{checkpoints.path(step)}; rerun the same command to resume.')
                break
        checkpoints.wait()
        if not preempted:
            params = gather_params(state['params'])
            if is_chief:
                npz.save(params, workdir_lib.file(workdir, workdir_lib.MODEL))
                workdir_lib.write_config(workdir, dict(saved, model_npz_step=step))
    finally:
        try:
            if checkpoints is not None:
                checkpoints.close()
            if writer is not None:
                writer.close()
        finally:
            if lock is not None:
                lock.release()
            if created and paths.exists(workdir) and not paths.listdir(workdir):
                paths.rmtree(workdir)   # failed before writing anything: no empty workdir left behind

    result = dict(progress.last_eval, step=step, preempted=preempted)
    if not preempted and 'accuracy' in progress.last_eval and is_chief:
        top5 = f', top-5 {100 * progress.last_eval["top5_accuracy"]:.2f}%' if info.num_classes > 5 else ''
        print(f'Final test accuracy after {step} steps: {100 * progress.last_eval["accuracy"]:.2f}%{top5} '
              f'({info.num_eval} {config.dataset} test images); model in {workdir}', flush=True)
    return result


def _fewshot_probe(config: Any, model: VisionTransformer, image_size: int) -> FewShotProbe | None:
    """The few-shot probe of `config.fewshot` (None when `fewshot.dataset` is unset)."""
    name = config.fewshot.dataset
    if not name:
        return None
    every = int(config.fewshot.every) or int(config.eval_every)
    if jax.process_index() != 0:
        return FewShotProbe(lambda params: {}, every)
    fs_config = ml_collections.ConfigDict(config.to_dict())
    fs_config.dataset = name
    fs_config.pp.crop = image_size
    if name != config.dataset:   # another data set: its default splits
        fs_config.pp.train, fs_config.pp.test = 'train', 'test'
    evaluator = fewshot.FewShotEvaluator.from_config(
        fs_config, model, shots=tuple(int(n) for n in config.fewshot.shots),
        max_eval=int(config.fewshot.max_eval), l2_reg=float(config.fewshot.l2_reg), seed=int(config.seed))
    return FewShotProbe(evaluator, every)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, hooks: Sequence[Hook] = ()
                       ) -> dict:
    """Trains and evaluates per `config`, resuming from `workdir` when it has a checkpoint.

    `hooks` run after every step before the preemption hook (SIGTERM), e.g. to stop early.
    Returns the last evaluation metrics (plus `step` and `preempted`).
    """
    config = resolve.resolve(config)
    sharding.maybe_initialize_distributed(config)
    mesh = sharding.create_mesh(int(config.mesh.data), int(config.mesh.fsdp))
    check_batch(config, jax.device_count(), jax.process_count())
    train_iter, eval_ds, info = input_pipeline.get_datasets(
        config, batch_sharding=sharding.batch_sharding(mesh))
    model = build_model(config.model, info.num_classes)
    evaluators: list[Evaluator] = [Evaluation(model, eval_ds, every=int(config.eval_every), loss=config.loss,
                                              mesh=mesh, dataset=str(config.dataset))]
    probe = _fewshot_probe(config, model, int(info.image_size))
    if probe is not None:
        evaluators.append(probe)
    with Preemption(every=int(config.progress_every)) as preemption:
        return train(config, workdir, model=model, mesh=mesh, train_iter=train_iter, info=info,
                     evaluators=evaluators, hooks=[*hooks, preemption])
