"""Step time and memory of the VOC configs on this machine (configs/voc12_ours.py, or with
--printed configs/voc12_paper.py).

  python bench/voc_step.py [--per_device_batch=2] [--steps=3] [--width=1.0] [--printed]

Random 321x321 crops with 1-3 tags stand in for VOC (the cost does not depend on the pixels), so
it runs without the dataset; the attention walks --max_tags classes plus background per image.
Prints the device card, compile time, the median step time of the full method (Delta^C +
lambda Delta^S, attention, CRF-RNN) and of the backbone-only step (B1), XLA's memory estimate
per device, and the projected time of the paper's 10000 steps at batch 20.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import voc12_ours, voc12_paper  # noqa: E402
from wsss_jax import config_lib, trainer, warmup  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--per_device_batch', type=int, default=2)
  ap.add_argument('--steps', type=int, default=3)
  ap.add_argument('--width', type=float, default=1.0, help='backbone width (1.0 = VGG-16)')
  ap.add_argument('--max_tags', type=int, default=3, help='tags per image the attention walks')
  ap.add_argument('--printed', action='store_true', help='the printed method (voc12_paper.py)')
  args = ap.parse_args()
  config = (voc12_paper if args.printed else voc12_ours).get_config()
  config = config_lib.with_class_bound(config, args.max_tags)
  config.model.backbone.width = args.width
  n_dev = jax.local_device_count()
  b = args.per_device_batch
  rng = np.random.default_rng(0)
  size = config.data.crop_size
  tags = np.zeros((n_dev, b, 20), np.uint8)
  for d in range(n_dev):
    for i in range(b):
      tags[d, i, rng.choice(20, rng.integers(1, 4), replace=False)] = 1
  batch = {'image': rng.integers(0, 256, (n_dev, b, size, size, 3), dtype=np.uint8), 'tags': tags,
           'mask': np.zeros((n_dev, b, size, size), np.int32)}
  dev = jax.devices()[0]
  print(f'card: {n_dev} x {dev.device_kind} ({dev.platform}), jax {jax.__version__}, '
        f'per-device batch {b}, {size}x{size}, backbone width {args.width}')
  state = trainer.replicate(trainer.create_state(config, jax.random.key_data(jax.random.key(0))))
  rngs = jax.random.key_data(jax.random.split(jax.random.key(1), n_dev))
  results = {}
  for name, cfg in (('full method', config), ('backbone only (B1)', warmup.warmup_config(config))):
    step = jax.pmap(lambda s, x, r, cfg=cfg: trainer.train_step(s, x, r, cfg),
                    axis_name=trainer.AXIS)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, rngs).compile()
    t_compile = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    s = state
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      s, aux = step(s, batch, rngs)
      jax.block_until_ready(aux)
      times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    results[name] = t
    gib = lambda x: (x or 0) / 2**30
    mem_line = (
        'n/a' if mem is None else
        f'{gib(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes):.2f}'
        f' GiB (temp {gib(mem.temp_size_in_bytes):.2f}, '
        f'args {gib(mem.argument_size_in_bytes):.2f})')
    print(f'{name:>20}: compile {t_compile:.0f} s, step {t:.2f} s ({n_dev * b / t:.2f} img/s), '
          f'XLA memory per device {mem_line}')
  t = results['full method']
  steps_per_paper = config.train.num_steps * config.train.batch_size / (n_dev * b)
  print(f'ratio full / backbone-only step: {t / results["backbone only (B1)"]:.2f}x')
  print('projected paper run (10000 steps x 20 images) on this card: '
        f'{steps_per_paper * t / 3600:.1f} h')


if __name__ == '__main__':
  main()
