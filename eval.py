"""Evaluate a train.py workdir: `python eval.py --workdir=runs/default [--split=val] [--step=N]`.

Inference variants: --noattention (baseline B6: no attention in the CRF unary), --dense_crf
(dense-CRF post-processing), --scales=0.75,1,1.25 and --flip (multi-scale / flip averaging),
--class_threshold=T, --crf=iters=10,sigma_z=28.3 (CRF-RNN inference settings). Prints the
per-class IoU table (layout of the paper's Table 2), writes eval_<split>[_<variant>].json and
examples_<split>[_<variant>].png into the workdir (one file per variant, so no variant
overwrites another's results).
"""
import sys

from absl import app, flags, logging

from wsss_jax import cli, config_lib, data, evaluation

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/default', 'A workdir written by train.py.')
flags.DEFINE_string('split', None, "Split to evaluate (default: the config's eval.split).")
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
flags.DEFINE_bool('attention', None, 'Attention in the CRF unary at inference (default: config).')
flags.DEFINE_bool('dense_crf', None, 'Dense-CRF post-processing (default: config).')
flags.DEFINE_list('scales', None,
                  'Scales whose p^S is averaged, e.g. 0.75,1,1.25 (default: config).')
flags.DEFINE_bool('flip', None, 'Also average horizontal flips (default: config).')
flags.DEFINE_float('class_threshold', None, 'Sigmoid score above which a class is predicted.')
flags.DEFINE_list('crf', None, 'CRF-RNN inference settings, e.g. iters=10,sigma_z=28.3 (keys: '
                  'attention_unary (0 or 1), iters, sigma_z, sigma_r, bilateral_weight, '
                  'spatial_weight, spatial_sxy).')
flags.DEFINE_bool('partial_archive', False, 'VOC test split: write server_test_PARTIAL.tar.gz even '
                  'when test images listed by the devkit are missing from the dataset.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  cli.initialize_distributed()
  try:
    request = evaluation.EvalRequest(
        attention=FLAGS.attention, dense_crf=FLAGS.dense_crf,
        scales=tuple(float(x) for x in FLAGS.scales) if FLAGS.scales else None, flip=FLAGS.flip,
        class_threshold=FLAGS.class_threshold, crf=evaluation.EvalRequest.parse_crf(FLAGS.crf),
        partial_archive=FLAGS.partial_archive)
    evaluation.evaluate_workdir(FLAGS.workdir, FLAGS.split, FLAGS.step, request)
  except (config_lib.RunError, data.DataError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
