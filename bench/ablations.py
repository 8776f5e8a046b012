"""Tables 1 and 5 on the synthetic benchmark: `python bench/ablations.py [--seeds 3] [--jobs 2]`.

Trains every baseline of Table 1 (configs/ablation.py) and every aggregation head of Table 5
with `--seeds` seeds each (model init and data order; the dataset is fixed), plus the fully
supervised oracle, evaluates them on the val split and writes a markdown table (mean +- std
val mIoU, and the ratio to the fully supervised upper bound) to docs/results_synthetic.md.

Runs that would compute the same thing are shared rather than repeated:
* The Delta^C warm-up (the first train.warmup_steps steps) of full, B2 and B4 is B1's: they start
  from B1's checkpoint at that step (train.init_from; train.py checks that the warm-ups are the
  same computation, tests/test_train.py that the result is bit-identical to a run from scratch).
* While no loss reaches the CRF-RNN (model.cls_from = train.seg_loss_on = 'cnn', the default),
  B3, B5 and B6 train exactly the full method's network and differ only at inference, so they are
  the full run's checkpoint evaluated: B3 = B6 (CRF-RNN unary -log p^S; the rows coincide), B5
  with dense-CRF post-processing of p^S instead of the CRF-RNN (`eval.py --dense_crf
  --noattention`) and B5' with that of p^S p^A (`eval.py --dense_crf`). With another setting they
  are trained separately. Table 5's FCL row is the full method.
Runs go to `--jobs` worker processes (default: one per CPU core, each pinned to its core: 1.2x
the throughput of one process using both cores of this CPU, measured) sharing one persistent XLA
compilation cache. Finished runs (their eval file at the final step, with the current CRF-RNN
inference settings) are reused, so an interrupted sweep resumes where it stopped; a finished run
trained under other CRF-RNN kernels is re-evaluated with `eval.py --crf`. After a change that
acts only after the warm-up, `--warmups_from OLD_ROOT` starts B1 and its forks from the warm-ups
of an earlier sweep's B1 runs instead of training them again.
"""
from __future__ import annotations

import argparse
import dataclasses
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
          ('no_crf_rnn', 'B5 w/o CRF-RNN (dense-CRF post-processing of p^S)'),
          ('no_crf_rnn_fused', "B5' dense-CRF post-processing of p^S p^A (another reading)"),
          ('no_att_inference', 'B6 w/o att inference'), ('full', 'Full approach')]
TABLE5 = [('gmp', 'GMP'), ('gap', 'GAP'), ('lse', 'LSE'), ('full', 'FCL')]
# Trained configs, longest first within a seed; forks of B1's warm-up after B1.
TRAINED = ['no_att', 'lse', 'gmp', 'gap', 'fully_supervised', 'full', 'no_neighbor', 'no_seg_loss',
           'no_att_unary', 'no_crf_rnn', 'no_crf_rnn_fused']
FORKS = ('full', 'no_seg_loss', 'no_neighbor')
# name -> eval.py flags turning the full run into that baseline, when the training is the same.
FROM_FULL = {'no_att_unary': ('--noattention',), 'no_att_inference': ('--noattention',),
             'no_crf_rnn': ('--dense_crf', '--noattention'), 'no_crf_rnn_fused': ('--dense_crf',)}


def config_of(name):
  from configs import ablation, fully_supervised
  return fully_supervised.get_config() if name == 'fully_supervised' else ablation.get_config(name)


def stale_run(workdir, name, seed, overrides):
  """The first config value in which a finished run differs from what this sweep would train
  (None if it trains the same network: config_lib.training_signature), so a run trained under an
  older default is never reused."""
  import ast

  from wsss_jax import config_lib
  cfg = config_of(name)
  with cfg.unlocked():
    cfg.seed = seed
    for o in overrides:
      key, _, value = o.removeprefix('--config.').partition('=')
      try:
        config_lib.set_path(cfg, key, ast.literal_eval(value))
      except (ValueError, SyntaxError):
        config_lib.set_path(cfg, key, value)
  then = config_lib.training_signature(config_lib.load_config(workdir))
  return config_lib.first_difference(then, config_lib.training_signature(cfg))


def crf_settings(name):
  """The current config's CRF-RNN inference settings for a trained config (None without one)."""
  from wsss_jax import config_lib
  cfg = config_of(name)
  if not cfg.model.crf.enabled:
    return None
  return {k.rpartition('.')[2]: config_lib.get_path(cfg, k)
          for k in config_lib.declared('CRF_INFERENCE')}


def no_loss_reaches_crf():
  """Whether B3 / B5 / B6 train the full method's network (see the module docstring)."""
  from wsss_jax import config_lib
  return not config_lib.loss_reaches_crf(config_of('full'))


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


def eval_request(workdir, crf, flags=()):
  """(eval.py arguments, eval-file variant) for a finished run evaluated with `flags` and the
  current CRF-RNN inference settings `crf` (--crf when it was trained under other kernels: they
  act only at inference while no loss reaches the CRF-RNN, as in every config here)."""
  from wsss_jax import evaluation
  attention = False if '--noattention' in flags else None
  dense = True if '--dense_crf' in flags else None
  if dense:
    crf = None  # the CRF-RNN's output is not used
  extra, crf_pairs = [], ()
  config_path = os.path.join(workdir, 'config.json')
  if crf is not None and os.path.exists(config_path):
    with open(config_path) as f:
      trained = json.load(f)['model']['crf']
    if any(trained[k] != v for k, v in crf.items()):
      extra = ['--crf=' + ','.join(f'{k}={v:g}' for k, v in crf.items())]
      crf_pairs = tuple(crf.items())
  args = [sys.executable, 'eval.py', f'--workdir={workdir}', *flags, *extra]
  request = evaluation.EvalRequest(attention=attention, dense_crf=dense, crf=crf_pairs)
  return args, request.variant(), crf


@dataclasses.dataclass
class Task:
  key: str
  args: list
  deps: list
  workdir: str
  kind: str  # train | eval
  proc: subprocess.Popen | None = None
  start: float = 0.0
  seconds: float | None = None
  core: int | None = None
  log: object = None


def plan(args, steps):
  """The tasks still to run and, for every table row and seed, where its result will be."""
  tasks, rows = {}, {}
  shared = no_loss_reaches_crf()
  trained = [n for n in (args.only or TRAINED) if not (shared and n in FROM_FULL)]
  for seed in range(args.seeds):
    for name in trained:
      workdir = os.path.join(args.root, name, f'seed{seed}')
      crf = crf_settings(name)
      rows.setdefault(name, []).append((workdir, '', crf))
      finished = os.path.isdir(os.path.join(workdir, 'checkpoints', str(steps)))
      key = f'{name}/seed{seed}'
      if finished:
        if (diff := stale_run(workdir, name, seed, args.overrides)) is not None:
          sys.exit(f'error: {workdir} holds a finished run of another config: {diff}; move it '
                   'away or pass another --root')
        cmd, variant, crf_v = eval_request(workdir, crf)
        rows[name][-1] = (workdir, variant, crf_v)
        if result(workdir, variant, steps, crf_v) is None:
          tasks[key] = Task(key, cmd, [], workdir, 'eval')
        continue
      config = ('configs/fully_supervised.py' if name == 'fully_supervised'
                else f'configs/ablation.py:{name}')
      cmd = [sys.executable, 'train.py', f'--config={config}', f'--workdir={workdir}',
             f'--config.seed={seed}', '--config.train.progress_bar=False', *args.overrides]
      deps = []
      if args.warmups_from and (name in FORKS or name == 'no_att'):
        cmd.append('--config.train.init_from='
                   f'{os.path.join(args.warmups_from, "no_att", f"seed{seed}")}')
      elif name in FORKS and 'no_att' in trained:
        cmd.append(f'--config.train.init_from={os.path.join(args.root, "no_att", f"seed{seed}")}')
        deps = [f'no_att/seed{seed}']
      tasks[key] = Task(key, cmd, deps, workdir, 'train')
    if shared and 'full' in trained:
      workdir = os.path.join(args.root, 'full', f'seed{seed}')
      for name, flags in FROM_FULL.items():
        cmd, variant, crf_v = eval_request(workdir, crf_settings('full'), flags)
        rows.setdefault(name, []).append((workdir, variant, crf_v))
        key = f'{name}/seed{seed}(full {" ".join(flags)})'
        same = [t for t in tasks.values() if t.args == cmd]
        if not same and result(workdir, variant, steps, crf_v) is None:
          deps = [k for k in (f'full/seed{seed}',) if k in tasks]
          tasks[key] = Task(key, cmd, deps, workdir, 'eval')
  return tasks, rows


def run_all(tasks, jobs, env):
  """Run the tasks on `jobs` workers (each pinned to one core when jobs > 1), dependencies first."""
  cores = sorted(os.sched_getaffinity(0))
  free = list(cores[:jobs]) if jobs > 1 else [None]
  pending, running, done = list(tasks.values()), [], set()
  while pending or running:
    for t in list(pending):
      if not free:
        break
      if all(d in done for d in t.deps):
        core = free.pop(0)
        pin = (lambda c=core: os.sched_setaffinity(0, {c})) if core is not None else None
        os.makedirs(t.workdir, exist_ok=True)
        log = open(os.path.join(t.workdir, f'bench_{t.kind}.log'), 'w')
        t.start = time.time()
        t.proc = subprocess.Popen(t.args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=pin, text=True)
        t.core, t.log = core, log
        running.append(t)
        pending.remove(t)
        print(f'started {t.key} ({t.kind}{"" if core is None else f", core {core}"})', flush=True)
    time.sleep(1.0)
    for t in list(running):
      if t.proc.poll() is None:
        continue
      running.remove(t)
      t.log.close()
      free.append(t.core)
      t.seconds = time.time() - t.start
      if t.proc.returncode:
        for r in running:
          r.proc.terminate()
        with open(t.log.name) as f:
          tail = f.read()[-2000:]
        sys.exit(f'error: {" ".join(t.args)} failed (log {t.log.name}):\n{tail}')
      done.add(t.key)
      print(f'finished {t.key} in {t.seconds:.0f} s', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--jobs', type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument('--root', default=os.path.join(ROOT, 'runs', 'ablations'))
  parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'results_synthetic.md'))
  parser.add_argument('--only', nargs='*', default=None, help='subset of the trained configs')
  parser.add_argument('--dry_run', action='store_true', help='list the tasks and stop')
  parser.add_argument('--warmups_from', default='',
                      help="an earlier sweep's root: B1 and its forks start from the warm-up of "
                           'its no_att/seedS runs (train.py checks that it is the same '
                           'computation), to rerun only what acts after the warm-up')
  parser.add_argument('overrides', nargs='*', help='extra --config.* overrides for every run')
  args = parser.parse_args()
  steps = None
  for o in args.overrides:
    if o.startswith('--config.train.num_steps='):
      steps = int(o.split('=')[1])
  if steps is None:
    steps = config_of('full').train.num_steps
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(args.root, '.xla_cache'))
  tasks, rows = plan(args, steps)
  if args.dry_run:
    for t in tasks.values():
      print(f'{t.key} <- {t.deps}: {" ".join(t.args[1:])}')
    return
  t0 = time.time()
  run_all(tasks, args.jobs, env)
  if tasks:  # every invocation that ran something is recorded; the table lists them all
    with open(os.path.join(args.root, 'sweeps.jsonl'), 'a') as f:
      f.write(json.dumps({'date': time.strftime('%Y-%m-%d %H:%M'),
                          'wall_s': round(time.time() - t0, 1),
                          'jobs': args.jobs, 'cores': len(os.sched_getaffinity(0)),
                          'seeds': args.seeds, 'steps': steps,
                          'tasks': {t.key: [t.kind, round(t.seconds, 1)]
                                    for t in tasks.values()}}) + '\n')
  miou = {name: [result(w, v, steps, c) for w, v, c in rs] for name, rs in rows.items()}
  for name, values in miou.items():
    print(f'{name}: ' + ', '.join('-' if v is None else f'{100 * v:.1f}' for v in values))
  write_table(args, miou, steps)


def _fmt(values):
  v = [100 * x for x in values if x is not None]
  if not v:
    return 'not run', None
  mean = statistics.mean(v)
  std = statistics.stdev(v) if len(v) > 1 else 0.0
  return f'{mean:.1f} +- {std:.1f} (n={len(v)})', mean


def write_table(args, miou, steps):
  full_sup = _fmt(miou.get('fully_supervised', []))[1]
  lines = ['# Tables 1 and 5 on the synthetic benchmark', '',
           f'Produced by `python bench/ablations.py --seeds {args.seeds} --jobs {args.jobs}'
           f'{"".join(" " + o for o in args.overrides)}`'
           + f' ({steps} steps per run, val split, mIoU in %, mean +- std over seeds).', '',
           '## Table 1: baselines', '', '| method | val mIoU | / fully supervised |',
           '|---|---|---|']
  for name, label in TABLE1:
    text, mean = _fmt(miou.get(name, []))
    ratio = f'{mean / full_sup:.2f}' if mean is not None and full_sup else '-'
    lines.append(f'| {label} | {text} | {ratio} |')
  text, _ = _fmt(miou.get('fully_supervised', []))
  lines += [f'| Fully supervised (upper bound) | {text} | 1.00 |', '',
            '## Table 5: aggregation heads (full method)', '', '| head | val mIoU |', '|---|---|']
  for name, label in TABLE5:
    lines.append(f'| {label} | {_fmt(miou.get(name, []))[0]} |')
  if no_loss_reaches_crf():
    lines += ['', "B3, B5, B5' and B6 are the full run's checkpoints evaluated without the "
              'attention unary (B3 = B6), with dense-CRF post-processing of p^S (B5) and with that '
              "of p^S p^A (B5') instead of the CRF-RNN: no loss reaches the CRF-RNN, so their "
              "training is the full method's (bench/ablations.py)."]
  log = os.path.join(args.root, 'sweeps.jsonl')
  lines += ['', '## Run time', '', 'Every invocation of the script that ran tasks (from '
            f'{os.path.relpath(log, ROOT)}):', '']
  sweeps = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
  for sw in sweeps:
    kinds = [k for k, _ in sw['tasks'].values()]
    lines.append(f'- {sw["date"]}: {len(kinds)} tasks ({kinds.count("train")} trainings, '
                 f'{sw["seeds"]} seed(s), {sw["steps"]} steps) in **{sw["wall_s"] / 60:.1f} min** '
                 f'wall on {sw["jobs"]} worker(s), {sw["cores"]} CPU cores; sum of task times '
                 f'{sum(s for _, s in sw["tasks"].values()) / 60:.1f} min. Per task (s): '
                 + ', '.join(f'{k} {s:.0f}' for k, (_, s) in sw['tasks'].items()))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  if os.path.exists(args.out):  # hand-written diagnoses below the tables are kept
    with open(args.out) as f:
      old = f.read()
    if '\n## Diagnoses' in old:
      lines += ['', old[old.index('\n## Diagnoses') + 1:].rstrip('\n')]
  tmp = args.out + '.tmp'
  with open(tmp, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(tmp, args.out)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
