"""Test session setup: two host CPU devices (for the pmap tests) before jax is imported."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2').strip()
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
