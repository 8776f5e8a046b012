"""Training step time of the default config vs the classification-only step (B1), same run.

  python bench/step_time.py [--steps=10] [--variants=full,seg_target_crf]

The full method's step against the B1 step on the default config, in one run. B1's step is
the warm-up's (Delta^C only: no attention, no Delta^S, no CRF-RNN). Variants: 'full' (the
default), 'paper_attention' (the walk seeded with relu f, b = gamma + alpha as printed),
'seg_target_crf' (train.seg_target = 'crf': the CRF-RNN's mean field of p^A in every step),
'seg_target_crf_s4' (the same on 4 x 4 block means), 'seg_loss_on_crf' (Delta^S on the CRF-RNN
output: its forward and backward in every step).
Prints the device card, then per variant the median step time over --steps steps on synthetic
training batches, images/s, the ratio to B1 and the time of the first call (compilation).
"""
import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from wsss_jax import data, trainer, warmup  # noqa: E402

VARIANTS = {
    'full': lambda c: None,
    'paper_attention': lambda c: c.model.attention.update(top_signal='scores',
                                                          feedforward_weight=1.0),
    'seg_target_crf': lambda c: c.train.update(seg_target='crf'),
    'seg_target_crf_s4': lambda c: c.train.update(seg_target='crf', seg_target_stride=4),
    'seg_loss_on_crf': lambda c: c.train.update(seg_loss_on='crf'),
}


def median_step(config, batches, steps):
  """(first call s, median step s) of the pmapped train_step on the given sharded batches. The
  first call compiles, so it is timed apart (trainer.replicate lays the state out as the step's
  outputs are, so the second call does not compile again)."""
  state = trainer.replicate(trainer.create_state(config, jax.random.key_data(jax.random.key(0))))
  rngs = trainer.step_rngs(jax.random.key_data(jax.random.key(1)), 0)
  step = jax.pmap(lambda s, b, r: trainer.train_step(s, b, r, config), axis_name=trainer.AXIS,
                  donate_argnums=(0,))
  t0 = time.perf_counter()
  state, aux = step(state, batches[0], rngs)
  jax.block_until_ready(aux)
  first_s = time.perf_counter() - t0
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, aux = step(state, batches[i % len(batches)], rngs)
    jax.block_until_ready(aux)
    times.append(time.perf_counter() - t0)
  return first_s, float(np.median(times))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--variants', default='full,seg_target_crf')
  args = ap.parse_args()
  names = args.variants.split(',')
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise SystemExit(f'error: unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}')
  config = default.get_config()
  n = config.train.batch_size
  ds = data.make_dataset(config.data, 'train')
  it = data.train_batches(ds, global_batch=n, seed=0)
  batches = [trainer.shard(next(it)) for _ in range(3)]
  dev = jax.devices()[0]
  print(f'card: {jax.local_device_count()} x {dev.device_kind} ({dev.platform}), '
        f'jax {jax.__version__}, {os.cpu_count()} CPU cores, batch {n}, '
        f'{config.data.image_size} px, backbone width {config.model.backbone.width}')
  first_s, b1 = median_step(warmup.warmup_config(config), batches, args.steps)
  print(f'{"B1 (Delta^C only)":>18}: {b1 * 1e3:6.0f} ms/step  {n / b1:6.1f} img/s  1.00x B1'
        f'  (first call {first_s:.0f} s)', flush=True)
  for name in names:
    cfg = copy.deepcopy(config)
    VARIANTS[name](cfg)
    first_s, t = median_step(cfg, batches, args.steps)
    print(f'{name:>18}: {t * 1e3:6.0f} ms/step  {n / t:6.1f} img/s  {t / b1:.2f}x B1'
          f'  (first call {first_s:.0f} s)', flush=True)


if __name__ == '__main__':
  main()
