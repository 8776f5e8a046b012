"""Pseudo-labels of a split from a trained workdir, for a fully supervised second stage:

  python pseudo_labels.py --workdir=runs/default --out=runs/pseudo [--split=train]
      [--confidence=0.9] [--num=N] [--step=N]
  python train.py --config=configs/fully_supervised.py --workdir=runs/second_stage \\
      --config.data.train_masks=runs/pseudo

Writes <out>/SegmentationClassAug/<id>.png (VOC palette, original size) from the model's
segmentation given each image's ground-truth tags, and <out>/pseudo_labels_<split>.json with the
mIoU against the split's masks where they exist. Rerunning resumes (finished files are kept).
"""
import sys

from absl import app, flags, logging

from wsss_jax import cli, config_lib, data, evaluation, pseudo_labels

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/default', 'A workdir written by train.py.')
flags.DEFINE_string('out', None, 'Output folder (default: <workdir>/pseudo_labels).')
flags.DEFINE_string('split', 'train', 'Split to label (its tags are used).')
flags.DEFINE_float('confidence', 0.0, 'Pixels whose top probability over the tagged classes is '
                   'below this are 255 (ignored by the second stage); 0 labels every pixel.')
flags.DEFINE_integer('num', None, 'Only the first N images of the split.')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  out = FLAGS.out or f'{FLAGS.workdir.rstrip("/")}/pseudo_labels'
  try:
    r = pseudo_labels.write_pseudo_labels(FLAGS.workdir, out, split=FLAGS.split, step=FLAGS.step,
                                          confidence=FLAGS.confidence, limit=FLAGS.num)
  except (config_lib.RunError, data.DataError) as e:
    sys.exit(f'error: {e}')
  print(f'{r["written"]} pseudo-labels written, {r["kept"]} kept from an earlier run, in '
        f'{out}/SegmentationClassAug ({100 * r["ignored_fraction"]:.1f}% of pixels ignored)')
  print(f'pseudo-label mIoU on {FLAGS.split}: {evaluation.percent(r["miou"])}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
