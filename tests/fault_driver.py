"""Runs train.py in this process with one fault injected; used by test_faults.py.

usage: python tests/fault_driver.py FAULT:ARG [train.py flags...]

  kill_mid_save:K   SIGKILL this process right after the save of step K has started
  enospc:K          the save of step K fails with "No space left on device"
  poison:K          the loss of the K-th step (1-based) is NaN
  capture_params:P  before the final evaluation, write this process's parameters to
                    P.<process index>.npz
"""
import errno
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from wsss_jax import data, evaluation, losses  # noqa: E402

fault, arg = sys.argv[1].split(':', 1)
original_save = ocp.CheckpointManager.save

if fault == 'kill_mid_save':
  def save(self, step, *args, **kwargs):
    result = original_save(self, step, *args, **kwargs)
    if step == int(arg):
      # orbax may create the step's temporary directory on its background thread: wait until it
      # exists (the save has started writing), so the kill lands mid-save, not before it
      ckpt, deadline = str(self.directory), time.monotonic() + 30
      while time.monotonic() < deadline and not any(
          d.startswith(arg) and not d.isdigit() for d in os.listdir(ckpt)):
        time.sleep(0.0005)
      os.kill(os.getpid(), signal.SIGKILL)
    return result
  ocp.CheckpointManager.save = save

elif fault == 'enospc':
  def save(self, step, *args, **kwargs):
    if step == int(arg):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))
    return original_save(self, step, *args, **kwargs)
  ocp.CheckpointManager.save = save

elif fault == 'poison':
  original_batches, original_loss = data.train_batches, losses.training_loss

  def train_batches(*args, start_step=0, **kwargs):
    for done, batch in enumerate(original_batches(*args, start_step=start_step, **kwargs),
                                 start_step + 1):
      yield dict(batch, poison=np.full(len(batch['image']), float(done == int(arg)), np.float32))

  def training_loss(params, batch, rng, config):
    loss, (terms, telemetry) = original_loss(params, batch, rng, config)
    nan = jnp.where(jnp.max(batch['poison']) > 0, jnp.nan, 0.0)
    return loss + nan, (dict(terms, cls_loss=terms['cls_loss'] + nan), telemetry)

  data.train_batches, losses.training_loss = train_batches, training_loss

elif fault == 'capture_params':
  original_evaluate = evaluation.evaluate

  def evaluate(params, *args, **kwargs):
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(f'{arg}.{jax.process_index()}.npz', **flat)
    return original_evaluate(params, *args, **kwargs)

  evaluation.evaluate = evaluate

else:
  sys.exit(f'unknown fault {fault!r}')

sys.argv = ['train.py'] + sys.argv[2:]
os.chdir(ROOT)
import runpy  # noqa: E402

runpy.run_path(os.path.join(ROOT, 'train.py'), run_name='__main__')
