"""Evaluation time of the default config (the full method at inference: attention, CRF-RNN;
and with dense-CRF post-processing, B5'): `python bench/eval_time.py [--batches=6]`.

Times the pmapped eval step (`evaluation.eval_step`: classes, attention, CRF-RNN, confusion
matrices) on the default config's val images with freshly initialised parameters (the time
does not depend on training), median over --batches batches after compilation, and prints
ms/batch and images/s per variant.
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
from wsss_jax import data, evaluation, parallel, state  # noqa: E402

VARIANTS = {
    'default': lambda c: None,
    'dense_crf': lambda c: c.eval.dense_crf.update(enabled=True),
}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batches', type=int, default=6)
  ap.add_argument('--variants', default='default,dense_crf')
  args = ap.parse_args()
  config = default.get_config()
  ds = data.make_dataset(config.data, 'val')
  stream = data.eval_batches(ds, config.eval.batch_size, process_index=0, process_count=1,
                             limit=config.eval.batch_size * args.batches)
  batches = [parallel.shard({k: b[k] for k in ('image', 'tags', 'mask')}) for b in stream]
  params = state.create_state(config, jax.random.key_data(jax.random.key(0))).params
  rparams = parallel.replicate(params)
  dev = jax.devices()[0]
  print(f'card: {jax.local_device_count()} x {dev.device_kind} ({dev.platform}), '
        f'jax {jax.__version__}, {os.cpu_count()} CPU cores, eval batch {config.eval.batch_size}, '
        f'{config.data.image_size} px, {len(batches)} batches')
  for name in args.variants.split(','):
    cfg = copy.deepcopy(config)
    VARIANTS[name](cfg)
    step = jax.pmap(lambda p, b, cfg=cfg: evaluation.eval_step(p, b, cfg),
                    axis_name=evaluation.AXIS)
    t0 = time.perf_counter()
    jax.block_until_ready(step(rparams, batches[0]))
    first = time.perf_counter() - t0
    times = []
    for b in batches:
      t0 = time.perf_counter()
      jax.block_until_ready(step(rparams, b))
      times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    print(f'{name:>10}: {t * 1e3:7.1f} ms/batch  {config.eval.batch_size / t:6.1f} img/s'
          f'  (first call {first:.0f} s)', flush=True)


if __name__ == '__main__':
  main()
