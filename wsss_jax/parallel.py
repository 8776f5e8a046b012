"""Data parallelism with `jax.pmap`: the axis name, host batches split over the local devices,
state replicated as the pmapped steps lay it out, and per-device keys of a step."""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import jax_utils

AXIS = 'batch'


def replicate(tree):
  """`flax.jax_utils.replicate` (one copy per local device), laid out as the pmapped steps lay
  out their outputs (a mesh over the AXIS axis). The step's cache key includes that layout:
  from jax_utils.replicate's own ('_device_put_sharded') the first two calls each compiled the
  step (~5 s more per run on the CPU default, ~11 s per tiny test run)."""
  return jax.pmap(lambda x: x, axis_name=AXIS)(jax_utils.replicate(tree))


def shard(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """(B, ...) -> (local devices, B / devices, ...)."""
  d = jax.local_device_count()
  return {k: v.reshape((d, v.shape[0] // d) + v.shape[1:]) for k, v in batch.items()}


def step_rngs(base: jax.Array, step: int) -> jax.Array:
  """Per-device keys for `step`, a pure function of (base key, step, device index)."""
  first = jax.process_index() * jax.local_device_count()
  return jax.random.split(jax.random.fold_in(base, step), jax.device_count())[
      first:first + jax.local_device_count()]
