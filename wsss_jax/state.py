"""The training state: parameters (model.init_params), the optimizer of Sec. 7 and the base key,
as a Flax TrainState (what a checkpoint holds)."""
from __future__ import annotations

import jax
from flax.training import train_state

from wsss_jax import model, optimizers, warmup


class TrainState(train_state.TrainState):
  """Flax TrainState plus the base PRNG key (checkpointed with the rest)."""
  rng: jax.Array


def create_state(config, key: jax.Array) -> TrainState:
  """Fresh parameters and optimizer state for `config` from raw key data `key`."""
  params = model.init_params(jax.random.fold_in(key, 0), config)
  tx = optimizers.make_optimizer(config,
                                 fcl_frozen_in_warmup=warmup.warmup_trains_other_head(config))
  return TrainState.create(apply_fn=None, params=params, tx=tx, rng=jax.random.fold_in(key, 1))
