"""Command-line plumbing shared by train.py and eval.py: flag errors as one line, not a
traceback, and joining a multi-process (multi-host) run."""
from __future__ import annotations

import os
import sys

from absl import flags

flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  'Join a multi-process run with jax.distributed.initialize(): auto = when the '
                  'flags below, JAX_COORDINATOR_ADDRESS, or a multi-task SLURM / Open MPI / '
                  'multi-host TPU environment say so; on = always (JAX detects the cluster); '
                  'off = never.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process runs).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
flags.DEFINE_integer('process_id', None, "This process's index in [0, num_processes).")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser for `app.run` that reports a bad flag or config override in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')
  except Exception as e:  # config_flags raises plain KeyError/AttributeError/... for bad overrides
    key = str(e).strip('"\'')
    culprit = [a for a in argv[1:] if a.startswith('--config') and key and key in a]
    where = culprit[0] if culprit else ' '.join(argv[1:])
    sys.exit(f'error: cannot apply {where}: unknown config key or bad value '
             f'({type(e).__name__}: {e})')


def config_from_flag(flag_name: str = 'config'):
  """The parsed ConfigDict of a config_flags flag; a file that fails to load is one error line."""
  try:
    config = getattr(flags.FLAGS, flag_name)
    config.keys()  # a config that failed to load is a placeholder that raises on first use
    return config
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    sys.exit(f'error: cannot load the --{flag_name} file: {lines[-1] if lines else e}')


def _cluster_env() -> bool:
  """Whether the environment describes a multi-process launch that JAX can auto-detect."""
  env = os.environ
  count = lambda key: int(env.get(key, '1') or 1)
  return bool(env.get('JAX_COORDINATOR_ADDRESS') or count('SLURM_NTASKS') > 1
              or count('OMPI_COMM_WORLD_SIZE') > 1 or ',' in env.get('TPU_WORKER_HOSTNAMES', '')
              or env.get('MEGASCALE_COORDINATOR_ADDRESS'))


def initialize_distributed() -> bool:
  """Call jax.distributed.initialize() as --distributed says (before any other JAX call).

  Explicit --coordinator_address/--num_processes/--process_id win over what JAX
  detects. On CPU, cross-process collectives go through gloo. Returns whether
  this process joined a multi-process run.
  """
  f = flags.FLAGS
  explicit = (f.coordinator_address, f.num_processes, f.process_id)
  if f.distributed == 'off' or (f.distributed == 'auto' and all(v is None for v in explicit)
                                and not _cluster_env()):
    return False
  if f.num_processes is not None and f.num_processes < 1:
    sys.exit(f'error: --num_processes must be >= 1, got {f.num_processes}')
  if (f.process_id is not None and f.num_processes is not None
      and not 0 <= f.process_id < f.num_processes):
    sys.exit(f'error: --process_id must be in [0, {f.num_processes}), got {f.process_id}')
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes, process_id=f.process_id)
  except (ValueError, RuntimeError) as e:
    sys.exit(f'error: jax.distributed.initialize() failed ({type(e).__name__}: {e}); pass '
             '--coordinator_address, --num_processes and --process_id, or --distributed=off')
  return jax.process_count() > 1
