"""Tables 1 and 5 on the synthetic benchmark: `python bench/ablations.py [--seeds 3]`.

Trains every baseline of Table 1 (configs/ablation.py) and every aggregation head of Table 5
with `--seeds` seeds each (model init and data order; the dataset is fixed), plus the fully
supervised oracle, evaluates them on the val split and writes a markdown table (mean +- std
val mIoU, and the ratio to the fully supervised upper bound) to docs/results_synthetic.md.
B6 is the full method's checkpoints evaluated without attention; Table 5's FCL row is the full
method. Finished runs (their eval_val.json at the final step, with the current CRF-RNN inference
settings) are reused, so an interrupted sweep resumes where it stopped; a finished run trained
under other CRF-RNN kernels is re-evaluated with `eval.py --crf`. Every run is a subprocess.
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
sys.path.insert(0, ROOT)
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


def result(workdir, variant, steps, crf=None):
  """The val mIoU of a finished run's eval file, if it was evaluated at `steps` with the CRF-RNN
  inference settings `crf` (None: no CRF-RNN, anything goes)."""
  path = os.path.join(workdir, f'eval_val{"_" + variant if variant else ""}.json')
  if os.path.exists(path):
    with open(path) as f:
      r = json.load(f)
    if r.get('step') == steps and (crf is None or r.get('model_crf') == crf):
      return r['miou']
  return None


def crf_settings(name):
  """The current config's CRF-RNN inference settings for a trained config (None without one)."""
  from configs import ablation, fully_supervised
  from wsss_jax import train_lib
  cfg = fully_supervised.get_config() if name == 'fully_supervised' else ablation.get_config(name)
  if not cfg.model.crf.enabled:
    return None
  return {k: cfg.model.crf[k] for k in train_lib.CRF_INFERENCE_KEYS}


def evaluate(workdir, steps, crf, *flags):
  """mIoU of a run with the current CRF-RNN inference settings `crf`: its saved eval if that
  used them; else, for a finished run, eval.py (with --crf when the run was trained under other
  CRF-RNN kernels: they act only at inference while no loss reaches the CRF, as in every config
  here); None for an unfinished run."""
  from wsss_jax import train_lib
  overrides = {'attention': False} if '--noattention' in flags else {}
  if (r := result(workdir, train_lib.variant_name(overrides, None), steps, crf)) is not None:
    return r
  if not os.path.isdir(os.path.join(workdir, 'checkpoints', str(steps))):
    return None
  extra = []
  if crf is not None:
    with open(os.path.join(workdir, 'config.json')) as f:
      trained = json.load(f)['model']['crf']
    if any(trained[k] != v for k, v in crf.items()):
      extra = ['--crf=' + ','.join(f'{k}={v:g}' for k, v in crf.items())]
      overrides.update({f'crf.{k}': v for k, v in crf.items()})
  run([sys.executable, 'eval.py', f'--workdir={workdir}', *flags, *extra])
  return result(workdir, train_lib.variant_name(overrides, None), steps, crf)


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
      crf = crf_settings(name)
      if evaluate(workdir, steps, crf) is None:
        seconds.setdefault(name, []).append(run(
            [sys.executable, 'train.py', f'--config={config}', f'--workdir={workdir}',
             f'--config.seed={seed}', '--config.train.progress_bar=False'] + args.overrides))
      miou.setdefault(name, []).append(evaluate(workdir, steps, crf))
      print(f'{name} seed {seed}: {100 * miou[name][-1]:.1f}', flush=True)
      if name == 'full':
        miou.setdefault('no_att_inference', []).append(evaluate(workdir, steps, crf, '--noattention'))
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
