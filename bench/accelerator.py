"""Every speed benchmark on this machine's default device, in one call: `python bench/accelerator.py`.

  python bench/accelerator.py [--out=DIR] [--only=step_time,voc_step,crf,train,qp] [--budget_s=540]

For a GPU/TPU host: runs, each in its own process under its own time limit, and in this order,
  step_time  bench/step_time.py: the default synthetic config's step, full method vs B1 (Delta^C)
  voc_step   bench/voc_step.py: the paper's VOC step (VGG-16, 321 px) at batch 20 on one device
  crf        bench/crf.py: dense_crf on the device vs pydensecrf2 on this host's CPU
  train      python train.py on the default config (the README's main command) in a new temporary
             workdir: wall time and val mIoU
  qp         bench/qp.py: the QP solver on the device vs OSQP on this host's CPU
writes each one's whole output to DIR/<name>.log and ends with the card and the headline lines of
every log, so the tail of the output is the result. A benchmark whose reference library is missing
(pydensecrf2, osqp) still runs its own part and says so; one that fails or runs out of time is
reported as such and the next one starts.
"""  # noqa: E501
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (command after the interpreter, time limit s, regex of the lines kept for the summary)
BENCHES = {
    'step_time': (['bench/step_time.py', '--steps=20', '--variants=full,seg_target_crf'], 120,
                  r'ms/step'),
    'voc_step': (['bench/voc_step.py', '--per_device_batch=20', '--steps=5'], 180,
                 r'compile|ratio|projected'),
    'crf': (['bench/crf.py', '--repeats=10'], 120,
            r'^(astronaut|chelsea|coffee|rocket) |median ratio|^ *(161|321|641) '
            r'|^batch|pydensecrf2 missing'),
    'train': (['train.py', '--config.train.progress_bar=False'], 180, r'mIoU'),
    'qp': (['bench/qp.py', '--x64', '--repeats=3'], 150, r'ours fista|osqp|ratio|cells'),
}


_CARD = """
import os, platform, jax
versions = []
for mod in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'numpy'):
  try:
    versions.append(f'{mod} {__import__(mod, fromlist=["_"]).__version__}')
  except (ImportError, AttributeError):
    versions.append(f'{mod} ?')
dev = jax.devices()[0]
print(f'card: {jax.local_device_count()} x {dev.device_kind} ({dev.platform}), '
      f'{os.cpu_count()} host CPU cores, Python {platform.python_version()}; ' + ', '.join(versions))
"""  # noqa: E501


def card(env) -> str:
  """The device and package versions, read in a child process: this process never holds the
  device (JAX would keep most of a GPU's memory preallocated while the benchmarks run)."""
  res = subprocess.run([sys.executable, '-c', _CARD], env=env, capture_output=True, text=True)
  lines = res.stdout.strip().splitlines()
  return (lines[-1] if res.returncode == 0 and lines
          else f'card: unknown ({res.stderr.strip()[-300:]})')


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--out', default='', help='directory for the logs (default: a new temporary one)')
  ap.add_argument('--only', default=','.join(BENCHES), help='comma-separated subset, in this order')
  ap.add_argument('--budget_s', type=float, default=0,
                  help='stop starting benchmarks once this many seconds have passed (0: no limit); '
                       'a started one is cut to what is left')
  args = ap.parse_args()
  names = [n for n in args.only.split(',') if n]
  unknown = [n for n in names if n not in BENCHES]
  if unknown:
    raise SystemExit(f'error: unknown benchmark(s) {unknown}; choose from {list(BENCHES)}')
  out = args.out or tempfile.mkdtemp(prefix='wsss_bench_')
  os.makedirs(out, exist_ok=True)
  env = dict(os.environ,
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
             PYTHONUNBUFFERED='1')
  head = card(env)
  print(head, flush=True)
  start = time.perf_counter()
  summary = []
  for name in names:
    argv, limit, keep = BENCHES[name]
    if args.budget_s:
      left = args.budget_s - (time.perf_counter() - start)
      if left < 30:
        summary.append(f'[{name}] not started: {left:.0f} s of the budget left')
        continue
      limit = min(limit, left)
    argv = list(argv)
    if name == 'train':  # a fresh workdir, so that the run is timed from scratch
      argv.append(f'--workdir={tempfile.mkdtemp(prefix="wsss_default_")}')
    print(f'--- {name}: {" ".join(argv)} (limit {limit:.0f} s)', flush=True)
    t0 = time.perf_counter()
    log_path = os.path.join(out, f'{name}.log')
    with open(log_path, 'w') as log:
      try:
        rc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, timeout=limit).returncode
      except subprocess.TimeoutExpired:
        rc = 'timeout'
    wall = time.perf_counter() - t0
    with open(log_path) as f:
      lines = f.read().splitlines()
    block = [f'[{name}] {"ok" if rc == 0 else f"FAILED ({rc})"}, wall {wall:.0f} s']
    block += ['  ' + l for l in lines if re.search(keep, l)]
    if rc != 0:
      block += ['  | ' + l for l in lines[-8:] if not re.search(keep, l)]
    print('\n'.join(block), flush=True)
    summary += block
  print('\n=== summary ===\n' + head + '\n' + '\n'.join(summary))
  print(f'logs in {out}')


if __name__ == '__main__':
  main()
