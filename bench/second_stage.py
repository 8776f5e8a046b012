"""The field's use of a weakly supervised model: pseudo-labels for a fully supervised second stage.
`python bench/second_stage.py` after bench/ablations.py.

For each held-out world, the default method's run of the results sweep
(runs/results/full/world<w>) labels the synthetic train split from its ground-truth tags
(pseudo_labels.py); the fully supervised configuration (configs/fully_supervised.py) is trained on
those labels (data.train_masks) and evaluated on val and test. Written into docs/results.json
('second_stage') and rendered by bench/results_render.py: the pseudo-labels' mIoU on train, and
the second stage's val / test mIoU beside the first stage's and the fully supervised bound's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))


def run(args, log):
  with open(log, 'w') as f:
    res = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
  if res.returncode:
    sys.exit(f'error: {" ".join(args)} failed (log {log})')


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--worlds', type=int, nargs='*', default=[1, 2, 3])
  ap.add_argument('--root', default=os.path.join(ROOT, 'runs', 'results'))
  ap.add_argument('--json', default=os.path.join(ROOT, 'docs', 'results.json'))
  ap.add_argument('--confidence', type=float, default=0.0)
  args = ap.parse_args()
  env_cache = os.path.join(args.root, '.xla_cache')
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', env_cache)
  out = {}
  for w in args.worlds:
    first = os.path.join(args.root, 'full', f'world{w}')
    base = os.path.join(args.root, 'second_stage', f'world{w}')
    pseudo, run_dir = os.path.join(base, 'pseudo'), os.path.join(base, 'run')
    os.makedirs(base, exist_ok=True)
    run(['pseudo_labels.py', f'--workdir={first}', f'--out={pseudo}',
         f'--confidence={args.confidence}'], os.path.join(base, 'pseudo_labels.log'))
    report = json.load(open(os.path.join(pseudo, 'pseudo_labels_train.json')))
    if not os.path.exists(os.path.join(run_dir, 'eval_val.json')):
      run(['train.py', '--config=configs/fully_supervised.py', f'--workdir={run_dir}',
           f'--config.data.seed={w}', '--config.seed=0', '--config.train.progress_bar=False',
           f'--config.data.train_masks={pseudo}'], os.path.join(base, 'train.log'))
    if not os.path.exists(os.path.join(run_dir, 'eval_test.json')):
      run(['eval.py', f'--workdir={run_dir}', '--split=test'], os.path.join(base, 'eval_test.log'))
    out[str(w)] = {'pseudo_miou': report['miou'], 'ignored_fraction': report['ignored_fraction'],
                   'val': json.load(open(os.path.join(run_dir, 'eval_val.json')))['miou'],
                   'test': json.load(open(os.path.join(run_dir, 'eval_test.json')))['miou']}
    print(f'world {w}: pseudo-labels {100 * out[str(w)]["pseudo_miou"]:.1f} mIoU on train; second '
          f'stage val {100 * out[str(w)]["val"]:.1f}, test {100 * out[str(w)]["test"]:.1f}')
  results = json.load(open(args.json))
  results['second_stage'] = {'worlds': out, 'confidence': args.confidence}
  import results_render  # bench/results_render.py
  results_render.write(results, args.json)


if __name__ == '__main__':
  main()
