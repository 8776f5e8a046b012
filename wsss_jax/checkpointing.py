"""Checkpoints with orbax: atomic saves, restore with a clear error for another architecture or
optimizer, quarantine of unreadable checkpoints, and a full disk reported as one line."""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from wsss_jax.config_lib import CheckpointError, ConfigError, NonFiniteError


def checkpoint_manager(workdir: str, config, *, read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax manager of workdir/checkpoints. Orbax writes each step into a temporary
  directory and renames it when complete, so a run killed mid-save leaves the previous
  checkpoints intact; the next training run removes the unfinished temporary directory.
  `read_only` (evaluation) creates, cleans and deletes nothing."""
  path = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  if read_only and not os.path.isdir(path):
    raise ConfigError(f'no checkpoint in {path}')
  # The end of the Delta^C warm-up is kept beyond the latest keep_checkpoints: other runs may
  # start from it (train.init_from).
  keep = [ocp.checkpoint_managers.LatestN(config.train.keep_checkpoints)]
  if 0 < int(config.train.warmup_steps) < config.train.num_steps:
    keep.append(ocp.checkpoint_managers.CustomSteps([int(config.train.warmup_steps)]))
  opts = ocp.CheckpointManagerOptions(
      create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only,
      preservation_policy=None if read_only else ocp.checkpoint_managers.AnyPreservationPolicy(
          keep))
  return ocp.CheckpointManager(path, options=opts, item_handlers=ocp.StandardCheckpointHandler())


def check_params(params: Any, expected: Any, source: str) -> None:
  """Raise one clear ValueError when `params` does not match `expected`'s layout (the names
  missing or unexpected, or the first parameter whose shape differs)."""
  shape = lambda a: tuple(a.shape) if hasattr(a, 'shape') else np.shape(a)  # noqa: E731
  got, want = jax.tree.map(shape, params), jax.tree.map(shape, expected)
  if got == want:
    return
  if not isinstance(got, dict) or not isinstance(want, dict):
    raise ValueError(f'{source}: parameter tree does not match the configured model')
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  diff = [k for k in sorted(set(want) & set(got)) if got[k] != want[k]]
  parts = []
  if missing:
    parts.append(f'missing {missing[:4]}')
  if extra:
    parts.append(f'unexpected {extra[:4]}')
  if diff:
    k = diff[0]
    parts.append(f'{k} has shape {got[k]} but the config needs {want[k]}')
  raise ValueError(f'{source}: checkpoint architecture differs from the config '
                   f'({"; ".join(parts)})')


class _Unreadable(Exception):
  """Orbax could not read a checkpoint's files (truncated, corrupted, half-written)."""


def _restore_step(mngr: ocp.CheckpointManager, template, step: int):
  """Restore one step. ConfigError: the checkpoint is intact but of another model or
  optimizer; _Unreadable: orbax failed to read it (only orbax's own reads count, so a bug
  here can never get a good checkpoint moved aside)."""
  where = f'checkpoint step {step} in {mngr.directory}'
  try:
    meta = mngr.item_metadata(step)
  except Exception as e:  # orbax/tensorstore raise many types for unreadable files
    raise _Unreadable(f'{type(e).__name__}: {e}') from e
  tree = getattr(meta, 'tree', meta)
  if not isinstance(tree, Mapping) or 'params' not in tree:
    raise _Unreadable(f'its metadata does not describe a wsss-jax TrainState '
                      f'({type(tree).__name__})')
  stored = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, jnp.float32), tree['params'])
  try:
    check_params(stored, template.params, where)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  shapes = lambda t: sorted(tuple(np.shape(x)) for x in jax.tree.leaves(t))  # noqa: E731
  if shapes(tree) != shapes(template):
    raise ConfigError(f'{where} holds the same model but another optimizer state (was '
                      'config.train.optimizer changed?); use a new --workdir')
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(template))
  except Exception as e:
    raise _Unreadable(f'{type(e).__name__}: {e}') from e


def restore_state(mngr: ocp.CheckpointManager, template, step: int | None = None, *,
                  quarantine: bool = False):
  """Restore the latest (or given) checkpoint into `template`'s structure.

  The stored shapes are compared with the configured model first (from metadata,
  without reading arrays), so a checkpoint of another architecture gives one clear
  error. Without an explicit `step`, a checkpoint orbax cannot read (truncated,
  corrupted) is skipped with a warning in favour of the previous one; with
  `quarantine` (training) it is moved to checkpoints.corrupt/ next to the checkpoints,
  never deleted, so the resumed run can save that step again.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise ConfigError(f'no checkpoint for step {step} in {mngr.directory} (have {sorted(steps)})')
    try:
      return _restore_step(mngr, template, step)
    except _Unreadable as e:
      raise CheckpointError(f'checkpoint step {step} in {mngr.directory} is unreadable '
                            f'({e})') from None
  if not steps:
    raise ConfigError(f'no checkpoint in {mngr.directory}')
  for s in steps:
    try:
      return _restore_step(mngr, template, s)
    except _Unreadable as e:
      msg = f'checkpoint step {s} in {mngr.directory} is unreadable ({str(e)[:300]})'
      if quarantine:
        dest = os.path.join(os.path.dirname(str(mngr.directory)), 'checkpoints.corrupt',
                            f'{s}-{time.strftime("%Y%m%d-%H%M%S")}')
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(dest), exist_ok=True)
          os.replace(os.path.join(str(mngr.directory), str(s)), dest)
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices(f'quarantine checkpoint {s}')
        mngr.reload()
        msg += f'; moved to {dest}'
      warnings.warn(f'{msg}; falling back to an earlier checkpoint', RuntimeWarning, stacklevel=2)
      print(f'warning: {msg}')
  raise CheckpointError(f'no readable checkpoint in {mngr.directory} (tried steps {steps})')


def save_state(mngr: ocp.CheckpointManager, state) -> None:
  """Save `state` (asynchronously) unless its step is saved already. Refuses non-finite
  parameters; a failed write (disk full, permissions) is a CheckpointError naming the path."""
  step = int(state.step)
  if step in mngr.all_steps():
    return
  state = jax.device_get(state)
  if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params)):
    raise NonFiniteError(f'refusing to save non-finite parameters at step {step}')
  try:
    mngr.save(step, args=ocp.args.StandardSave(state))
  except OSError as e:
    raise CheckpointError(f'cannot write checkpoint step {step} to {mngr.directory}: {e}') from None


def finish_saves(mngr: ocp.CheckpointManager) -> None:
  """Wait for pending asynchronous saves; a failed one is a CheckpointError."""
  try:
    mngr.wait_until_finished()
  except OSError as e:
    raise CheckpointError(f'cannot write a checkpoint to {mngr.directory}: {e}') from None


@contextlib.contextmanager
def finish_saves_on_error(mngr: ocp.CheckpointManager):
  """Let saves already under way complete when the block fails, then re-raise."""
  try:
    yield
  except BaseException:
    with contextlib.suppress(Exception):
      mngr.wait_until_finished()
    raise


@contextlib.contextmanager
def closing_on_error(mngr: ocp.CheckpointManager):
  """Close the manager when the block fails (its background threads would otherwise print an
  orbax traceback at exit, after the one-line error), then re-raise."""
  try:
    yield mngr
  except BaseException:
    with contextlib.suppress(Exception):
      mngr.close()
    raise
