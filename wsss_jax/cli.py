"""Command-line plumbing shared by train.py and eval.py: flag errors as one line, not a traceback."""
from __future__ import annotations

import sys

from absl import flags


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
    sys.exit(f'error: cannot apply {where}: unknown config key or bad value ({type(e).__name__}: {e})')


def config_from_flag(flag_name: str = 'config'):
  """The parsed ConfigDict of a config_flags flag; a file that fails to load is one error line."""
  try:
    config = getattr(flags.FLAGS, flag_name)
    config.keys()  # a config that failed to load is a placeholder that raises on first use
    return config
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    sys.exit(f'error: cannot load the --{flag_name} file: {lines[-1] if lines else e}')
