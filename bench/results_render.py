"""docs/RESULTS.md's tables and README's results table, rendered from docs/results.json (written by
bench/ablations.py). tests/test_docs.py renders them again and compares, so neither file can
disagree with the measurements.

  python bench/results_render.py   # re-render both from docs/results.json
"""
from __future__ import annotations

import json
import os
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_JSON = os.path.join(ROOT, 'docs', 'results.json')
RESULTS_MD = os.path.join(ROOT, 'docs', 'RESULTS.md')
README = os.path.join(ROOT, 'README.md')
BEGIN, END = '<!-- results:begin -->', '<!-- results:end -->'

# (row, label, the paper's PASCAL VOC val mIoU: Tables 1 and 5)
TABLE1 = [('no_att', 'B1 w/o att', 30.5), ('no_seg_loss', 'B2 w/o seg loss', 47.5),
          ('no_att_unary', 'B3 w/o att unary', 50.1), ('no_neighbor', 'B4 w/o neighbor', 51.3),
          ('no_crf_rnn', 'B5 w/o CRF-RNN (dense CRF on p^S)', 49.4),
          ('no_crf_rnn_fused', "B5' dense CRF on p^S p^A (another reading)", None),
          ('no_att_inference', 'B6 w/o att inference', 50.4),
          ('full', 'Full approach (ours: configs/default.py)', 52.8)]
TABLE5 = [('gmp', 'GMP', 48.3), ('gap', 'GAP', 47.4), ('lse', 'LSE', 50.8),
          ('full', 'FCL (ours)', 52.8)]
OTHER = [('paper', 'the method as printed (configs/paper.py, Adam)', 52.8),
         ('paper_sgd', 'the method as printed, with SGD', 52.8),
         ('fully_supervised', 'fully supervised (upper bound)', None)]
DEPARTURES = [
    ('printed_fcl_form', 'FCL: a weighted sum of the scores (Sec. 3)'),
    ('printed_seed', 'walk seeded with every class score (Eqs. 5-6)'),
    ('printed_feedforward', 'b = gamma + alpha (Eq. 7)'),
    ('printed_background', 'background walked like any class (Eq. 4)'),
    ('printed_lateral', 'lateral term D of Eq. (9), not the diffusion'),
    ('printed_seg_loss_on_crf', 'Delta^S through the CRF-RNN, mu learned (Secs. 1, 6)'),
    ('printed_cls_from_crf', 'Delta^C through the CRF-RNN (Sec. 1)'),
    ('printed_crf_kernel', 'CRF-RNN kernel of Eq. (8): sigma_z 10, sigma_r 30, weight 1'),
    ('printed_sgd', 'SGD (Sec. 7) instead of Adam (stand-in)'),
    ('printed_no_warmup', 'no Delta^C warm-up (stand-in for ImageNet init)'),
    ('walk_dropout', 'training walk on the dropout-masked network'),
]


def _values(rows, name, worlds, split, key='miou'):
  per = rows.get(name, {})
  return [per.get(str(w), {}).get(split, {}).get(key) for w in worlds]


def _mean_std(values):
  v = [100 * x for x in values if x is not None]
  if not v:
    return None, None, 0
  return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def _cell(values, n_expected):
  mean, std, n = _mean_std(values)
  if mean is None:
    return 'not run'
  return f'{mean:.1f} +- {std:.1f}' + ('' if n == n_expected else f' (n={n})')


def _row_table(results, entries, held, zero):
  rows = results['rows']
  bound = _mean_std(_values(rows, 'fully_supervised', held, 'val'))[0]
  out = ['| row | val, worlds ' + '-'.join(map(str, (held[0], held[-1]))) + ' | test, worlds '
         + '-'.join(map(str, (held[0], held[-1]))) + ' | val / fully supervised | val, world 0 | '
         'paper (VOC val) |', '|---|---|---|---|---|---|']
  for name, label, paper in entries:
    val = _values(rows, name, held, 'val')
    mean = _mean_std(val)[0]
    ratio = f'{mean / bound:.2f}' if mean is not None and bound else '-'
    w0 = _values(rows, name, zero, 'val')
    w0_cell = f'{100 * w0[0]:.1f}' if w0 and w0[0] is not None else '-'
    out.append(f'| {label} | {_cell(val, len(held))} | '
               f'{_cell(_values(rows, name, held, "test"), len(held))} | {ratio} | {w0_cell} | '
               f'{"-" if paper is None else paper} |')
  return out


def _departure_table(results):
  rows, worlds = results['rows'], results['departure_worlds']
  out = ['| departure reverted to the paper | val change | test change | val per world |',
         '|---|---|---|---|']
  for name, label in DEPARTURES:
    cells = []
    for split in ('val', 'test'):
      base, row = _values(rows, 'full', worlds, split), _values(rows, name, worlds, split)
      diffs = [r - b if r is not None and b is not None else None for r, b in zip(row, base)]
      mean, std, n = _mean_std(diffs)
      cells.append('not run' if mean is None else f'{mean:+.1f} +- {std:.1f}'
                   + ('' if n == len(worlds) else f' (n={n})'))
    per = ', '.join('-' if v is None else f'{100 * v:.1f}'
                    for v in _values(rows, name, worlds, 'val'))
    out.append(f'| {label} | {cells[0]} | {cells[1]} | {per} |')
  return out


def _second_stage(results):
  stage = results.get('second_stage')
  if not stage:
    return []
  worlds = sorted(stage['worlds'], key=int)
  per = [stage['worlds'][w] for w in worlds]
  rows = results['rows']
  cell = lambda vals: _cell(vals, len(worlds))  # noqa: E731
  ints = [int(w) for w in worlds]
  return ['## Pseudo-labels and a second stage', '',
          "The default method's run labels the train split from its ground-truth tags "
          '(`pseudo_labels.py`, confidence ' + f'{stage["confidence"]:g}' + '); the fully '
          'supervised configuration trained on those labels is the second stage '
          '(`python bench/second_stage.py`), worlds ' + ', '.join(worlds) + '.', '',
          '| | train (pseudo-labels) | val | test |', '|---|---|---|---|',
          '| pseudo-labels of the default method | '
          f'{cell([p["pseudo_miou"] for p in per])} | - | - |',
          f'| first stage (the default method) | - | {cell(_values(rows, "full", ints, "val"))} | '
          f'{cell(_values(rows, "full", ints, "test"))} |',
          f'| second stage (fully supervised on the pseudo-labels) | - | '
          f'{cell([p["val"] for p in per])} | {cell([p["test"] for p in per])} |',
          f'| fully supervised on the true masks | - | '
          f'{cell(_values(rows, "fully_supervised", ints, "val"))} | '
          f'{cell(_values(rows, "fully_supervised", ints, "test"))} |', '']


def results_md(results) -> str:
  """docs/RESULTS.md up to its hand-written diagnoses."""
  held = [w for w in results['worlds'] if w != 0]
  zero = [0] if 0 in results['worlds'] else []
  rows = results['rows']
  conv = _values(rows, 'paper', held + zero, 'val', 'qp_converged')
  conv_txt = ', '.join('-' if c is None else f'{100 * c:.2f}%' for c in conv)
  lines = [
      '# Results on the synthetic benchmark', '',
      'Generated by `python bench/ablations.py` from docs/results.json (bench/results_render.py '
      "renders this file and README's table; tests/test_docs.py checks both); the sections after "
      '"Diagnoses" are written by hand. mIoU in %, mean +- std over the held-out worlds.', '',
      '## Protocol', '',
      'Every setting of the default method (configs/default.py) was chosen on benchmark world 0 '
      '(`data.seed = 0`). The numbers below are measured on worlds '
      + ', '.join(map(str, held)) + ' (other class definitions, images and splits; one training '
      'seed each), on the val and the test split, with world 0 beside them. Within a world the '
      "class threshold of inference is chosen on the tune split's tags, never on a reported "
      'split. The fully supervised bound is the same CNN trained on the masks.', '',
      '## Tables 1 and 5, the bound and the method as printed', '']
  lines += _row_table(results, TABLE1, held, zero) + ['']
  lines += _row_table(results, TABLE5, held, zero) + ['']
  lines += _row_table(results, OTHER, held, zero) + ['']
  lines += ["QP convergence of the printed method's attention (share of its Eq. (9) QPs that met "
            'model.attention.qp_tol at its budget, val, worlds ' + ', '.join(
                map(str, held + zero)) + f'): {conv_txt}.', '',
            '## The departure table', '',
            'The default with one departure reverted to the printed value (configs/paper.py: '
            'DEPARTURES, STAND_INS; configs/ablation.py:printed_<name>), as the change of mIoU '
            'against the default, paired by world, worlds ' + ', '.join(
                map(str, results['departure_worlds'])) + '.', '']
  lines += _departure_table(results) + ['']
  lines += _second_stage(results)
  lines += ['## Run time', '']
  for sw in results.get('sweeps', []):
    kinds = [k for k, _ in sw['tasks'].values()]
    lines.append(f'- {sw["date"]}: {len(kinds)} tasks ({kinds.count("train")} trainings) in '
                 f'{sw["wall_s"] / 60:.1f} min wall on {sw["jobs"]} worker(s), '
                 f'{sw["cores"]} CPU cores')
  return '\n'.join(lines) + '\n'


def readme_block(results) -> str:
  """README's results table (between its results markers)."""
  held = [w for w in results['worlds'] if w != 0]
  zero = [0] if 0 in results['worlds'] else []
  entries = TABLE1 + [e for e in TABLE5 if e[0] != 'full'] + OTHER
  return '\n'.join([BEGIN] + _row_table(results, entries, held, zero) + [END])


def _replace_block(text, block):
  if BEGIN not in text:
    return text
  a, b = text.index(BEGIN), text.index(END) + len(END)
  return text[:a] + block + text[b:]


def write(results, json_path) -> None:
  """Write `json_path` and the tables. For the project's own docs/results.json: docs/RESULTS.md
  (keeping its diagnoses) and README's table; for any other path: a RESULTS.md beside it, so
  that a sweep into another folder leaves the project's docs as they are."""
  with open(json_path, 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  own = os.path.abspath(json_path) == RESULTS_JSON
  md = RESULTS_MD if own else os.path.join(os.path.dirname(os.path.abspath(json_path)),
                                           'RESULTS.md')
  diagnoses = ''
  if os.path.exists(md):
    old = open(md).read()
    if '\n## Diagnoses' in old:
      diagnoses = old[old.index('\n## Diagnoses'):]
  with open(md, 'w') as f:
    f.write(results_md(results) + diagnoses)
  if own:
    text = open(README).read()
    with open(README, 'w') as f:
      f.write(_replace_block(text, readme_block(results)))
  print(f'wrote {json_path} and {md}' + (" and README.md's results table" if own else ''))


if __name__ == '__main__':
  write(json.load(open(RESULTS_JSON)), RESULTS_JSON)
