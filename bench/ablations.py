"""Tables 1 and 5 on the synthetic benchmark: `python bench/ablations.py [--seeds 3]`.

Trains every baseline of Table 1 (configs/ablation.py) and every aggregation head of Table 5
with `--seeds` seeds each (model init and data order; the dataset is fixed), plus the fully
supervised oracle, evaluates them on the val split and writes a markdown table (mean +- std
val mIoU, and the ratio to the fully supervised upper bound) to docs/results_synthetic.md.
B6 is the full method's checkpoints evaluated without attention; Table 5's FCL row is the full
method. Finished runs (their eval_val.json at the final step) are reused, so an interrupted
sweep resumes where it stopped. Every run is `python train.py ...` in a subprocess.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE1 = [('no_att', 'B1 w/o att'), ('no_seg_loss', 'B2 w/o seg loss'),
          ('no_att_unary', 'B3 w/o att unary'), ('no_neighbor', 'B4 w/o neighbor'),
          ('no_crf_rnn', 'B5 w/o CRF-RNN (dense-CRF post-processing)'),
          ('no_att_inference', 'B6 w/o att inference'), ('full', 'Full approach')]
TABLE5 = [('gmp', 'GMP'), ('gap', 'GAP'), ('lse', 'LSE'), ('full', 'FCL')]
TRAINED = ['full', 'no_att', 'no_seg_loss', 'no_att_unary', 'no_neighbor', 'no_crf_rnn',
           'gmp', 'gap', 'lse', 'fully_supervised']


def run(cmd):
  t = time.time()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f'error: {" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
  return time.time() - t


def result(workdir, variant, steps):
  path = os.path.join(workdir, f'eval_val{"_" + variant if variant else ""}.json')
  if os.path.exists(path):
    with open(path) as f:
      r = json.load(f)
    if r.get('step') == steps:
      return r['miou']
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--root', default=os.path.join(ROOT, 'runs', 'ablations'))
  parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'results_synthetic.md'))
  parser.add_argument('--only', nargs='*', default=None, help='subset of the trained configs')
  parser.add_argument('overrides', nargs='*', help='extra --config.* overrides for every run')
  args = parser.parse_args()
  steps = None
  for o in args.overrides:
    if o.startswith('--config.train.num_steps='):
      steps = int(o.split('=')[1])
  if steps is None:
    sys.path.insert(0, ROOT)
    from configs import default
    steps = default.get_config().train.num_steps
  miou, seconds = {}, {}
  for name in args.only or TRAINED:
    for seed in range(args.seeds):
      workdir = os.path.join(args.root, name, f'seed{seed}')
      config = ('configs/fully_supervised.py' if name == 'fully_supervised'
                else f'configs/ablation.py:{name}')
      if result(workdir, '', steps) is None:
        seconds.setdefault(name, []).append(run(
            [sys.executable, 'train.py', f'--config={config}', f'--workdir={workdir}',
             f'--config.seed={seed}', '--config.train.progress_bar=False'] + args.overrides))
      miou.setdefault(name, []).append(result(workdir, '', steps))
      print(f'{name} seed {seed}: {100 * miou[name][-1]:.1f}', flush=True)
      if name == 'full':
        if result(workdir, 'noatt', steps) is None:
          run([sys.executable, 'eval.py', f'--workdir={workdir}', '--noattention'])
        miou.setdefault('no_att_inference', []).append(result(workdir, 'noatt', steps))
  write_table(args, miou, seconds, steps)


def _fmt(values):
  v = [100 * x for x in values if x is not None]
  if not v:
    return 'not run', None
  mean = statistics.mean(v)
  std = statistics.stdev(v) if len(v) > 1 else 0.0
  return f'{mean:.1f} +- {std:.1f} (n={len(v)})', mean


def write_table(args, miou, seconds, steps):
  full_sup = _fmt(miou.get('fully_supervised', []))[1]
  lines = ['# Tables 1 and 5 on the synthetic benchmark', '',
           f'Produced by `python bench/ablations.py --seeds {args.seeds} {" ".join(args.overrides)}`'
           f' ({steps} steps per run, val split, mIoU in %, mean +- std over seeds).', '',
           '## Table 1: baselines', '', '| method | val mIoU | / fully supervised |', '|---|---|---|']
  for name, label in TABLE1:
    text, mean = _fmt(miou.get(name, []))
    ratio = f'{mean / full_sup:.2f}' if mean is not None and full_sup else '-'
    lines.append(f'| {label} | {text} | {ratio} |')
  text, _ = _fmt(miou.get('fully_supervised', []))
  lines += [f'| Fully supervised (upper bound) | {text} | 1.00 |', '',
            '## Table 5: aggregation heads (full method)', '', '| head | val mIoU |', '|---|---|']
  for name, label in TABLE5:
    lines.append(f'| {label} | {_fmt(miou.get(name, []))[0]} |')
  lines += ['', '## Wall time per training run (this sweep, seconds)', '']
  for name, ts in seconds.items():
    lines.append(f'- {name}: {", ".join(f"{t:.0f}" for t in ts)}')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  tmp = args.out + '.tmp'
  with open(tmp, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(tmp, args.out)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
