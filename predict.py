"""Predict on your own images with a trained workdir:

  python predict.py --workdir=runs/default --out=predictions photos/ more/*.jpg [--attention]
      [--tags=cat,dog] [--step=N]

Writes, under --out only, <name>.png (VOC palette label map at the image's size),
<name>_overlay.png and with --attention <name>_attention_<class>.png (p^A heat maps) per image.
Unreadable files are reported and skipped.
"""
import sys

from absl import app, flags, logging

from wsss_jax import cli, config_lib, data, predict

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/default', 'A workdir written by train.py.')
flags.DEFINE_string('out', 'predictions',
                    'Folder for the outputs (created; nothing else is written).')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
flags.DEFINE_list('tags', None, 'Classes to segment (default: predicted from the image scores).')
flags.DEFINE_bool('attention', False, "Also write each class's attention heat map.")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('give image files, globs or folders to predict on')
  logging.set_verbosity(logging.WARNING)
  try:
    result = predict.predict(FLAGS.workdir, argv[1:], FLAGS.out, step=FLAGS.step,
                             tags=FLAGS.tags, attention=FLAGS.attention)
  except (config_lib.RunError, data.DataError) as e:
    sys.exit(f'error: {e}')
  print(f'wrote predictions for {len(result["written"])} image(s) to {FLAGS.out}; skipped '
        f'{len(result["skipped"])} unreadable file(s)')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
