"""Evaluate a train.py workdir: `python eval.py --workdir=runs/default [--split=val] [--step=N]`.

Prints the per-class IoU table (layout of the paper's Table 2), writes
eval_<split>.json and examples_<split>.png into the workdir.
"""
import sys

from absl import app, flags, logging

from wsss_jax import cli, train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/default', 'A workdir written by train.py.')
flags.DEFINE_string('split', None, 'Split to evaluate (default: the config\'s eval.split).')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    train_lib.evaluate_workdir(FLAGS.workdir, FLAGS.split, FLAGS.step)
  except train_lib.ConfigError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
