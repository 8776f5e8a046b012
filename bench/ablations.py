"""Every table of docs/RESULTS.md on the synthetic benchmark: `python bench/ablations.py`.

Protocol. Every setting of the default method was chosen on benchmark world 0 (data.seed = 0);
the tables are reported on held-out worlds 1, 2 and 3 (one training seed each) beside world 0,
on the val and the test split. Within a world, the class threshold of inference is chosen on
the tune split's tags (eval.tune_split), never on a reported split.

Rows: Table 1 (configs/ablation.py: B1-B6 and the full method), Table 5 (the aggregation heads),
the fully supervised bound, the method as printed (configs/paper.py, with Adam and with SGD), and
the departure table: the default with one departure from the paper reverted at a time
(configs/ablation.py:printed_<name>, walk_dropout), reported as the change of val and test mIoU
against the default, paired by world, on the held-out worlds only.

Runs that compute the same thing are shared: a run whose Delta^C warm-up equals an earlier run's
(warmup.warmup_signature) starts from that run's checkpoint at the warm-up's end (train.init_from:
bit-identical to training it), and a row whose training equals a trained row's
(config_lib.training_signature) is that row's checkpoint evaluated with an inference variant
(eval.py flags: B3 = B6, B5, B5', the CRF-RNN kernel row). Runs go to `--jobs` worker processes,
each pinned to one core, sharing one persistent XLA cache; finished runs and evaluations are
reused, so an interrupted sweep resumes where it stopped. `--worlds` and `--only` choose what
runs; the tables always cover every row and world that --root holds. The numbers go to
docs/results.json, and bench/results_render.py writes docs/RESULTS.md and README's results table
from them (for another `--json`, a RESULTS.md beside it, leaving the project's docs alone).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

# Rows of every world, longest trainings and warm-up sources first.
TABLE_ROWS = ['no_att', 'lse', 'fully_supervised', 'full', 'no_seg_loss', 'no_neighbor', 'gmp',
              'gap', 'no_att_unary', 'no_crf_rnn', 'no_crf_rnn_fused', 'no_att_inference', 'paper',
              'paper_sgd']
# Rows of the held-out worlds only (the departure table).
DEPARTURE_ROWS = ['printed_sgd', 'printed_no_warmup', 'printed_fcl_form', 'printed_seed',
                  'printed_feedforward', 'printed_background', 'printed_lateral',
                  'printed_seg_loss_on_crf', 'printed_cls_from_crf', 'printed_crf_kernel',
                  'walk_dropout']
CONFIG_FILES = {'fully_supervised': 'configs/fully_supervised.py', 'paper': 'configs/paper.py',
                'paper_sgd': 'configs/paper.py:sgd'}
SPLITS = ('val', 'test')
WORLDS = [0, 1, 2, 3]  # world 0 chose the defaults; 1-3 are held out
DEPARTURE_WORLDS = [1, 2, 3]


def config_of(name, world, seed):
  from configs import ablation, fully_supervised, paper
  if name == 'fully_supervised':
    config = fully_supervised.get_config()
  elif name in ('paper', 'paper_sgd'):
    config = paper.get_config('sgd' if name == 'paper_sgd' else 'adam')
  else:
    config = ablation.get_config(name)
  config.data.seed, config.seed = world, seed
  return config


def _replaces_crf_rnn(config):
  """Whether the dense-CRF post-processing replaces the CRF-RNN's output at inference, no loss
  reaching the CRF-RNN in training: the CRF-RNN (or its absence) then changes nothing."""
  from wsss_jax import config_lib
  return bool(config.eval.dense_crf.enabled) and not config_lib.loss_reaches_crf(config)


def same_training(trained, row) -> bool:
  """Whether the row trains the trained run's network (B5 lacks the CRF-RNN's parameters)."""
  from wsss_jax import config_lib
  a, b = config_lib.training_signature(trained), config_lib.training_signature(row)
  if _replaces_crf_rnn(row) and not config_lib.loss_reaches_crf(trained):
    a['model'].pop('crf'), b['model'].pop('crf')
  return config_lib.first_difference(a, b) is None


def eval_flags(trained, row):
  """eval.py flags that evaluate a run trained as `trained` as the row `row` (same training), or
  None when their difference is not an inference setting eval.py offers."""
  from wsss_jax import config_lib
  a, b = config_lib.as_dict(trained), config_lib.as_dict(row)
  crf_keys = config_lib.declared('CRF_INFERENCE')
  flags, crf = [], []
  for key in config_lib.leaf_paths(a):
    va, vb = config_lib.get_path(a, key), config_lib.get_path(b, key)
    if va == vb or (key.startswith('model.crf.') and _replaces_crf_rnn(row)):
      continue
    if key == 'eval.attention':
      flags.append('--attention' if vb else '--noattention')
    elif key == 'eval.dense_crf.enabled':
      flags.append('--dense_crf' if vb else '--nodense_crf')
    elif key in crf_keys:
      crf.append(f'{key.rpartition(".")[2]}={float(vb):g}')
    else:
      return None
  return flags + ([f'--crf={",".join(crf)}'] if crf else [])


def variant_of(flags):
  """The eval file suffix eval.py gives these flags (evaluation.EvalRequest.variant)."""
  from wsss_jax import evaluation
  kw = {}
  for f in flags:
    if f in ('--attention', '--noattention'):
      kw['attention'] = f == '--attention'
    elif f in ('--dense_crf', '--nodense_crf'):
      kw['dense_crf'] = f == '--dense_crf'
    elif f.startswith('--crf='):
      kw['crf'] = evaluation.EvalRequest.parse_crf(f[len('--crf='):].split(','))
  return evaluation.EvalRequest(**kw).variant()


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


def read_eval(workdir, split, variant, steps):
  """An eval file's contents if it was written at the final step, else None."""
  path = os.path.join(workdir, f'eval_{split}{"_" + variant if variant else ""}.json')
  if os.path.exists(path):
    with open(path) as f:
      r = json.load(f)
    if r.get('step') == steps:
      return r
  return None


def plan(args):
  """(tasks still to run, {row: {world: (workdir, variant)}})."""
  from wsss_jax import config_lib, warmup
  tasks, where = {}, {}
  for world in args.worlds:
    names = TABLE_ROWS + (DEPARTURE_ROWS if world in args.departure_worlds else [])
    # warm-up sources first: the other long runs, then the rows that fork from them
    first = ['no_att', 'lse', 'fully_supervised', 'printed_sgd', 'printed_no_warmup']
    names = [n for n in first if n in names] + [n for n in names if n not in first]
    trained = []  # (name, config, workdir) of the runs this world trains
    for name in names:
      config = config_of(name, world, args.seed)
      workdir = os.path.join(args.root, name, f'world{world}')
      finished = os.path.isdir(os.path.join(workdir, 'checkpoints', str(config.train.num_steps)))
      if args.only and name not in args.only:
        # a row left out still serves as a warm-up source or a shared training once it has run
        if finished:
          trained.append((name, config, workdir))
        continue
      sig = config_lib.training_signature(config)
      same = next((t for t in trained if same_training(t[1], config)), None)
      if same is not None:
        flags = eval_flags(same[1], config)
        if flags is not None:
          where.setdefault(name, {})[world] = (same[2], variant_of(flags))
          for split in SPLITS:
            _eval_task(tasks, same[2], split, flags, world, same[0], config.train.num_steps)
          continue
      where.setdefault(name, {})[world] = (workdir, '')
      trained.append((name, config, workdir))
      steps = config.train.num_steps
      if finished:
        then = config_lib.training_signature(config_lib.load_config(workdir))
        if (diff := config_lib.first_difference(then, sig)) is not None:
          sys.exit(f'error: {workdir} holds a finished run of another config: {diff}; move it '
                   'away or pass another --root')
      else:
        spec = CONFIG_FILES.get(name, f'configs/ablation.py:{name}')
        cmd = [sys.executable, 'train.py', f'--config={spec}', f'--workdir={workdir}',
               f'--config.data.seed={world}', f'--config.seed={args.seed}',
               '--config.train.progress_bar=False']
        deps = []
        if config.train.warmup_steps > 0:
          wsig = warmup.warmup_signature(config)
          source = next((t for t in trained[:-1] if t[1].train.warmup_steps > 0 and
                         config_lib.first_difference(warmup.warmup_signature(t[1]), wsig) is None),
                        None)
          if source is not None:
            cmd.append(f'--config.train.init_from={source[2]}')
            deps = [k for k in (f'train {source[0]} w{world}',) if k in tasks]
        key = f'train {name} w{world}'
        tasks[key] = Task(key, cmd, deps, workdir, 'train')
      _eval_task(tasks, workdir, 'test', [], world, name, steps)
      if read_eval(workdir, 'val', '', steps) is None and f'train {name} w{world}' not in tasks:
        _eval_task(tasks, workdir, 'val', [], world, name, steps)
  return tasks, where


def _eval_task(tasks, workdir, split, flags, world, trained_name, steps):
  key = f'eval {split} {trained_name}{"".join(" " + f for f in flags)} w{world}'
  if key in tasks or read_eval(workdir, split, variant_of(flags), steps) is not None:
    return
  cmd = [sys.executable, 'eval.py', f'--workdir={workdir}', f'--split={split}', *flags]
  deps = [k for k in (f'train {trained_name} w{world}',) if k in tasks]
  tasks[key] = Task(key, cmd, deps, workdir, 'eval')


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
        name = t.key.replace(' ', '_').replace('=', '').replace(',', '').replace('--', '')
        log = open(os.path.join(t.workdir, f'bench_{name}.log'), 'w')
        t.start = time.time()
        t.proc = subprocess.Popen(t.args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=pin, text=True)
        t.core, t.log = core, log
        running.append(t)
        pending.remove(t)
        print(f'started {t.key}{"" if core is None else f" (core {core})"}', flush=True)
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


def collect(where, args):
  """{row: {world: {split: {'miou', 'qp_converged', ...}}}} from the eval files."""
  out = {}
  for name, worlds in where.items():
    for world, (workdir, variant) in worlds.items():
      steps = config_of(name, world, args.seed).train.num_steps
      for split in SPLITS:
        r = read_eval(workdir, split, variant, steps)
        if r is not None:
          keep = {k: r.get(k) for k in ('miou', 'miou_cnn', 'miou_attention', 'qp_converged',
                                        'class_threshold', 'tag_map')}
          out.setdefault(name, {}).setdefault(str(world), {})[split] = keep
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--worlds', type=int, nargs='*', default=WORLDS)
  parser.add_argument('--departure_worlds', type=int, nargs='*', default=DEPARTURE_WORLDS)
  parser.add_argument('--seed', type=int, default=0, help='training seed of every run')
  parser.add_argument('--jobs', type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument('--root', default=os.path.join(ROOT, 'runs', 'results'))
  parser.add_argument('--json', default=os.path.join(ROOT, 'docs', 'results.json'))
  parser.add_argument('--only', nargs='*', default=None, help='a subset of the rows')
  parser.add_argument('--dry_run', action='store_true', help='list the tasks and stop')
  parser.add_argument('--collect', action='store_true',
                      help='run nothing: write --json and the tables from the runs --root holds '
                           '(rows and worlds not run yet read "not run")')
  args = parser.parse_args()
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(args.root, '.xla_cache'))
  # the tables cover every row and world that --root holds, not only the subset run now; planned
  # first, so that a finished run of another config anywhere in them stops the sweep before it runs
  report = argparse.Namespace(**{**vars(args), 'only': None,
                                 'worlds': sorted(set(WORLDS) | set(args.worlds)),
                                 'departure_worlds': sorted(set(DEPARTURE_WORLDS) |
                                                            set(args.departure_worlds))})
  _, where = plan(report)
  tasks = {} if args.collect else plan(args)[0]
  if args.dry_run:
    for t in tasks.values():
      print(f'{t.key} <- {t.deps}: {" ".join(t.args[1:])}')
    return
  t0 = time.time()
  run_all(tasks, args.jobs, env)
  os.makedirs(args.root, exist_ok=True)
  log = os.path.join(args.root, 'sweeps.jsonl')
  if tasks:  # every invocation that ran something is recorded
    with open(log, 'a') as f:
      f.write(json.dumps({'date': time.strftime('%Y-%m-%d %H:%M'),
                          'wall_s': round(time.time() - t0, 1), 'jobs': args.jobs,
                          'cores': len(os.sched_getaffinity(0)),
                          'tasks': {t.key: [t.kind, round(t.seconds, 1)]
                                    for t in tasks.values()}}) + '\n')
  import results_render  # bench/results_render.py
  sweeps = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
  results = {'worlds': report.worlds, 'departure_worlds': report.departure_worlds,
             'seed': args.seed, 'rows': collect(where, report), 'sweeps': sweeps}
  if os.path.exists(args.json):  # bench/second_stage.py's section is its own
    with open(args.json) as f:
      results.update({k: v for k, v in json.load(f).items() if k == 'second_stage'})
  results_render.write(results, args.json)


if __name__ == '__main__':
  main()
