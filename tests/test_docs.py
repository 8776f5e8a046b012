"""The README's layout table lists every module of the package, and only existing paths."""
import os
import re

import helpers


def test_readme_layout_matches_the_tree():
  text = open(os.path.join(helpers.ROOT, 'README.md')).read()
  layout = text[text.index('## Layout'):]
  listed = set(re.findall(r'`(wsss_jax/[\w/]+\.py)`', layout))
  modules = {os.path.relpath(os.path.join(d, f), helpers.ROOT)
             for d, _, files in os.walk(os.path.join(helpers.ROOT, 'wsss_jax'))
             for f in files if f.endswith('.py') and f != '__init__.py'}
  assert modules - listed == set(), 'modules missing from README Layout'
  assert listed - modules == set(), 'README Layout lists files that do not exist'
