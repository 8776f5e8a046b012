"""Training and evaluation loops (Secs. 6-7): pmap data parallelism, orbax checkpoints.

`train_and_evaluate(config, workdir)` is the whole job behind `train.py`;
`evaluate_workdir(workdir, split)` is the job behind `eval.py`. `train_step`
is a pure function of (state, batch, rng) stepped with `jax.pmap` over the
local devices; gradients are averaged with `lax.pmean`, so D devices with
per-device batch B/D take the same step as one device with batch B.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import threading
import time
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import jax_utils
from flax.training import train_state
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from wsss_jax import aggregation, backbone, data, losses, metrics, model, visualize, weights

AXIS = 'batch'
MODES = ('weak', 'fully_supervised')
NONFINITE = ('skip', 'stop')
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: train.py's status after a preemption save (rerun to resume)


class RunError(ValueError):
  """A problem the user can act on, reported by train.py / eval.py as one line."""


class ConfigError(RunError):
  """A config or workdir problem."""


class CheckpointError(RunError):
  """A checkpoint could not be written or read."""


class NonFiniteError(RunError):
  """Training met a non-finite loss or gradient with config.train.nonfinite = 'stop'."""


class TrainState(train_state.TrainState):
  """Flax TrainState plus the base PRNG key (checkpointed with the rest)."""
  rng: jax.Array


# ---------------------------------------------------------------------------------------------
# Config and workdir checks.

# Every key a config may hold; a key outside this tree is a typo and is refused.
SCHEMA = {
    'seed': None,
    'init_weights': None,
    'data': {'name': None, 'image_size': None, 'num_classes': None, 'train_size': None,
             'val_size': None, 'test_size': None, 'seed': None, 'generator': '*',
             'num_threads': None, 'data_dir': None, 'manual_dir': None, 'train_split': None,
             'crop_size': None, 'scale_range': None, 'flip': None, 'eval_size': None},
    'model': {'backbone': {'width': None, 'depth': None, 'fc_features': None,
                           'fc6_dilation': None, 'dropout_rate': None},
              'aggregation': None, 'fcl_form': None, 'lse_r': None, 'aggregate_input': None,
              'cls_from': None,
              'attention': {'enabled': None, 'neighbors': None, 'lateral': None, 'radius': None,
                            'eps': None, 'qp_tol': None, 'qp_iters': None, 'stop_at': None,
                            'gradient': None, 'max_classes': None, 'background': None,
                            'bg_power': None, 'feedforward_weight': None, 'top_signal': None},
              'crf': {'enabled': None, 'attention_unary': None, 'iters': None, 'sigma_z': None,
                      'sigma_r': None, 'bilateral_weight': None, 'spatial_weight': None,
                      'spatial_sxy': None, 'lattice_capacity': None}},
    'train': {'mode': None, 'warmup_steps': None, 'seg_loss_weight': None, 'seg_loss_on': None, 'seg_target': None, 'seg_target_stride': None, 'optimizer': None, 'batch_size': None, 'num_steps': None, 'learning_rate': None,
              'momentum': None, 'weight_decay': None, 'lr_decay_every': None,
              'lr_decay_factor': None, 'checkpoint_every': None, 'keep_checkpoints': None,
              'log_every': None, 'progress_bar': None, 'nonfinite': None, 'init_from': None,
              'warmup_head': None, 'fcl_lr_scale': None},
    'eval': {'batch_size': None, 'split': None, 'num_examples': None, 'num_images': None,
             'attention': None, 'class_threshold': None, 'tune_threshold': None, 'scales': None,
             'flip': None,
             'dense_crf': {'enabled': None, 'iters': None, 'gaussian_sxy': None,
                           'gaussian_compat': None, 'bilateral_sxy': None, 'bilateral_srgb': None,
                           'bilateral_compat': None}},
}


def _check_keys(cfg: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = 'config') -> None:
  for key, value in cfg.items():
    if key not in schema:
      raise ConfigError(f'unknown config key {prefix}.{key} (known: {", ".join(sorted(schema))})')
    sub = schema[key]
    if isinstance(sub, dict):
      if not isinstance(value, Mapping):
        raise ConfigError(f'config key {prefix}.{key} must be a group of keys, got {value!r}')
      _check_keys(value, sub, f'{prefix}.{key}')
  for key, sub in schema.items():
    if key not in cfg:
      raise ConfigError(f'missing config key {prefix}.{key}')


def validate_config(config: Mapping[str, Any]) -> None:
  """Refuse unknown or missing keys and inconsistent values with one clear message."""
  _check_keys(config.to_dict() if hasattr(config, 'to_dict') else config, SCHEMA)
  t, m = config['train'], config['model']
  if t['mode'] not in MODES:
    raise ConfigError(f'config.train.mode must be one of {MODES}, got {t["mode"]!r}')
  if t['nonfinite'] not in NONFINITE:
    raise ConfigError(f'config.train.nonfinite must be one of {NONFINITE}, got {t["nonfinite"]!r}')
  if t['optimizer'] not in ('sgd', 'adam'):
    raise ConfigError(f'config.train.optimizer must be sgd|adam, got {t["optimizer"]!r}')
  if m['aggregation'] not in aggregation.HEADS:
    raise ConfigError(f'config.model.aggregation must be one of {aggregation.HEADS}, got {m["aggregation"]!r}')
  if m['fcl_form'] not in aggregation.FCL_FORMS:
    raise ConfigError(f'config.model.fcl_form must be one of {aggregation.FCL_FORMS}, '
                      f'got {m["fcl_form"]!r}')
  if t['warmup_head'] not in ('',) + aggregation.HEADS:
    raise ConfigError(f"config.train.warmup_head must be '' (model.aggregation) or one of "
                      f"{aggregation.HEADS}, got {t['warmup_head']!r}")
  if not isinstance(t['fcl_lr_scale'], (int, float)) or not t['fcl_lr_scale'] >= 0:
    raise ConfigError(f"config.train.fcl_lr_scale must be a number >= 0, got {t['fcl_lr_scale']!r}")
  if t['warmup_head'] == 'fcl' and m['aggregation'] != 'fcl':
    raise ConfigError(f"config.train.warmup_head=fcl needs the FCL's parameters, which "
                      f"model.aggregation={m['aggregation']} does not have")
  if m['aggregate_input'] not in ('scores', 'log_softmax'):
    raise ConfigError(f'config.model.aggregate_input must be scores|log_softmax, '
                      f'got {m["aggregate_input"]!r}')
  choices = {'model.cls_from': (m['cls_from'], ('cnn', 'crf')),
             'model.attention.lateral': (m['attention']['lateral'], ('diffusion', 'paper_eq9')),
             'model.attention.gradient': (m['attention']['gradient'], ('stop', 'through')),
             'model.attention.background': (m['attention']['background'], ('walk', 'complement')),
             'model.attention.top_signal': (m['attention']['top_signal'], ('scores', 'exclusive')),
             'train.seg_loss_on': (t['seg_loss_on'], ('crf', 'cnn')),
             'train.seg_target': (t['seg_target'], ('attention', 'crf'))}
  for key, (value, allowed) in choices.items():
    if value not in allowed:
      raise ConfigError(f'config.{key} must be one of {allowed}, got {value!r}')
  names = [layer.name for layer in backbone.layer_specs(model.backbone_config(config))]
  att = m['attention']
  if att['stop_at'] not in names:
    raise ConfigError(f'config.model.attention.stop_at must be a backbone layer ({", ".join(names)}), '
                      f'got {att["stop_at"]!r}')
  if att['enabled'] and att['neighbors'] and names.index(att['stop_at']) < names.index('pool3'):
    raise ConfigError(f'config.model.attention.stop_at={att["stop_at"]} is below the score grid; the '
                      'lateral QP (neighbors=True) needs pool3 or a layer above it')
  if m['cls_from'] == 'crf' and not m['crf']['enabled']:
    raise ConfigError('config.model.cls_from=crf needs config.model.crf.enabled=True')
  if t['seg_target'] == 'crf' and not m['crf']['enabled']:
    raise ConfigError('config.train.seg_target=crf needs config.model.crf.enabled=True (its mean '
                      'field and kernels)')
  stride = t['seg_target_stride']
  if int(stride) != stride or stride < 1 or config['data']['image_size'] % int(stride):
    raise ConfigError(f'config.train.seg_target_stride must be a positive integer dividing '
                      f'data.image_size ({config["data"]["image_size"]}), got {stride!r}')
  if not config['eval']['scales'] or any(float(x) <= 0 for x in config['eval']['scales']):
    raise ConfigError(f'config.eval.scales must be positive numbers, got {config["eval"]["scales"]!r}')
  for key in ('batch_size', 'num_steps', 'checkpoint_every', 'keep_checkpoints', 'log_every'):
    if int(t[key]) < 1:
      raise ConfigError(f'config.train.{key} must be >= 1, got {t[key]}')
  n_dev = jax.device_count()
  if t['batch_size'] % n_dev or config['eval']['batch_size'] % n_dev:
    raise ConfigError(f'config.train.batch_size ({t["batch_size"]}) and config.eval.batch_size '
                      f'({config["eval"]["batch_size"]}) must be divisible by the {n_dev} devices'
                      + (f' of {jax.process_count()} processes' if jax.process_count() > 1 else ''))


def check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} exists and is not a directory')


def _atomic_write(path: str, text: str) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Record the run's config in workdir/config.json (eval.py rebuilds the model from it)."""
  if jax.process_index() == 0:
    _atomic_write(os.path.join(workdir, 'config.json'), config.to_json(indent=2))


# Keys added after the first release, with the value that reproduces the older behaviour: a
# workdir written before them still evaluates and resumes.
ADDED_KEYS = {'init_weights': '', 'train.nonfinite': 'skip', 'data.data_dir': '', 'data.manual_dir': '',
              'data.train_split': 'train', 'data.crop_size': 0, 'data.scale_range': (1.0, 1.0),
              'data.flip': False, 'data.eval_size': 0, 'train.init_from': '',
              'model.attention.feedforward_weight': 1.0, 'model.attention.top_signal': 'scores',
              'train.seg_target_stride': 1, 'train.warmup_head': '', 'train.fcl_lr_scale': 1.0,
              'model.fcl_form': 'linear', 'data.generator.center_bias': 0.0}


def load_config(workdir: str) -> ml_collections.ConfigDict:
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
# State, optimizer, steps.

def learning_rate_schedule(config) -> optax.Schedule:
  """Step schedule of Sec. 7: lr divided by `lr_decay_factor`^-1 every `lr_decay_every` steps."""
  t = config.train
  return optax.exponential_decay(t.learning_rate, transition_steps=t.lr_decay_every,
                                 decay_rate=t.lr_decay_factor, staircase=True)


def make_optimizer(config) -> optax.GradientTransformation:
  """SGD with momentum and weight decay (Sec. 7); 'adam' is offered for short CPU runs."""
  t = config.train
  if t.optimizer == 'sgd':
    opt = optax.sgd(learning_rate_schedule(config), momentum=t.momentum)
  else:
    opt = optax.adam(learning_rate_schedule(config))
  # No weight decay on the CRF-RNN compatibility: with Adam a decay-only gradient moves it by ~lr
  # per step, which would erase the Potts init in runs where no loss reaches it (B1, B2, warm-up).
  # For the same reason none on the FCL when the warm-up trains another head (train.warmup_head):
  # the FCL then starts the main phase at its init (GAP or LSE, model.fcl_form).
  no_decay = {'crf'} | ({'fcl'} if warmup_trains_other_head(config) else set())
  decay_mask = lambda params: {k: jax.tree.map(lambda _: k not in no_decay, v) for k, v in params.items()}
  return optax.chain(optax.add_decayed_weights(t.weight_decay, mask=decay_mask), opt)


def replicate(tree):
  """`flax.jax_utils.replicate` (one copy per local device), laid out as the pmapped steps lay
  out their outputs (a mesh over the AXIS axis). The step's cache key includes that layout:
  from jax_utils.replicate's own ('_device_put_sharded') the first two calls each compiled the
  step (~5 s more per run on the CPU default, ~11 s per tiny test run)."""
  return jax.pmap(lambda x: x, axis_name=AXIS)(jax_utils.replicate(tree))


def create_state(config, key: jax.Array) -> TrainState:
  params = model.init_params(jax.random.fold_in(key, 0), config)
  return TrainState.create(apply_fn=None, params=params, tx=make_optimizer(config),
                           rng=jax.random.fold_in(key, 1))


def compute_loss(params, batch, rng, config):
  """Per-batch loss and metrics for the configured training mode (Sec. 6)."""
  if config.train.mode == 'fully_supervised':
    out = model.forward(params, batch['image'], config, train=True, rng=rng)
    logits = model.upsample(out['scores'], batch['image'].shape[1:3])
    loss = jnp.mean(losses.pixel_cross_entropy(logits, batch['mask']))
    return loss, {'loss': loss, 'seg_loss': loss}
  # Weakly supervised: Delta = Delta^C + lambda Delta^S (Eq. 13), background present in every image.
  tags = model.tags_with_background(batch['tags'])
  out = model.segment(params, batch['image'], config, tags, train=True, rng=rng)
  image_logits = out['image_logits']
  if config.model.cls_from == 'crf':
    image_logits = model.image_logits(params, model.downsample(out['crf_logits'], out['scores'].shape[1:3]),
                                      config)
  cls_loss = jnp.mean(losses.classification_loss(image_logits, tags))
  metrics_ = {'cls_loss': cls_loss}
  loss = cls_loss
  lam = config.train.seg_loss_weight
  crf_used = config.model.cls_from == 'crf'
  fills = []  # rows needed / capacity of the CRF mean fields this step computes (not an unused one)
  cap = config.model.crf.lattice_capacity
  if 'attention' in out and lam:
    crf_used |= config.train.seg_loss_on == 'crf' and 'crf_probs' in out
    seg = out['crf_probs'] if crf_used else out['p_s']  # (cls_from = 'crf' puts Delta^S there too)
    target = out['attention']
    if config.train.seg_target == 'crf':  # p^A snapped to image edges by the CRF-RNN's mean field
      stride = int(config.train.seg_target_stride)
      target, size = model.refine_attention(params, batch['image'], out['attention'], config, stride)
      if cap:
        fills.append(size / model.target_lattice_capacity(config, stride, batch['image'].shape[1:3]))
    seg_loss = jnp.mean(losses.segmentation_loss(target, seg, tags))
    metrics_['seg_loss'] = seg_loss
    loss = loss + lam * seg_loss
  if crf_used and cap:
    fills.append(out['lattice_size'] / cap)
  if fills:
    metrics_['lattice_fill'] = jnp.max(jnp.stack(fills)).astype(jnp.float32)
  metrics_['loss'] = loss
  return loss, metrics_


def warmup_head(config: Mapping[str, Any]) -> str:
  """The aggregation head Delta^C goes through in the warm-up (train.warmup_head, '' = the model's);
  `config` a ConfigDict or its JSON dict."""
  return config['train']['warmup_head'] or config['model']['aggregation']


def warmup_trains_other_head(config) -> bool:
  """Whether the warm-up classifies through another head than the model's (its FCL, if it has
  one, then gets no gradient until the main phase)."""
  return (config.train.mode == 'weak' and int(config.train.warmup_steps) > 0
          and warmup_head(config) != config.model.aggregation)


def warmup_config(config):
  """The config of the first train.warmup_steps steps: Delta^C only (no attention, no Delta^S),
  the role ImageNet pre-training plays in the paper (attention of an untrained net is noise),
  classified through train.warmup_head (the same pre-training for every head of Table 5)."""
  warm = copy.deepcopy(config)
  with warm.unlocked():
    warm.model.attention.enabled = False
    warm.train.seg_loss_weight = 0.0
    warm.model.cls_from = 'cnn'
    warm.model.aggregation = warmup_head(config)
    warm.train.warmup_head = ''
  return warm


# What does not act in the Delta^C warm-up (warmup_config turns attention and Delta^S off and
# classifies from the CNN scores, so the CRF-RNN is not computed) or only does bookkeeping.
_NOT_IN_WARMUP = ('model.attention', 'model.cls_from', 'model.crf', 'train.seg_loss_weight',
                  'train.seg_loss_on', 'train.seg_target', 'train.seg_target_stride', 'train.num_steps', 'train.checkpoint_every',
                  'train.keep_checkpoints', 'train.log_every', 'train.progress_bar',
                  'train.init_from', 'eval')


def warmup_signature(config) -> dict[str, Any]:
  """The config values the first train.warmup_steps steps depend on: two runs with equal
  signatures compute the same warm-up (same init, batches, dropout keys and updates)."""
  sig = json.loads(warmup_config(config).to_json())
  crf_enabled = sig['model']['crf']['enabled']  # decides whether the CRF-RNN has parameters
  for key in _NOT_IN_WARMUP:
    *groups, leaf = key.split('.')
    node = sig
    for g in groups:
      node = node[g]
    node.pop(leaf, None)
  sig['model']['crf_enabled'] = crf_enabled
  sig['model']['fcl_params'] = config.model.aggregation == 'fcl'  # the parameter tree (and decay mask)
  sig['model']['fcl_decay'] = not warmup_trains_other_head(config)
  if warmup_trains_other_head(config):  # the FCL gets no step in the warm-up: it ends at its
    sig['train'].pop('fcl_lr_scale')    # init, which init_from_warmup takes from this run's form
    sig['model'].pop('fcl_form', None)
  if int(config.train.lr_decay_every) >= int(config.train.warmup_steps):  # no decay in the warm-up
    sig['train'].pop('lr_decay_every')
    sig['train'].pop('lr_decay_factor')
  return sig


def _first_difference(a, b, prefix='config'):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      if (d := _first_difference(a.get(k), b.get(k), f'{prefix}.{k}')) is not None:
        return d
    return None
  return None if a == b else f'{prefix} ({a!r} there, {b!r} here)'


def init_from_warmup(config, template: TrainState) -> TrainState:
  """The state at step train.warmup_steps of the run in train.init_from, after checking that
  its warm-up is this run's (the same config values act in it)."""
  src = config.train.init_from
  step = int(config.train.warmup_steps)
  if step <= 0:
    raise ConfigError('config.train.init_from needs config.train.warmup_steps > 0 (it shares the warm-up)')
  other = load_config(src)
  if (d := _first_difference(warmup_signature(other), warmup_signature(config))) is not None:
    raise ConfigError(f'config.train.init_from={src}: that run\'s warm-up differs from this one\'s '
                      f'in {d}')
  mngr = checkpoint_manager(src, other, read_only=True)
  try:
    state = restore_state(mngr, template, step)
  finally:
    mngr.close()
  if warmup_trains_other_head(config) and 'fcl' in template.params:
    # The warm-up left the FCL at its init (no gradient, no decay: tested), and its Adam moments
    # at 0; this run's init is taken, so a warm-up is shared across model.fcl_form too.
    state = state.replace(params={**state.params, 'fcl': template.params['fcl']})
  return state


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, config):
  """One SGD step on this device's shard; gradients are averaged across the pmap axis.

  A step whose loss or averaged gradient is not finite leaves the parameters and the
  optimizer state as they were (the step counter still advances, so data and RNG stay
  aligned with the step number); aux['nonfinite'] is 1 for it.
  """
  grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
  (_, aux), grads = grad_fn(state.params, batch, rng, config)
  grads = jax.lax.pmean(grads, AXIS)
  aux = jax.lax.pmean(aux, AXIS)
  finite = jnp.isfinite(aux['loss'])
  for g in jax.tree.leaves(grads):
    finite &= jnp.all(jnp.isfinite(g))
  new = state.apply_gradients(grads=grads)
  scale = config.train.fcl_lr_scale
  if scale != 1.0 and 'fcl' in new.params:  # the FCL's lr multiplier (Caffe's lr_mult): Adam moves
    # every weight by ~lr per step whatever its scale, and the FCL's start at 1/N. Applied to the
    # step, not inside the optimizer, so that checkpoints keep their optimizer-state structure.
    new = new.replace(params={**new.params, 'fcl': jax.tree.map(
        lambda n, o: o + scale * (n - o), new.params['fcl'], state.params['fcl'])})
  keep = lambda n, o: jnp.where(finite, n, o)
  new = new.replace(params=jax.tree.map(keep, new.params, state.params),
                    opt_state=jax.tree.map(keep, new.opt_state, state.opt_state))
  aux['nonfinite'] = 1.0 - finite.astype(jnp.float32)
  return new, aux


def eval_step(params, batch, config):
  """Confusion matrices of this shard's label maps (final; CNN argmax p^S; attention argmax
  p^A, for the predicted classes), summed over all devices (and processes), the largest
  CRF-RNN lattice any of them needed (0 without a CRF-RNN), and the maps."""
  k = config.data.num_classes + 1
  pred = model.infer(params, batch['image'], config)
  size = pred.pop('lattice_size', jnp.zeros((), jnp.int32))
  conf = {name: metrics.confusion_matrix(batch['mask'], maps, k) for name, maps in pred.items()}
  return jax.lax.psum(conf, AXIS), jax.lax.pmax(size, AXIS), pred


def shard(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """(B, ...) -> (local devices, B / devices, ...)."""
  d = jax.local_device_count()
  return {k: v.reshape((d, v.shape[0] // d) + v.shape[1:]) for k, v in batch.items()}


def step_rngs(base: jax.Array, step: int) -> jax.Array:
  """Per-device keys for `step`, a pure function of (base key, step, device index)."""
  return jax.random.split(jax.random.fold_in(base, step), jax.device_count())[
      jax.process_index() * jax.local_device_count():(jax.process_index() + 1) * jax.local_device_count()]


# ---------------------------------------------------------------------------------------------
# Checkpoints.

def checkpoint_manager(workdir: str, config, *, read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax manager of workdir/checkpoints. Orbax writes each step into a temporary
  directory and renames it when complete, so a run killed mid-save leaves the previous
  checkpoints intact; the next training run removes the unfinished temporary directory.
  `read_only` (evaluation) creates, cleans and deletes nothing."""
  path = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  if read_only and not os.path.isdir(path):
    raise ConfigError(f'no checkpoint in {path}')
  # The end of the Delta^C warm-up is kept beyond the latest keep_checkpoints: other runs may
  # start from it (train.init_from).
  keep = [ocp.checkpoint_managers.LatestN(config.train.keep_checkpoints)]
  if 0 < int(config.train.warmup_steps) < config.train.num_steps:
    keep.append(ocp.checkpoint_managers.CustomSteps([int(config.train.warmup_steps)]))
  opts = ocp.CheckpointManagerOptions(
      create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only,
      preservation_policy=None if read_only else ocp.checkpoint_managers.AnyPreservationPolicy(keep))
  return ocp.CheckpointManager(path, options=opts, item_handlers=ocp.StandardCheckpointHandler())


class _Unreadable(Exception):
  """Orbax could not read a checkpoint's files (truncated, corrupted, half-written)."""


def _restore_step(mngr: ocp.CheckpointManager, template: TrainState, step: int) -> TrainState:
  """Restore one step. ConfigError: the checkpoint is intact but of another model or
  optimizer; _Unreadable: orbax failed to read it (only orbax's own reads count, so a bug
  here can never get a good checkpoint moved aside)."""
  where = f'checkpoint step {step} in {mngr.directory}'
  try:
    meta = mngr.item_metadata(step)
  except Exception as e:  # orbax/tensorstore raise many types for unreadable files
    raise _Unreadable(f'{type(e).__name__}: {e}') from e
  tree = getattr(meta, 'tree', meta)
  if not isinstance(tree, Mapping) or 'params' not in tree:
    raise _Unreadable(f'its metadata does not describe a wsss-jax TrainState ({type(tree).__name__})')
  stored = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, jnp.float32), tree['params'])
  try:
    backbone.check_params(stored, template.params, where)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  shapes = lambda t: sorted(tuple(np.shape(x)) for x in jax.tree.leaves(t))
  if shapes(tree) != shapes(template):
    raise ConfigError(f'{where} holds the same model but another optimizer state (was '
                      'config.train.optimizer changed?); use a new --workdir')
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(template))
  except Exception as e:
    raise _Unreadable(f'{type(e).__name__}: {e}') from e


def restore_state(mngr: ocp.CheckpointManager, template: TrainState, step: int | None = None, *,
                  quarantine: bool = False) -> TrainState:
  """Restore the latest (or given) checkpoint into `template`'s structure.

  The stored shapes are compared with the configured model first (from metadata,
  without reading arrays), so a checkpoint of another architecture gives one clear
  error. Without an explicit `step`, a checkpoint orbax cannot read (truncated,
  corrupted) is skipped with a warning in favour of the previous one; with
  `quarantine` (training) it is moved to checkpoints.corrupt/ next to the checkpoints,
  never deleted, so the resumed run can save that step again.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise ConfigError(f'no checkpoint for step {step} in {mngr.directory} (have {sorted(steps)})')
    try:
      return _restore_step(mngr, template, step)
    except _Unreadable as e:
      raise CheckpointError(f'checkpoint step {step} in {mngr.directory} is unreadable ({e})') from None
  if not steps:
    raise ConfigError(f'no checkpoint in {mngr.directory}')
  for s in steps:
    try:
      return _restore_step(mngr, template, s)
    except _Unreadable as e:
      msg = f'checkpoint step {s} in {mngr.directory} is unreadable ({str(e)[:300]})'
      if quarantine:
        dest = os.path.join(os.path.dirname(str(mngr.directory)), 'checkpoints.corrupt',
                            f'{s}-{time.strftime("%Y%m%d-%H%M%S")}')
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(dest), exist_ok=True)
          os.replace(os.path.join(str(mngr.directory), str(s)), dest)
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices(f'quarantine checkpoint {s}')
        mngr.reload()
        msg += f'; moved to {dest}'
      warnings.warn(f'{msg}; falling back to an earlier checkpoint', RuntimeWarning, stacklevel=2)
      print(f'warning: {msg}')
  raise CheckpointError(f'no readable checkpoint in {mngr.directory} (tried steps {steps})')


def save_state(mngr: ocp.CheckpointManager, state: TrainState) -> None:
  """Save `state` (asynchronously) unless its step is saved already. Refuses non-finite
  parameters; a failed write (disk full, permissions) is a CheckpointError naming the path."""
  step = int(state.step)
  if step in mngr.all_steps():
    return
  state = jax.device_get(state)
  if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params)):
    raise NonFiniteError(f'refusing to save non-finite parameters at step {step}')
  try:
    mngr.save(step, args=ocp.args.StandardSave(state))
  except OSError as e:
    raise CheckpointError(f'cannot write checkpoint step {step} to {mngr.directory}: {e}') from None


def finish_saves(mngr: ocp.CheckpointManager) -> None:
  """Wait for pending asynchronous saves; a failed one is a CheckpointError."""
  try:
    mngr.wait_until_finished()
  except OSError as e:
    raise CheckpointError(f'cannot write a checkpoint to {mngr.directory}: {e}') from None


# ---------------------------------------------------------------------------------------------
# Loops.

def _copy_warmup_metrics(src: str, workdir: str, step: int) -> None:
  """Start workdir/metrics.jsonl with the warm-up's records from the run it was taken from."""
  path, dest = os.path.join(src, 'metrics.jsonl'), os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() or not os.path.isfile(path) or os.path.exists(dest):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line).get('step', step + 1) <= step]
  _atomic_write(dest, ''.join(rows))


def _log_metrics(workdir: str, record: Mapping[str, Any]) -> None:
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'metrics.jsonl')
    try:
      with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')
    except OSError as e:
      raise CheckpointError(f'cannot write {path}: {e}') from None


class PreemptionGuard:
  """Turns the first SIGTERM / SIGINT into a request to save and stop at a step boundary
  (a second SIGINT interrupts at once). Handlers are only installed in the main thread."""

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def _window_summary(window: list[tuple[int, dict[str, Any]]]) -> tuple[dict[str, float], list]:
  """Mean of each metric over the finite steps of a logging window, and the non-finite
  steps as (step, metrics) pairs."""
  host = jax.device_get([aux for _, aux in window])
  rows = [{k: float(v[0]) for k, v in aux.items()} for aux in host]
  bad = [(step, row) for (step, _), row in zip(window, rows) if row['nonfinite']]
  good = [row for row in rows if not row['nonfinite']] or rows
  means = {k: float(np.mean([row[k] for row in good])) for k in rows[0] if k != 'nonfinite'}
  means['nonfinite_steps'] = float(len(bad))
  if 'lattice_fill' in rows[0]:
    means['lattice_fill_max'] = float(max(row['lattice_fill'] for row in rows))
  return means, bad


@contextlib.contextmanager
def _finish_saves_on_error(mngr: ocp.CheckpointManager):
  """Let saves already under way complete when the loop fails, then re-raise."""
  try:
    yield
  except BaseException:
    with contextlib.suppress(Exception):
      mngr.wait_until_finished()
    raise


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train per `config` in `workdir` (resuming from its latest checkpoint), then evaluate on val.

  SIGTERM / SIGINT save a checkpoint at the current step and return {'preempted': True,
  'step': N} (train.py then exits with PREEMPTED_EXIT_CODE); rerunning resumes exactly: the
  batches and dropout keys are functions of the step. All processes of a multi-process run
  agree on the stopping step through a flag summed inside the pmapped step.
  """
  validate_config(config)
  check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  old = os.path.join(workdir, 'config.json')
  if os.path.exists(old):
    prev = json.loads(load_config(workdir).to_json())
    now = json.loads(config.to_json())  # the JSON round trip makes tuples lists on both sides
    if prev['model'] != now['model'] or prev['data'] != now['data']:
      raise ConfigError(f'{workdir} holds a run with a different model or data config '
                        f'(see {old}); use a new --workdir')
  save_config(config, workdir)

  # Data errors first, before a checkpoint manager (and its background threads) exists.
  train_ds = data.make_dataset(config.data, 'train')
  local_batch = config.train.batch_size // jax.process_count()
  if len(train_ds) < local_batch:
    raise ConfigError(f'the train split of data "{config.data.name}" has {len(train_ds)} examples, '
                      f'fewer than one batch of {local_batch} per process')
  eval_dataset(config, config.eval.split)  # an empty eval split is found before training, not after it
  state = create_state(config, jax.random.key_data(jax.random.key(config.seed)))
  mngr = checkpoint_manager(workdir, config)
  try:  # a refused start closes the manager (its threads would print a traceback at exit)
    if mngr.latest_step() is not None:
      state = restore_state(mngr, state, quarantine=True)
      print(f'resumed from step {int(state.step)} in {workdir}')
    elif config.train.init_from:
      state = init_from_warmup(config, state)
      _copy_warmup_metrics(config.train.init_from, workdir, int(state.step))
      print(f'started from step {int(state.step)} of {config.train.init_from} (shared warm-up)')
    elif config.init_weights:
      try:  # ImageNet VGG-16 for conv1_1..fc7 (Sec. 7); fc8, FCL and CRF keep their init
        state = state.replace(params=dict(
            state.params, backbone=weights.init_backbone(state.params['backbone'], config.init_weights)))
      except weights.WeightsError as e:
        raise ConfigError(str(e)) from None
      print(f'initialised conv1_1..fc7 from {config.init_weights}')
  except BaseException:
    with contextlib.suppress(Exception):
      mngr.close()
    raise
  # Host copies: restored arrays are committed to one device, which the pmapped step (and the
  # keys derived from state.rng) would refuse on a multi-device host.
  state = jax.device_get(state)
  start = int(state.step)
  num_steps = config.train.num_steps

  batches = data.train_batches(train_ds, global_batch=config.train.batch_size, seed=config.seed,
                               start_step=start, process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               num_threads=config.data.num_threads,
                               augment=data.train_augment(config.data))

  def stepper(cfg):
    def step_fn(s, b, r, stop):
      new, aux = train_step(s, b, r, cfg)
      return new, aux, jax.lax.psum(stop, AXIS)
    return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0,))
  p_train, p_warm = stepper(config), stepper(warmup_config(config))
  base_rng = state.rng
  rstate = replicate(state)
  del state

  bar = tqdm(total=num_steps, initial=start, disable=not config.train.progress_bar or jax.process_index() != 0,
             unit='step', dynamic_ncols=True)
  t_window, window, pending_stop, done = time.perf_counter(), [], None, start
  warned_fill = False

  def flush_window():
    """Log the window's metrics; with nonfinite='stop', stop at a non-finite step."""
    nonlocal t_window, window, warned_fill
    if not window:
      return
    scalars, bad = _window_summary(window)
    dt = time.perf_counter() - t_window
    ips = len(window) * config.train.batch_size / dt
    step = window[-1][0]
    scalars.update(step=step, lr=float(learning_rate_schedule(config)(step - 1)), images_per_sec=ips)
    _log_metrics(workdir, scalars)
    bar.set_postfix(loss=f'{scalars["loss"]:.4f}', img_s=f'{ips:.0f}')
    t_window, window = time.perf_counter(), []
    if scalars.get('lattice_fill_max', 0.0) > 1.0 and not warned_fill:
      warned_fill = True
      print(f'warning: at step {step} a training image needed {scalars["lattice_fill_max"]:.2f}x '
            f'model.crf.lattice_capacity ({config.model.crf.lattice_capacity}) CRF-RNN lattice '
            'rows: points past it are dropped; raise it or set it to 0 (worst case). '
            'Warned once; metrics.jsonl logs lattice_fill_max per window.')
    if bad:
      first, row = bad[0]
      terms = ', '.join(f'{k}={v:.4g}' for k, v in row.items() if k != 'nonfinite')
      if config.train.nonfinite == 'stop':
        raise NonFiniteError(f'non-finite loss or gradient at step {first} ({terms}); its update was '
                             f'not applied and no checkpoint after step {first - 1} was written')
      print(f'warning: skipped {len(bad)} non-finite step(s) up to step {step}, first {first} ({terms})')

  with PreemptionGuard() as guard, _finish_saves_on_error(mngr):
    for step in range(start, num_steps):
      batch = shard(next(batches))
      step_fn = p_warm if step < config.train.warmup_steps else p_train
      stop = np.full((jax.local_device_count(),), guard.signal is not None, np.int32)
      rstate, aux, stop_all = step_fn(rstate, batch, step_rngs(base_rng, step), stop)
      done = step + 1
      window.append((done, aux))
      bar.update(1)
      if done % config.train.log_every == 0 or done == num_steps:
        flush_window()
      if (done % config.train.checkpoint_every == 0 or done == num_steps
          or done == config.train.warmup_steps):  # (train.init_from starts other runs there)
        flush_window()
        save_state(mngr, jax_utils.unreplicate(rstate))
      # The previous step's summed flag (already computed: reading it does not stall the queue).
      if pending_stop is not None and int(pending_stop[0]):
        break
      pending_stop = stop_all
  bar.close()
  if done < num_steps:
    flush_window()
    save_state(mngr, jax_utils.unreplicate(rstate))
    finish_saves(mngr)
    mngr.close()
    print(f'preempted: saved a checkpoint at step {done} in {workdir}; rerun the same command to resume')
    return {'preempted': True, 'step': done}
  finish_saves(mngr)
  params = jax_utils.unreplicate(rstate).params
  result = evaluate(params, config, config.eval.split, workdir=workdir,
                    step=num_steps)
  print(f'{config.eval.split} mIoU: {100 * result["miou"]:.2f}')
  mngr.close()
  return result


def image_scores(params, config, split: str = 'val') -> tuple[np.ndarray, np.ndarray]:
  """Sigmoid image-level scores (N, C) of the foreground classes on `split` (the model's head) and
  its tags (N, C) as booleans, gathered over all processes."""
  ds = data.make_dataset(config.data, split)
  p_scores = jax.pmap(lambda p, x: jax.nn.sigmoid(model.forward(p, x, config, train=False)['image_logits'][:, 1:]),
                      axis_name=AXIS)
  rparams = jax_utils.replicate(params)
  scores, tags, valid = [], [], []
  for batch in _eval_stream(ds, config, config.eval.num_examples or None):
    s = np.asarray(p_scores(rparams, shard({'image': batch['image']})['image']))
    scores.append(s.reshape(len(batch['valid']), -1))
    tags.append(batch['tags'] > 0)
    valid.append(batch['valid'] > 0)
  scores, tags, valid = np.concatenate(scores), np.concatenate(tags), np.concatenate(valid)
  if jax.process_count() > 1:  # every process sees all of the split
    scores, tags, valid = (np.asarray(multihost_utils.process_allgather(x)).reshape((-1,) + x.shape[1:])
                           for x in (scores, tags, valid))
  return scores[valid], tags[valid]


def tune_class_threshold(scores: np.ndarray, tags: np.ndarray) -> tuple[float, float]:
  """The sigmoid threshold on the FCL scores (N, C) that best predicts the tags (N, C) of the
  val split (mean per-class F1 over a 0.05..0.95 grid): inference has no tags (Sec. 7).
  Returns (threshold, its F1)."""
  best = (0.5, -1.0)
  for t in np.arange(0.05, 0.951, 0.05):
    pred = scores > t
    tp = (pred & tags).sum(0)
    f1 = np.mean(2 * tp / np.maximum(pred.sum(0) + tags.sum(0), 1))
    if f1 > best[1] + 1e-9:
      best = (float(round(t, 2)), float(f1))
  return best


def eval_dataset(config, split: str):
  """The dataset of an eval split; an empty one is a ConfigError."""
  ds = data.make_dataset(config.data, split)
  if not len(ds):
    raise ConfigError(f'the {split} split of data "{config.data.name}" has no examples')
  return ds


def _eval_stream(ds, config, limit):
  """This process's share of the eval batches (padded to data.eval_size for variable-size images)."""
  return data.eval_batches(ds, config.eval.batch_size, process_index=jax.process_index(),
                           process_count=jax.process_count(), limit=limit,
                           pad_to=data.eval_pad_size(config.data))


# The paper's Table 2 row (PASCAL VOC 2012 val, per-class IoU %), printed under ours for VOC.
PAPER_VOC_VAL = ('Roy&Todorovic', (85.8, 65.2, 29.4, 63.8, 31.2, 37.2, 69.6, 64.3, 76.2, 21.4, 56.3, 29.8,
                                   68.2, 60.6, 66.2, 55.8, 30.8, 66.1, 34.9, 48.8, 47.1, 52.8))


PART_NAMES = {'miou_cnn': 'CNN (argmax p^S)', 'miou_attention': 'attention (argmax p^A)'}


def evaluate(params, config, split: str, *, workdir: str | None = None, step: int | None = None,
             limit: int | None = None, variant: str = '') -> dict[str, Any]:
  """mIoU on `split` (all processes and devices pooled); writes the table/JSON/PNG to workdir.

  Images are scored at their original resolution (padding is ignored by the metrics and
  cropped off predictions). On a split without labels (VOC test) it writes the predictions
  as VOC palette PNGs for the evaluation server instead (see `write_server_results`).
  """
  ds = eval_dataset(config, split)
  tag_metrics = {}
  if config.train.mode == 'weak':
    scores, tags = image_scores(params, config, 'val')
    ap = metrics.average_precision(scores, tags)
    tag_metrics = {'tag_map': float(np.nanmean(ap)),
                   'tag_ap': {n: (None if np.isnan(v) else float(v))
                              for n, v in zip(list(ds.class_names)[1:], ap)}}
    if config.eval.tune_threshold:
      threshold, f1 = tune_class_threshold(scores, tags)
      config = copy.deepcopy(config)
      with config.unlocked():
        config.eval.class_threshold = threshold
      tag_metrics['tag_f1'] = f1
      print(f'class threshold {threshold:.2f} (tag F1 {f1:.3f} on val)')
    print(f'image classification on val: mAP {100 * tag_metrics["tag_map"]:.1f} ('
          + ', '.join(f'{n} {100 * v:.0f}' for n, v in tag_metrics['tag_ap'].items() if v is not None) + ')')
  p_eval = jax.pmap(lambda p, b: eval_step(p, b, config), axis_name=AXIS)
  rparams = jax_utils.replicate(params)
  k = config.data.num_classes + 1
  confs = {}
  shown, predictions = [], {}
  limit = limit if limit is not None else (config.eval.num_examples or None)
  unlabelled = split == 'test' and hasattr(ds, 'name')
  lattice_rows = 0
  for batch in _eval_stream(ds, config, limit):
    c, size, pred = p_eval(rparams, shard({kk: batch[kk] for kk in ('image', 'tags', 'mask')}))
    lattice_rows = max(lattice_rows, int(np.asarray(size)[0]))
    for name, m in c.items():
      confs[name] = confs.get(name, 0) + np.asarray(m[0], np.int64)
    if len(shown) < config.eval.num_images or unlabelled:
      pred = {kk: np.asarray(v).reshape(batch['mask'].shape) for kk, v in pred.items()}
      sizes = batch.get('size', np.tile(batch['mask'].shape[1:], (len(batch['mask']), 1)))
      for i in np.nonzero(batch['valid'])[0]:
        h, w = sizes[i]
        if unlabelled:
          predictions[ds.name(int(batch['index'][i]))] = pred['final'][i, :h, :w]
        if len(shown) < config.eval.num_images:
          shown.append([batch['image'][i, :h, :w]] + [pred[kk][i, :h, :w] for kk in ('attention', 'cnn', 'final')
                                                      if kk in pred] + [batch['mask'][i, :h, :w]])
  names = list(ds.class_names)
  conf = confs.get('final', np.zeros((k, k), np.int64))
  iou = metrics.iou_per_class(conf)
  # The parts of the pipeline on their own (diagnostics: what the CRF-RNN adds to p^S, how good
  # the attention map for the predicted classes is).
  parts = {f'miou_{name}': metrics.mean_iou(m) for name, m in confs.items() if name != 'final'}
  result = {'split': split, 'variant': variant, 'step': step, 'miou': metrics.mean_iou(conf), **parts,
            'class_threshold': float(config.eval.class_threshold),
            **tag_metrics,
            'model_crf': {kk: config.model.crf[kk] for kk in CRF_INFERENCE_KEYS},
            'iou': {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
            'confusion': conf.tolist()}
  capacity = config.model.crf.lattice_capacity
  if capacity and lattice_rows:
    result['lattice_fill'] = lattice_rows / capacity
    if lattice_rows > capacity and jax.process_index() == 0:
      print(f'warning: an image of {split} needs {lattice_rows} CRF-RNN lattice rows but '
            f'model.crf.lattice_capacity is {capacity}: lattice points past it were dropped '
            f'(their message mass is lost); raise it or set it to 0 (worst case)')
  suffix = f'{split}_{variant}' if variant else split
  if workdir is not None and unlabelled:
    result['server_archive'] = write_server_results(workdir, suffix, predictions)
  if workdir is not None and jax.process_index() == 0:
    if not unlabelled:
      reference = PAPER_VOC_VAL if config.data.name == 'voc2012' and split == 'val' else None
      print(metrics.format_iou_table(conf, names, title=f'{config.train.mode}@{step}', reference=reference))
      if parts:
        print('mIoU of the parts: ' + ', '.join(f'{PART_NAMES[n]} {100 * v:.2f}' for n, v in parts.items()))
    _atomic_write(os.path.join(workdir, f'eval_{suffix}.json'), json.dumps(result, indent=1))
    visualize.save_grid(os.path.join(workdir, f'examples_{suffix}.png'), shown)
  return result


def write_server_results(workdir: str, suffix: str, predictions: Mapping[str, np.ndarray]) -> str:
  """Write label maps as VOC palette PNGs in the layout the PASCAL VOC evaluation server
  expects (results/VOC2012/Segmentation/comp5_test_cls/<id>.png, comp5: trained on VOC data
  only) under workdir/server_<suffix>/, and pack them into workdir/server_<suffix>.tar.gz
  (written to a temporary name, then renamed). Every process writes its own images; process
  0 packs them. Returns the archive's path."""
  import tarfile  # pylint: disable=import-outside-toplevel
  root = os.path.join(workdir, f'server_{suffix}')
  out = os.path.join(root, 'results', 'VOC2012', 'Segmentation', 'comp5_test_cls')
  os.makedirs(out, exist_ok=True)
  for name, label in predictions.items():
    visualize.save_label_png(os.path.join(out, f'{name}.png'), label)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('server results written')
  archive = os.path.join(workdir, f'server_{suffix}.tar.gz')
  if jax.process_index() == 0:
    tmp = f'{archive}.tmp{os.getpid()}'
    with tarfile.open(tmp, 'w:gz') as tar:
      tar.add(os.path.join(root, 'results'), arcname='results')
    os.replace(tmp, archive)
    print(f'wrote {len(os.listdir(out))} PNGs to {out} and {archive} (upload it to the VOC server)')
  return archive


# CRF-RNN settings that only shape inference (no parameter depends on them), so eval.py --crf
# may change them on a trained model; in training they matter only when a loss reaches the CRF
# or it refines Delta^S's target (train.seg_target = 'crf').
CRF_INFERENCE_KEYS = ('iters', 'sigma_z', 'sigma_r', 'bilateral_weight', 'spatial_weight', 'spatial_sxy')


def evaluate_workdir(workdir: str, split: str | None = None, step: int | None = None,
                     eval_overrides: Mapping[str, Any] | None = None,
                     crf_overrides: Mapping[str, float] | None = None) -> dict[str, Any]:
  """Evaluate the latest (or given) checkpoint of a train.py workdir (the job behind eval.py).

  `eval_overrides` replaces config.eval values ('dense_crf.enabled' style keys for nested
  ones), `crf_overrides` the CRF-RNN's inference settings (CRF_INFERENCE_KEYS); results of a
  variant go to files suffixed with it (see `variant_name`)."""
  if not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} is not a directory')
  config = load_config(workdir)
  eval_overrides = dict(eval_overrides or {})
  crf_overrides = dict(crf_overrides or {})
  with config.unlocked():
    for key, value in crf_overrides.items():
      if key not in CRF_INFERENCE_KEYS:
        raise ConfigError(f'--crf: {key} is not a CRF-RNN inference setting (one of {CRF_INFERENCE_KEYS})')
      config.model.crf[key] = int(value) if key == 'iters' else float(value)
      eval_overrides[f'crf.{key}'] = value  # (for the variant name only)
    for key, value in eval_overrides.items():
      if key.startswith('crf.'):
        continue
      group, _, leaf = ('eval.' + key).rpartition('.')
      node = config
      for part in group.split('.'):
        node = node[part]
      if leaf not in node:
        raise ConfigError(f'unknown eval setting {key}')
      node[leaf] = value
  validate_config(config)
  mngr = checkpoint_manager(workdir, config, read_only=True)
  state = restore_state(mngr, create_state(config, jax.random.key_data(jax.random.key(0))), step)
  split = split or config.eval.split
  result = evaluate(state.params, config, split, workdir=workdir, step=int(state.step),
                    variant=variant_name(eval_overrides, config))
  print(f'{split} mIoU: {100 * result["miou"]:.2f} (step {int(state.step)})')
  mngr.close()
  return result


def variant_name(overrides: Mapping[str, Any], config) -> str:
  """File-name suffix for an inference variant ('' for the config's own settings)."""
  parts = []
  if 'attention' in overrides:
    parts.append('att' if overrides['attention'] else 'noatt')
  if 'dense_crf.enabled' in overrides:
    parts.append('densecrf' if overrides['dense_crf.enabled'] else 'nodensecrf')
  if 'scales' in overrides:
    parts.append('s' + '-'.join(f'{float(x):g}' for x in overrides['scales']))
  if 'flip' in overrides:
    parts.append('flip' if overrides['flip'] else 'noflip')
  if overrides.get('class_threshold') is not None:
    parts.append(f't{float(overrides["class_threshold"]):g}')
  crf = [f'{k[4:]}{float(v):g}' for k, v in sorted(overrides.items()) if k.startswith('crf.')]
  if crf:
    parts.append('crf-' + '-'.join(crf))
  return '_'.join(parts)
