"""Predictions on the PASCAL VOC 2012 test split in the layout of the evaluation server."""
from __future__ import annotations

import os
import tarfile
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from wsss_jax import visualize
from wsss_jax.data.augment import DataError


def write_server_results(workdir: str, suffix: str, predictions: Mapping[str, np.ndarray], *,
                         names: Sequence[str], missing: Sequence[str] = (),
                         partial: bool = False) -> str:
  """Write label maps as VOC palette PNGs in the layout the PASCAL VOC evaluation server
  expects (results/VOC2012/Segmentation/comp5_test_cls/<id>.png, comp5: trained on VOC data
  only) under workdir/server_<suffix>/, and pack them into workdir/server_<suffix>.tar.gz
  (written to a temporary name, then renamed). Every process writes its own images; process
  0 packs the PNGs of `names` (the ids all processes predicted: PNGs an earlier run left in the
  folder are not packed). Returns the archive's path.

  `missing`: ids the devkit's test list names that have no prediction (images skipped when the
  dataset was built). The server rejects such an archive, so none is written (a DataError naming
  them) unless `partial`, which writes server_<suffix>_PARTIAL.tar.gz for inspection."""
  root = os.path.join(workdir, f'server_{suffix}')
  out = os.path.join(root, 'results', 'VOC2012', 'Segmentation', 'comp5_test_cls')
  os.makedirs(out, exist_ok=True)
  for name, label in predictions.items():
    visualize.save_label_png(os.path.join(out, f'{name}.png'), label)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('server results written')
  if missing and not partial:
    shown = ', '.join(missing[:10]) + (', ...' if len(missing) > 10 else '')
    raise DataError(f'{len(missing)} test images listed by the devkit have no prediction '
                    f'({shown}: skipped when the dataset was built); the VOC server rejects an '
                    f'incomplete archive, so none was written (the PNGs are in {out}). Repair '
                    'those files and rebuild (python -m wsss_jax.data.voc --rebuild ...), or pass '
                    '--partial_archive for an archive to inspect')
  archive = os.path.join(workdir, f'server_{suffix}{"_PARTIAL" if missing else ""}.tar.gz')
  if jax.process_index() == 0:
    tmp = f'{archive}.tmp{os.getpid()}'
    rel = os.path.relpath(out, root)
    with tarfile.open(tmp, 'w:gz') as tar:
      for name in sorted(names):
        tar.add(os.path.join(out, f'{name}.png'), arcname=os.path.join(rel, f'{name}.png'))
    os.replace(tmp, archive)
    if missing:
      print(f'wrote {len(names)} PNGs to {out} and {archive}: PARTIAL, '
            f'{len(missing)} listed test images missing (the VOC server rejects it)')
    else:
      print(f'wrote {len(names)} PNGs to {out} and {archive} (upload it to the VOC server)')
  return archive
