"""Train wsss-jax: `python train.py [--config=configs/default.py] [--workdir=runs/default]`.

Overrides: `--config.train.num_steps=100`. Rerunning the same command resumes
from the latest checkpoint in the workdir. SIGTERM / Ctrl-C save a checkpoint at the
current step and exit with status 75 (rerun to resume). Multi-process runs: see the
README ("Multi-host and preemption") and `--coordinator_address/--num_processes/--process_id`.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from wsss_jax import cli, config_lib, data, trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/default.py', 'Training config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', 'runs/default', 'Directory for checkpoints, metrics and results.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  cli.initialize_distributed()
  try:
    result = trainer.train_and_evaluate(cli.config_from_flag('config'), FLAGS.workdir)
  except (config_lib.RunError, data.DataError) as e:
    sys.exit(f'error: {e}')
  if result.get('preempted'):
    sys.exit(trainer.PREEMPTED_EXIT_CODE)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
