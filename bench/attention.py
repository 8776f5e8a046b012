"""Attention-only segmentation on the synthetic benchmark, and the cost of attention.

`python bench/attention.py --workdir runs/default [--num 200]` loads a trained checkpoint, computes
p^A with the true tags + background for the val split with the workdir config's attention settings
(radius, eps, background mode, classes per image, QP budget; --radius/--eps override), and prints
the mIoU of argmax p^A (no CRF) for EB only (neighbors=False, baseline B4) and for the full
lateral term under both readings of Eq. (9); then the time of attention for one training batch
against the backbone's forward+backward (Delta^C only) on the same batch (median of repeats,
after compilation).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from wsss_jax import (
  attention,
  backbone,
  checkpointing,
  config_lib,
  data,
  losses,
  metrics,
  model,
  trainer,
  visualize,
  warmup,
)


def timed(fn, repeats=5):
  jax.block_until_ready(fn())
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--workdir', default='runs/default')
  ap.add_argument('--num', type=int, default=200)
  ap.add_argument('--radius', type=int, default=None)
  ap.add_argument('--eps', type=float, default=None)
  args = ap.parse_args()
  config = config_lib.load_config(args.workdir)
  a = config.model.attention
  args.radius = a.radius if args.radius is None else args.radius
  args.eps = a.eps if args.eps is None else args.eps
  settings = dict(radius=args.radius, eps=args.eps, background=a.background, bg_power=a.bg_power,
                  max_classes=a.max_classes or None, qp_iters=a.qp_iters, qp_tol=a.qp_tol)
  mngr = checkpointing.checkpoint_manager(args.workdir, config)
  state = checkpointing.restore_state(
      mngr, trainer.create_state(config, jax.random.key_data(jax.random.key(0))))
  params = state.params
  bcfg = model.backbone_config(config)
  k = config.data.num_classes + 1

  def p_attention(images, tags, **kw):
    x = model.preprocess(images)
    _, acts = backbone.apply(params['backbone'], x, cfg=bcfg, train=False, return_activations=True)
    return attention.attention_maps(params['backbone'], acts, bcfg, images,
                                    params.get('fcl', {}).get('w'),
                                    model.tags_with_background(tags), **{**settings, **kw})

  variants = {'EB only (B4)': dict(neighbors=False),
              'diffusion': dict(lateral='diffusion'),
              'paper_eq9': dict(lateral='paper_eq9', qp_iters=2000)}
  ds = data.make_dataset(config.data, 'val')
  print(f'{args.num} val images, {settings}, device {jax.devices()[0].device_kind}')
  for name, kw in variants.items():
    fn = jax.jit(lambda im, tg, kw=kw: jnp.argmax(p_attention(im, tg, **kw), -1))
    conf = np.zeros((k, k), np.int64)
    for batch in data.eval_batches(ds, 25, limit=args.num):
      pred = fn(jnp.asarray(batch['image']), jnp.asarray(batch['tags']))
      conf += np.asarray(metrics.confusion_matrix(jnp.asarray(batch['mask']), pred, k), np.int64)
    print(f'  attention-only mIoU, {name:14s}: {100 * metrics.mean_iou(conf):.1f}')

  # Picture: the first val image with its present classes, EB only vs full.
  ex = ds[0]
  im, tg = jnp.asarray(ex['image'][None]), jnp.asarray(ex['tags'][None])
  present = [0] + [c + 1 for c in np.nonzero(ex['tags'])[0]]
  eb = np.asarray(jax.jit(lambda a, b: p_attention(a, b, neighbors=False))(im, tg))[0][..., present]
  full = np.asarray(jax.jit(lambda a, b: p_attention(a, b))(im, tg))[0][..., present]
  out = f'{args.workdir}/attention_val0.png'
  visualize.save_attention_grid(out, ex['image'], eb, full, [ds.class_names[c] for c in present])
  print(f'  wrote {out} (rows: {", ".join(ds.class_names[c] for c in present)}; '
        'columns: image | EB | full)')

  batch = next(data.train_batches(data.make_dataset(config.data, 'train'),
                                  global_batch=config.train.batch_size, seed=0))
  images, tags = jnp.asarray(batch['image']), jnp.asarray(batch['tags'])
  b1 = warmup.warmup_config(config)  # Delta^C only: the backbone's forward+backward
  fb = jax.jit(jax.grad(lambda p: losses.training_loss(p, batch, jax.random.key(0), b1)[0]))
  t_fb = timed(lambda: fb(params))
  _, acts = jax.jit(lambda x: backbone.apply(params['backbone'], model.preprocess(x), cfg=bcfg,
                                             train=False, return_activations=True))(images)
  for name, kw in variants.items():
    # the activations come from the training step's own forward pass: time the top-down part only
    att = jax.jit(lambda im, tg, ac, kw=kw: attention.attention_maps(
        params['backbone'], ac, bcfg, im, params.get('fcl', {}).get('w'),
        model.tags_with_background(tg), **{**settings, **kw}))
    t_att = timed(lambda: att(images, tags, acts))
    print(f'  attention ({name}) {t_att * 1e3:.0f} ms vs backbone fwd+bwd {t_fb * 1e3:.0f} ms '
          f'on a batch of {images.shape[0]}: ratio {t_att / t_fb:.2f}')


if __name__ == '__main__':
  main()
