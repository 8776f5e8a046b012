"""pmap plumbing: replicated state laid out as the pmapped steps lay out their outputs."""
import jax
import jax.numpy as jnp
import numpy as np

from wsss_jax import trainer


def test_replicated_state_is_laid_out_as_the_steps_outputs():
  """A pmapped step fed trainer.replicate's tree compiles once, not again when it is fed its
  own output (jax_utils.replicate's layout made the second call compile the step again)."""
  compiles = []
  listen = lambda name, _, **kw: compiles.append(name) if name.endswith(
      'backend_compile_duration') else None
  step = jax.pmap(lambda s, x: ({'w': s['w'] + x}, jnp.sum(x)), axis_name=trainer.AXIS,
                  donate_argnums=(0,))
  s, x = trainer.replicate({'w': jnp.zeros(3)}), np.ones((jax.local_device_count(), 3), np.float32)
  per_call = []
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    for _ in range(3):
      n = len(compiles)
      s, _ = step(s, x)
      per_call.append(len(compiles) - n)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert per_call == [1, 0, 0]
  np.testing.assert_array_equal(np.asarray(s['w']), 3.0)
