"""Test session setup, before jax is imported: two host CPU devices (for the pmap tests), one
persistent XLA compilation cache for the session, shared with the train.py/eval.py
subprocesses the tests start (they compile the same tiny programs again and again), and
XLA's cheap compile mode (compile time dominates these tiny programs; -25% suite time)."""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2').strip()
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='wsss-jax-test-xla-cache-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
