"""Configuration: which keys a config may hold, their validation, the workdir's config.json, and
the signatures that say whether two runs compute the same thing.

The keys a config may hold are those of `configs/default.py` (every other config file derives
from it); the groups of keys that do not change what training computes are declared there too,
beside the keys (`BOOKKEEPING`, `CRF_INFERENCE`, `NOT_IN_WARMUP`). Nothing here keeps a copy of
either. Problems a user can act on are `RunError`s, which train.py and eval.py print as one line.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
from typing import Any, Mapping

import ml_collections

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')

MODES = ('weak', 'fully_supervised')
NONFINITE = ('skip', 'stop')


class RunError(ValueError):
  """A problem the user can act on, reported by train.py / eval.py as one line."""


class ConfigError(RunError):
  """A config or workdir problem."""


class CheckpointError(RunError):
  """A checkpoint could not be written or read."""


class NonFiniteError(RunError):
  """Training met a non-finite loss or gradient with config.train.nonfinite = 'stop'."""


# ---------------------------------------------------------------------------------------------
# The default config: the one source of the keys.

@functools.lru_cache(maxsize=None)
def _default_module():
  path = os.path.join(CONFIGS_DIR, 'default.py')
  if not os.path.isfile(path):
    raise RuntimeError(f'{path} not found: wsss-jax runs from its source tree (pip install -e .)')
  spec = importlib.util.spec_from_file_location('wsss_jax_configs_default', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def default_config() -> ml_collections.ConfigDict:
  """A fresh copy of configs/default.py's config."""
  return _default_module().get_config()


def declared(name: str) -> tuple[str, ...]:
  """A key group declared in configs/default.py beside the keys: BOOKKEEPING, CRF_INFERENCE or
  NOT_IN_WARMUP (dotted paths; a group path stands for every key under it)."""
  return tuple(getattr(_default_module(), name))


def as_dict(config: Mapping[str, Any]) -> dict[str, Any]:
  """A plain nested dict of a ConfigDict (tuples become lists, as in config.json)."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json())
  return json.loads(json.dumps(config))


def leaf_paths(tree: Mapping[str, Any], prefix: str = '') -> list[str]:
  """Dotted paths of every leaf of a nested mapping, in order."""
  out = []
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out += leaf_paths(value, path + '.')
    else:
      out.append(path)
  return out


def get_path(tree: Any, path: str) -> Any:
  """tree['a']['b'] for path 'a.b' (a ConfigDict or a nested dict); KeyError if absent."""
  node = tree
  for part in path.split('.'):
    node = node[part]
  return node


def set_path(tree: Any, path: str, value: Any) -> None:
  """tree['a']['b'] = value for path 'a.b'; the groups must exist (KeyError otherwise)."""
  *groups, leaf = path.split('.')
  node = get_path(tree, '.'.join(groups)) if groups else tree
  node[leaf] = value


def pop_path(tree: dict[str, Any], path: str) -> None:
  """Remove path 'a.b' from a nested dict if present."""
  *groups, leaf = path.split('.')
  node = tree
  for g in groups:
    node = node.get(g) if isinstance(node, dict) else None
  if isinstance(node, dict):
    node.pop(leaf, None)


def first_difference(a: Any, b: Any, prefix: str = 'config') -> str | None:
  """The first dotted path at which two nested dicts differ, with both values, or None."""
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      if (d := first_difference(a.get(k), b.get(k), f'{prefix}.{k}')) is not None:
        return d
    return None
  return None if a == b else f'{prefix} ({a!r} there, {b!r} here)'


# ---------------------------------------------------------------------------------------------
# Validation.

def _check_keys(cfg: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = 'config') -> None:
  for key, value in cfg.items():
    if key not in schema:
      raise ConfigError(f'unknown config key {prefix}.{key} (known: {", ".join(sorted(schema))})')
    sub = schema[key]
    if isinstance(sub, Mapping):
      if not isinstance(value, Mapping):
        raise ConfigError(f'config key {prefix}.{key} must be a group of keys, got {value!r}')
      _check_keys(value, sub, f'{prefix}.{key}')
  for key in schema:
    if key not in cfg:
      raise ConfigError(f'missing config key {prefix}.{key}')


def _check_choices(config) -> None:
  # Imported here: the model's modules import jax, which must not initialise before
  # jax.distributed (cli.py) and is not needed to read a config.
  from wsss_jax import aggregation, backbone, model  # pylint: disable=import-outside-toplevel
  t, m = config['train'], config['model']
  att = m['attention']
  choices = {'train.mode': (t['mode'], MODES), 'train.nonfinite': (t['nonfinite'], NONFINITE),
             'train.optimizer': (t['optimizer'], ('sgd', 'adam')),
             'model.aggregation': (m['aggregation'], aggregation.HEADS),
             'model.fcl_form': (m['fcl_form'], aggregation.FCL_FORMS),
             'model.aggregate_input': (m['aggregate_input'], ('scores', 'log_softmax')),
             'model.cls_from': (m['cls_from'], ('cnn', 'crf')),
             'model.attention.lateral': (att['lateral'], ('diffusion', 'paper_eq9')),
             'model.attention.gradient': (att['gradient'], ('stop', 'through')),
             'model.attention.background': (att['background'], ('walk', 'complement')),
             'model.attention.top_signal': (att['top_signal'], ('scores', 'exclusive')),
             'train.seg_loss_on': (t['seg_loss_on'], ('crf', 'cnn')),
             'train.seg_target': (t['seg_target'], ('attention', 'crf'))}
  for key, (value, allowed) in choices.items():
    if value not in allowed:
      raise ConfigError(f'config.{key} must be one of {allowed}, got {value!r}')
  if t['warmup_head'] not in ('',) + aggregation.HEADS:
    raise ConfigError(f"config.train.warmup_head must be '' (model.aggregation) or one of "
                      f"{aggregation.HEADS}, got {t['warmup_head']!r}")
  if not isinstance(t['fcl_lr_scale'], (int, float)) or not t['fcl_lr_scale'] >= 0:
    raise ConfigError(f"config.train.fcl_lr_scale must be a number >= 0, got {t['fcl_lr_scale']!r}")
  if t['warmup_head'] == 'fcl' and m['aggregation'] != 'fcl':
    raise ConfigError(f"config.train.warmup_head=fcl needs the FCL's parameters, which "
                      f"model.aggregation={m['aggregation']} does not have")
  names = [layer.name for layer in backbone.layer_specs(model.backbone_config(config))]
  if att['stop_at'] not in names:
    raise ConfigError(f'config.model.attention.stop_at must be a backbone layer '
                      f'({", ".join(names)}), got {att["stop_at"]!r}')
  if att['enabled'] and att['neighbors'] and names.index(att['stop_at']) < names.index('pool3'):
    raise ConfigError(f'config.model.attention.stop_at={att["stop_at"]} is below the score '
                      'grid; the lateral QP (neighbors=True) needs pool3 or a layer above it')
  bound = att['max_classes']
  if int(bound) != bound or bound < 0 or (bound == 1 and att['background'] == 'complement'):
    raise ConfigError(f"config.model.attention.max_classes must be 0 (the data's bound) or a "
                      f'number of classes to walk, background included (>= 2 with the complement '
                      f'background), got {bound!r}')
  if m['cls_from'] == 'crf' and not m['crf']['enabled']:
    raise ConfigError('config.model.cls_from=crf needs config.model.crf.enabled=True')
  if t['seg_target'] == 'crf' and not m['crf']['enabled']:
    raise ConfigError('config.train.seg_target=crf needs config.model.crf.enabled=True (its mean '
                      'field and kernels)')


def validate_config(config: Mapping[str, Any]) -> None:
  """Refuse unknown or missing keys (against configs/default.py) and inconsistent values with
  one clear message."""
  import jax  # pylint: disable=import-outside-toplevel  (see _check_choices)
  _check_keys(as_dict(config), as_dict(default_config()))
  _check_choices(config)
  t = config['train']
  stride = t['seg_target_stride']
  if int(stride) != stride or stride < 1 or config['data']['image_size'] % int(stride):
    raise ConfigError(f'config.train.seg_target_stride must be a positive integer dividing '
                      f'data.image_size ({config["data"]["image_size"]}), got {stride!r}')
  if not config['eval']['scales'] or any(float(x) <= 0 for x in config['eval']['scales']):
    raise ConfigError('config.eval.scales must be positive numbers, '
                      f'got {config["eval"]["scales"]!r}')
  for key in ('batch_size', 'num_steps', 'checkpoint_every', 'keep_checkpoints', 'log_every'):
    if int(t[key]) < 1:
      raise ConfigError(f'config.train.{key} must be >= 1, got {t[key]}')
  n_dev = jax.device_count()
  if t['batch_size'] % n_dev or config['eval']['batch_size'] % n_dev:
    raise ConfigError(f'config.train.batch_size ({t["batch_size"]}) and config.eval.batch_size '
                      f'({config["eval"]["batch_size"]}) must be divisible by the {n_dev} devices'
                      + (f' of {jax.process_count()} processes' if jax.process_count() > 1 else ''))


# ---------------------------------------------------------------------------------------------
# The workdir's config.json.

def check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} exists and is not a directory')


def atomic_write(path: str, text: str) -> None:
  """Write a text file through a temporary name and a rename (never half-written)."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Record the run's config in workdir/config.json (eval.py rebuilds the model from it)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    atomic_write(os.path.join(workdir, 'config.json'), config.to_json(indent=2))


# Keys added after the first release, with the value that reproduces the older behaviour: a
# workdir written before them still evaluates and resumes.
ADDED_KEYS = {'init_weights': '', 'train.nonfinite': 'skip', 'data.data_dir': '',
              'data.manual_dir': '',
              'data.train_split': 'train', 'data.crop_size': 0, 'data.scale_range': (1.0, 1.0),
              'data.flip': False, 'data.eval_size': 0, 'train.init_from': '',
              'model.attention.feedforward_weight': 1.0, 'model.attention.top_signal': 'scores',
              'train.seg_target_stride': 1, 'train.warmup_head': '', 'train.fcl_lr_scale': 1.0,
              'model.fcl_form': 'linear', 'data.generator.center_bias': 0.0,
              'data.generator.max_objects': 3, 'data.generator.scale_range': (0.35, 0.7),
              'data.generator.part_scale': 0.3, 'data.generator.clutter': 4,
              'data.generator.clutter_body_prob': 0.3, 'data.generator.cooccur_prob': 0.5,
              'data.generator.noise_std': 6.0, 'data.generator.min_visible': 12,
              'eval.tune_split': 'val', 'model.attention.walk_dropout': True, 'data.tune_size': 0,
              'data.train_masks': ''}


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """workdir/config.json, with the keys added since it was written (ADDED_KEYS)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ConfigError(f'{path} not found: is {workdir} a workdir written by train.py?')
  try:
    with open(path) as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path} is not valid JSON ({e})') from None
  for key, value in ADDED_KEYS.items():
    *groups, leaf = key.split('.')
    node = raw
    for g in groups:
      node = node.get(g) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.setdefault(leaf, value)
  return ml_collections.ConfigDict(raw)


# ---------------------------------------------------------------------------------------------
# Same computation?

def with_class_bound(config, max_tags: int):
  """`config` with model.attention.max_classes = 0 (the data's bound) resolved to `max_tags` + 1
  (the background's slot), as a copy; an explicit bound is kept."""
  if config.model.attention.max_classes:
    return config
  resolved = copy.deepcopy(config)
  with resolved.unlocked():
    resolved.model.attention.max_classes = min(int(max_tags), int(config.data.num_classes)) + 1
  return resolved


def warmup_head(config: Mapping[str, Any]) -> str:
  """The aggregation head Delta^C goes through in the warm-up (train.warmup_head, '' = the model's);
  `config` a ConfigDict or its JSON dict."""
  return config['train']['warmup_head'] or config['model']['aggregation']


def loss_reaches_crf(config: Mapping[str, Any]) -> bool:
  """Whether training depends on the CRF-RNN's inference settings (CRF_INFERENCE): a loss reaches
  the CRF-RNN's output, or its mean field refines Delta^S's target."""
  m, t = config['model'], config['train']
  if not m['crf']['enabled']:
    return False
  seg = bool(m['attention']['enabled']) and bool(t['seg_loss_weight'])
  return (m['cls_from'] == 'crf' or (seg and t['seg_loss_on'] == 'crf')
          or (seg and t['seg_target'] == 'crf'))


def training_signature(config: Mapping[str, Any]) -> dict[str, Any]:
  """The config values the trained parameters depend on: two runs with equal signatures train
  the same network (same init, batches, keys and updates). Everything but the eval group and the
  keys configs/default.py declares as BOOKKEEPING; the CRF-RNN's inference settings only where a
  loss reaches the CRF-RNN; the FCL's form only where an FCL is trained."""
  sig = as_dict(config)
  sig.pop('eval')
  for key in declared('BOOKKEEPING'):
    pop_path(sig, key)
  if not loss_reaches_crf(config):
    for key in declared('CRF_INFERENCE'):
      pop_path(sig, key)
  sig['train']['warmup_head'] = warmup_head(config)
  if config['model']['aggregation'] != 'fcl' or config['train']['mode'] == 'fully_supervised':
    sig['model'].pop('fcl_form')  # no FCL acts in the run's training or its mIoU
  return sig
