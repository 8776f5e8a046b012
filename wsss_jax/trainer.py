"""The training loop (Secs. 6-7): a pure `train_step` stepped with `jax.pmap` over the local
devices, exact resume, preemption and non-finite steps.

`train_and_evaluate(config, workdir)` is the whole job behind `train.py`. `train_step` is a pure
function of (state, batch, rng); gradients are averaged with `lax.pmean`, so D devices with
per-device batch B/D take the same step as one device with batch B. Batches and dropout keys are
pure functions of (seed, step), so a resumed run equals an uninterrupted one bit for bit.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import jax_utils
from tqdm.auto import tqdm

from wsss_jax import (
  checkpointing,
  config_lib,
  data,
  evaluation,
  losses,
  model,
  optimizers,
  summaries,
  warmup,
  weights,
)
from wsss_jax.config_lib import ConfigError, NonFiniteError
from wsss_jax.parallel import AXIS, replicate, shard, step_rngs
from wsss_jax.state import TrainState, create_state

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: train.py's status after a preemption save (rerun to resume)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, config):
  """One optimizer step on this device's shard; gradients are averaged across the pmap axis.

  Returns the new state and the step's metrics: the loss, its terms and the telemetry of
  `losses.training_loss`. A step whose loss or averaged gradient is not finite leaves the
  parameters and the optimizer state as they were (the step counter still advances, so data
  and RNG stay aligned with the step number); metrics['nonfinite'] is 1 for it.
  """
  grad_fn = jax.value_and_grad(losses.training_loss, has_aux=True)
  (loss, (terms, telemetry)), grads = grad_fn(state.params, batch, rng, config)
  grads = jax.lax.pmean(grads, AXIS)
  aux = jax.lax.pmean({**terms, **telemetry, 'loss': loss}, AXIS)
  finite = jnp.isfinite(aux['loss'])
  for g in jax.tree.leaves(grads):
    finite &= jnp.all(jnp.isfinite(g))
  new = state.apply_gradients(grads=grads)
  keep = lambda n, o: jnp.where(finite, n, o)  # noqa: E731
  new = new.replace(params=jax.tree.map(keep, new.params, state.params),
                    opt_state=jax.tree.map(keep, new.opt_state, state.opt_state))
  aux['nonfinite'] = 1.0 - finite.astype(jnp.float32)
  return new, aux


def window_summary(window: list[tuple[int, dict[str, Any]]]) -> tuple[dict[str, float], list]:
  """Mean of each metric over the finite steps of a logging window, and the non-finite
  steps as (step, metrics) pairs."""
  host = jax.device_get([aux for _, aux in window])
  rows = [{k: float(v[0]) for k, v in aux.items()} for aux in host]
  bad = [(step, row) for (step, _), row in zip(window, rows) if row['nonfinite']]
  good = [row for row in rows if not row['nonfinite']] or rows
  means = {k: float(np.mean([row[k] for row in good])) for k in rows[0] if k != 'nonfinite'}
  means['nonfinite_steps'] = float(len(bad))
  if 'lattice_fill' in rows[0]:
    means['lattice_fill_max'] = float(max(row['lattice_fill'] for row in rows))
  return means, bad


class MetricsWindow:
  """The steps since the last log line. `flush` writes their means with the step, learning rate
  and images/s to metrics.jsonl and TensorBoard (summaries.RunLog), warns once when the CRF-RNN
  lattice overflowed or the attention QPs stopped short, and reports non-finite steps (with
  config.train.nonfinite = 'stop': a NonFiniteError)."""

  def __init__(self, config, log: summaries.RunLog, bar):
    self.config, self.log, self.bar = config, log, bar
    self.schedule = optimizers.learning_rate_schedule(config)
    self.steps: list[tuple[int, dict[str, Any]]] = []
    self.start = time.perf_counter()
    self.warned_fill = self.warned_qp = False

  def add(self, step: int, aux: Mapping[str, Any]) -> None:
    self.steps.append((step, aux))

  def flush(self) -> None:
    if not self.steps:
      return
    config = self.config
    scalars, bad = window_summary(self.steps)
    ips = len(self.steps) * config.train.batch_size / (time.perf_counter() - self.start)
    step = self.steps[-1][0]
    scalars.update(step=step, lr=float(self.schedule(step - 1)), images_per_sec=ips)
    self.log.train(scalars)
    self.bar.set_postfix(loss=f'{scalars["loss"]:.4f}', img_s=f'{ips:.0f}')
    self.start, self.steps = time.perf_counter(), []
    if scalars.get('lattice_fill_max', 0.0) > 1.0 and not self.warned_fill:
      self.warned_fill = True
      print(f'warning: at step {step} a training image needed {scalars["lattice_fill_max"]:.2f}x '
            f'model.crf.lattice_capacity ({config.model.crf.lattice_capacity}) CRF-RNN lattice '
            'rows: points past it are dropped; raise it or set it to 0 (worst case). '
            'Warned once; metrics.jsonl logs lattice_fill_max per window.')
    if scalars.get('qp_converged', 1.0) < 0.99 and not self.warned_qp:
      self.warned_qp = True
      print(f'warning: at step {step} only {100 * scalars["qp_converged"]:.1f}% of the attention '
            f'QPs reached model.attention.qp_tol within qp_iters = '
            f'{config.model.attention.qp_iters} (the rest are not KKT points): raise qp_iters. '
            'Warned once; metrics.jsonl logs qp_converged per window.')
    if bad:
      first, row = bad[0]
      terms = ', '.join(f'{k}={v:.4g}' for k, v in row.items() if k != 'nonfinite')
      if config.train.nonfinite == 'stop':
        raise NonFiniteError(f'non-finite loss or gradient at step {first} ({terms}); '
                             'its update was not applied and no checkpoint after step '
                             f'{first - 1} was written')
      print(f'warning: skipped {len(bad)} non-finite step(s) up to step {step}, '
            f'first {first} ({terms})')


class PreemptionGuard:
  """Turns the first SIGTERM / SIGINT into a request to save and stop at a step boundary
  (a second SIGINT interrupts at once). Handlers are only installed in the main thread."""

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def _check_start(config, workdir: str):
  """Refuse a run before anything is written that it cannot finish: a bad config, a workdir
  holding another model or data, a train split smaller than a batch, an empty eval split.
  Returns the config with the attention's class bound resolved from the data
  (model.attention.max_classes = 0) and the train dataset, whose images are checked against it."""
  config_lib.validate_config(config)
  config_lib.check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  old = os.path.join(workdir, 'config.json')
  if os.path.exists(old):
    prev = config_lib.as_dict(config_lib.load_config(workdir))
    now = config_lib.as_dict(config)  # the JSON round trip makes tuples lists on both sides
    if prev['model'] != now['model'] or prev['data'] != now['data']:
      raise ConfigError(f'{workdir} holds a run with a different model or data config '
                        f'(see {old}); use a new --workdir')
  config_lib.save_config(config, workdir)
  train_ds = data.make_dataset(config.data, 'train')
  local_batch = config.train.batch_size // jax.process_count()
  if len(train_ds) < local_batch:
    raise ConfigError(f'the train split of data "{config.data.name}" has {len(train_ds)} examples, '
                      f'fewer than one batch of {local_batch} per process')
  evaluation.eval_dataset(config, config.eval.split)  # found before training, not after it
  config = config_lib.with_class_bound(config, data.max_tags(train_ds))
  if config.train.mode == 'weak' and config.model.attention.enabled:
    train_ds = data.TagBound(train_ds, model.max_foreground(config))
  return config, train_ds


def _initial_state(config, workdir: str, mngr) -> TrainState:
  """The latest checkpoint, another run's warm-up (train.init_from), ImageNet weights
  (init_weights) or a fresh init, in that order."""
  state = create_state(config, jax.random.key_data(jax.random.key(config.seed)))
  if mngr.latest_step() is not None:
    state = checkpointing.restore_state(mngr, state, quarantine=True)
    print(f'resumed from step {int(state.step)} in {workdir}')
  elif config.train.init_from:
    state = warmup.init_from_warmup(config, state)
    warmup.copy_warmup_metrics(config.train.init_from, workdir, int(state.step))
    print(f'started from step {int(state.step)} of {config.train.init_from} (shared warm-up)')
  elif config.init_weights:
    try:  # ImageNet VGG-16 for conv1_1..fc7 (Sec. 7); fc8, FCL and CRF keep their init
      state = state.replace(params=dict(
          state.params,
          backbone=weights.init_backbone(state.params['backbone'], config.init_weights)))
    except weights.WeightsError as e:
      raise ConfigError(str(e)) from None
    print(f'initialised conv1_1..fc7 from {config.init_weights}')
  # Host copies: restored arrays are committed to one device, which the pmapped step (and the
  # keys derived from state.rng) would refuse on a multi-device host.
  return jax.device_get(state)


def _pmapped_step(config):
  """train_step under pmap, also summing each device's stop request over all devices."""
  def step_fn(s, b, r, stop):
    new, aux = train_step(s, b, r, config)
    return new, aux, jax.lax.psum(stop, AXIS)
  return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0,))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train per `config` in `workdir` (resuming from its latest checkpoint), then evaluate.

  SIGTERM / SIGINT save a checkpoint at the current step and return {'preempted': True,
  'step': N} (train.py then exits with PREEMPTED_EXIT_CODE); rerunning resumes exactly. All
  processes of a multi-process run agree on the stopping step through a flag summed inside the
  pmapped step.
  """
  config, train_ds = _check_start(config, workdir)
  mngr = checkpointing.checkpoint_manager(workdir, config)
  with checkpointing.closing_on_error(mngr):
    state = _initial_state(config, workdir, mngr)
  start, num_steps = int(state.step), config.train.num_steps
  batches = data.train_batches(train_ds, global_batch=config.train.batch_size, seed=config.seed,
                               start_step=start, process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               num_threads=config.data.num_threads,
                               augment=data.train_augment(config.data))
  p_train, p_warm = _pmapped_step(config), _pmapped_step(warmup.warmup_config(config))
  base_rng = state.rng
  rstate = replicate(state)
  del state

  bar = tqdm(total=num_steps, initial=start, unit='step', dynamic_ncols=True,
             disable=not config.train.progress_bar or jax.process_index() != 0)
  log = summaries.RunLog(workdir)
  window = MetricsWindow(config, log, bar)
  pending_stop, done = None, start
  with PreemptionGuard() as guard, checkpointing.finish_saves_on_error(mngr):
    for step in range(start, num_steps):
      batch = shard(next(batches))
      step_fn = p_warm if step < config.train.warmup_steps else p_train
      stop = np.full((jax.local_device_count(),), guard.signal is not None, np.int32)
      rstate, aux, stop_all = step_fn(rstate, batch, step_rngs(base_rng, step), stop)
      done = step + 1
      window.add(done, aux)
      bar.update(1)
      if done % config.train.log_every == 0 or done == num_steps:
        window.flush()
      if (done % config.train.checkpoint_every == 0 or done == num_steps
          or done == config.train.warmup_steps):  # (train.init_from starts other runs there)
        window.flush()
        checkpointing.save_state(mngr, jax_utils.unreplicate(rstate))
      # The previous step's summed flag (already computed: reading it does not stall the queue).
      if pending_stop is not None and int(pending_stop[0]):
        break
      pending_stop = stop_all
  bar.close()
  if done < num_steps:
    window.flush()
    checkpointing.save_state(mngr, jax_utils.unreplicate(rstate))
    checkpointing.finish_saves(mngr)
    mngr.close()
    log.close()
    print(f'preempted: saved a checkpoint at step {done} in {workdir}; '
          'rerun the same command to resume')
    return {'preempted': True, 'step': done}
  checkpointing.finish_saves(mngr)
  log.curves()
  log.close()
  params = jax_utils.unreplicate(rstate).params
  result = evaluation.evaluate(params, config, config.eval.split, workdir=workdir, step=num_steps)
  print(f'{config.eval.split} mIoU: {evaluation.percent(result["miou"])}')
  mngr.close()
  return result
