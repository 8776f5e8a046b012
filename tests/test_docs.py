"""The docs agree with the tree and with the measurements: README's layout table lists every
module of the package and only existing paths; README's results table and docs/RESULTS.md are
what bench/results_render.py renders from docs/results.json; no doc speaks of the project's
development rounds or of an issue tracker the reader cannot see."""
import json
import os
import re
import sys

import helpers

sys.path.insert(0, os.path.join(helpers.ROOT, 'bench'))
import results_render  # noqa: E402


def _read(*path):
  with open(os.path.join(helpers.ROOT, *path)) as f:
    return f.read()


def test_readme_layout_matches_the_tree():
  text = _read('README.md')
  layout = text[text.index('## Layout'):]
  listed = set(re.findall(r'`(wsss_jax/[\w/]+\.py)`', layout))
  modules = {os.path.relpath(os.path.join(d, f), helpers.ROOT)
             for d, _, files in os.walk(os.path.join(helpers.ROOT, 'wsss_jax'))
             for f in files if f.endswith('.py') and f != '__init__.py'}
  assert modules - listed == set(), 'modules missing from README Layout'
  assert listed - modules == set(), 'README Layout lists files that do not exist'


def test_results_tables_are_rendered_from_the_measurements():
  results = json.loads(_read('docs', 'results.json'))
  readme = _read('README.md')
  begin, end = readme.index(results_render.BEGIN), readme.index(results_render.END)
  assert readme[begin:end + len(results_render.END)] == results_render.readme_block(results)
  generated = results_render.results_md(results)
  assert _read('docs', 'RESULTS.md').startswith(generated)


def test_docs_speak_of_the_project_only():
  pattern = re.compile(r'\bsessions? \d|\bissue (#?\d|target|limit)', re.IGNORECASE)
  paths = ['README.md'] + [os.path.join('docs', f) for f in os.listdir(
      os.path.join(helpers.ROOT, 'docs')) if f.endswith('.md')]
  found = [f'{p}:{i + 1}' for p in paths for i, line in enumerate(_read(p).splitlines())
           if pattern.search(line)]
  assert found == []
