"""Predictions on the PASCAL VOC 2012 test split in the layout of the evaluation server."""
from __future__ import annotations

import os
import tarfile
from typing import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from wsss_jax import visualize


def write_server_results(workdir: str, suffix: str, predictions: Mapping[str, np.ndarray]) -> str:
  """Write label maps as VOC palette PNGs in the layout the PASCAL VOC evaluation server
  expects (results/VOC2012/Segmentation/comp5_test_cls/<id>.png, comp5: trained on VOC data
  only) under workdir/server_<suffix>/, and pack them into workdir/server_<suffix>.tar.gz
  (written to a temporary name, then renamed). Every process writes its own images; process
  0 packs them. Returns the archive's path."""
  root = os.path.join(workdir, f'server_{suffix}')
  out = os.path.join(root, 'results', 'VOC2012', 'Segmentation', 'comp5_test_cls')
  os.makedirs(out, exist_ok=True)
  for name, label in predictions.items():
    visualize.save_label_png(os.path.join(out, f'{name}.png'), label)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('server results written')
  archive = os.path.join(workdir, f'server_{suffix}.tar.gz')
  if jax.process_index() == 0:
    tmp = f'{archive}.tmp{os.getpid()}'
    with tarfile.open(tmp, 'w:gz') as tar:
      tar.add(os.path.join(root, 'results'), arcname='results')
    os.replace(tmp, archive)
    print(f'wrote {len(os.listdir(out))} PNGs to {out} and {archive} (upload it to the VOC server)')
  return archive
