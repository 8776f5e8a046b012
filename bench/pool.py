"""The backbone's max pool against XLA's own: `python bench/pool.py [--batch=32] [--width=0.25]`.

`backbone.max_pool` takes its forward as the maximum of the 9 strided views of the padded input
and its gradient from a hand-written VJP (the first maximum of each window in scan order, as
`reduce_window`'s VJP routes it, checked in tests/test_backbone.py). The reference is
`jax.lax.reduce_window(max)`, whose VJP XLA lowers to `select_and_scatter`. Shapes: the five
max pools of the default config's backbone on 64 px images (pool1-3 stride 2, pool4-5 stride 1).
Prints the device card, then per pool the median time of forward and forward+backward for both
and the ratio reference / ours; then the backbone's whole forward+backward with each pool.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from wsss_jax import backbone  # noqa: E402


def xla_max_pool(x, kernel, stride):
  pad = (kernel - 1) // 2
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1),
                               (1, stride, stride, 1), ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def median_ms(fn, *args, reps=15):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--width', type=float, default=0.25)
  args = ap.parse_args()
  dev = jax.devices()[0]
  print(f'card: {jax.local_device_count()} x {dev.device_kind} ({dev.platform}), '
        f'jax {jax.__version__}, {os.cpu_count()} CPU cores, batch {args.batch}, '
        f'width {args.width}')
  cfg = backbone.BackboneConfig(num_classes=7, width=args.width, depth=(1, 1, 2, 2, 2),
                                fc_features=1024, fc6_dilation=2)
  params = backbone.init_params(jax.random.key(0), cfg)
  x = jax.random.uniform(jax.random.key(1), (args.batch, 64, 64, 3))
  _, acts = backbone.apply(params, x, cfg=cfg, train=False, return_activations=True)
  layers = backbone.layer_specs(cfg)
  names = [l.name for l in layers]
  for layer in (l for l in layers if l.kind == 'maxpool'):
    a = jax.nn.relu(acts[names[names.index(layer.name) - 1]])
    row = []
    for pool in (xla_max_pool, backbone.max_pool):
      f = lambda z, pool=pool: jnp.sum(pool(z, layer.kernel, layer.stride) ** 2)
      row += [median_ms(jax.jit(f), a), median_ms(jax.jit(jax.grad(f)), a)]
    print(f'{layer.name} {tuple(a.shape)} stride {layer.stride}: '
          f'forward {row[0]:.1f} -> {row[2]:.1f} ms, '
          f'forward+backward {row[1]:.1f} -> {row[3]:.1f} ms ({row[1] / row[3]:.1f}x)', flush=True)
  whole = []
  for pool in (xla_max_pool, backbone.max_pool):
    original, backbone.max_pool = backbone.max_pool, pool
    try:
      g = jax.jit(jax.grad(lambda p: jnp.sum(backbone.apply(p, x, cfg=cfg, train=False) ** 2)))
      jax.block_until_ready(g(params))  # traced here, with this pool
    finally:
      backbone.max_pool = original
    whole.append(median_ms(g, params, reps=10))
  print(f'backbone forward+backward: {whole[0]:.0f} ms with reduce_window, {whole[1]:.0f} ms with '
        f'backbone.max_pool ({whole[0] / whole[1]:.2f}x)')


if __name__ == '__main__':
  main()
