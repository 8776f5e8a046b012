"""Training and evaluation loops (Secs. 6-7): pmap data parallelism, orbax checkpoints.

`train_and_evaluate(config, workdir)` is the whole job behind `train.py`;
`evaluate_workdir(workdir, split)` is the job behind `eval.py`. `train_step`
is a pure function of (state, batch, rng) stepped with `jax.pmap` over the
local devices; gradients are averaged with `lax.pmean`, so D devices with
per-device batch B/D take the same step as one device with batch B.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import jax_utils
from flax.training import train_state
from tqdm.auto import tqdm

from wsss_jax import aggregation, backbone, data, losses, metrics, model, visualize

AXIS = 'batch'
MODES = ('weak', 'fully_supervised')


class ConfigError(ValueError):
  """A config or workdir problem, reported to the user as one line."""


class TrainState(train_state.TrainState):
  """Flax TrainState plus the base PRNG key (checkpointed with the rest)."""
  rng: jax.Array


# ---------------------------------------------------------------------------------------------
# Config and workdir checks.

# Every key a config may hold; a key outside this tree is a typo and is refused.
SCHEMA = {
    'seed': None,
    'data': {'name': None, 'image_size': None, 'num_classes': None, 'train_size': None,
             'val_size': None, 'test_size': None, 'seed': None, 'generator': '*',
             'num_threads': None},
    'model': {'backbone': {'width': None, 'depth': None, 'fc_features': None,
                           'fc6_dilation': None, 'dropout_rate': None},
              'aggregation': None, 'lse_r': None, 'aggregate_input': None, 'cls_from': None,
              'attention': {'enabled': None, 'neighbors': None, 'lateral': None, 'radius': None,
                            'eps': None, 'qp_tol': None, 'qp_iters': None, 'stop_at': None,
                            'gradient': None, 'max_classes': None, 'background': None,
                            'bg_power': None},
              'crf': {'enabled': None, 'attention_unary': None, 'iters': None, 'sigma_z': None,
                      'sigma_r': None, 'bilateral_weight': None, 'spatial_weight': None,
                      'spatial_sxy': None, 'lattice_capacity': None}},
    'train': {'mode': None, 'warmup_steps': None, 'seg_loss_weight': None, 'seg_loss_on': None, 'optimizer': None, 'batch_size': None, 'num_steps': None, 'learning_rate': None,
              'momentum': None, 'weight_decay': None, 'lr_decay_every': None,
              'lr_decay_factor': None, 'checkpoint_every': None, 'keep_checkpoints': None,
              'log_every': None, 'progress_bar': None},
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
  if t['optimizer'] not in ('sgd', 'adam'):
    raise ConfigError(f'config.train.optimizer must be sgd|adam, got {t["optimizer"]!r}')
  if m['aggregation'] not in aggregation.HEADS:
    raise ConfigError(f'config.model.aggregation must be one of {aggregation.HEADS}, got {m["aggregation"]!r}')
  if m['aggregate_input'] not in ('scores', 'log_softmax'):
    raise ConfigError(f'config.model.aggregate_input must be scores|log_softmax, '
                      f'got {m["aggregate_input"]!r}')
  choices = {'model.cls_from': (m['cls_from'], ('cnn', 'crf')),
             'model.attention.lateral': (m['attention']['lateral'], ('diffusion', 'paper_eq9')),
             'model.attention.gradient': (m['attention']['gradient'], ('stop', 'through')),
             'model.attention.background': (m['attention']['background'], ('walk', 'complement')),
             'train.seg_loss_on': (t['seg_loss_on'], ('crf', 'cnn'))}
  for key, (value, allowed) in choices.items():
    if value not in allowed:
      raise ConfigError(f'config.{key} must be one of {allowed}, got {value!r}')
  if m['cls_from'] == 'crf' and not m['crf']['enabled']:
    raise ConfigError('config.model.cls_from=crf needs config.model.crf.enabled=True')
  if not config['eval']['scales'] or any(float(x) <= 0 for x in config['eval']['scales']):
    raise ConfigError(f'config.eval.scales must be positive numbers, got {config["eval"]["scales"]!r}')
  for key in ('batch_size', 'num_steps', 'checkpoint_every', 'keep_checkpoints', 'log_every'):
    if int(t[key]) < 1:
      raise ConfigError(f'config.train.{key} must be >= 1, got {t[key]}')
  n_dev = jax.device_count()
  if t['batch_size'] % n_dev or config['eval']['batch_size'] % n_dev:
    raise ConfigError(f'config.train.batch_size ({t["batch_size"]}) and config.eval.batch_size '
                      f'({config["eval"]["batch_size"]}) must be divisible by the {n_dev} devices')


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


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ConfigError(f'{path} not found: is {workdir} a workdir written by train.py?')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path} is not valid JSON ({e})') from None


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
  decay_mask = lambda params: {k: jax.tree.map(lambda _: k != 'crf', v) for k, v in params.items()}
  return optax.chain(optax.add_decayed_weights(t.weight_decay, mask=decay_mask), opt)


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
  if 'attention' in out and lam:
    crf_used |= config.train.seg_loss_on == 'crf' and 'crf_probs' in out
    seg = out['crf_probs'] if crf_used else out['p_s']
    seg_loss = jnp.mean(losses.segmentation_loss(out['attention'], seg, tags))
    metrics_['seg_loss'] = seg_loss
    loss = loss + lam * seg_loss
  if crf_used and config.model.crf.lattice_capacity:  # (an unused CRF-RNN is not computed)
    metrics_['lattice_fill'] = out['lattice_size'].astype(jnp.float32) / config.model.crf.lattice_capacity
  metrics_['loss'] = loss
  return loss, metrics_


def warmup_config(config):
  """The config of the first train.warmup_steps steps: Delta^C only (no attention, no Delta^S),
  the role ImageNet pre-training plays in the paper (attention of an untrained net is noise)."""
  warm = copy.deepcopy(config)
  with warm.unlocked():
    warm.model.attention.enabled = False
    warm.train.seg_loss_weight = 0.0
    warm.model.cls_from = 'cnn'
  return warm


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, config):
  """One SGD step on this device's shard; gradients are averaged across the pmap axis."""
  grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
  (_, aux), grads = grad_fn(state.params, batch, rng, config)
  grads = jax.lax.pmean(grads, AXIS)
  aux = jax.lax.pmean(aux, AXIS)
  return state.apply_gradients(grads=grads), aux


def eval_step(params, batch, config):
  """Confusion matrix of this shard, summed over all devices (and processes), and the label
  maps (final, CNN, attention argmax) for the PNG grid."""
  k = config.data.num_classes + 1
  pred = model.infer(params, batch['image'], config)
  conf = metrics.confusion_matrix(batch['mask'], pred['final'], k)
  return jax.lax.psum(conf, AXIS), pred


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

def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'checkpoints')), options=opts,
                               item_handlers=ocp.StandardCheckpointHandler())


def restore_state(mngr: ocp.CheckpointManager, template: TrainState, step: int | None = None) -> TrainState:
  """Restore the latest (or given) checkpoint into `template`'s structure.

  The stored parameter shapes are compared with the configured model first
  (from metadata, without reading arrays), so a checkpoint of another
  architecture gives one clear error instead of an orbax traceback.
  """
  step = mngr.latest_step() if step is None else step
  if step is None or step not in mngr.all_steps():
    raise ConfigError(f'no checkpoint{"" if step is None else f" for step {step}"} in {mngr.directory}')
  where = f'checkpoint step {step} in {mngr.directory}'
  meta = mngr.item_metadata(step)
  tree = getattr(meta, 'tree', meta)
  if not isinstance(tree, Mapping) or 'params' not in tree:
    raise ConfigError(f'{where} does not hold a wsss-jax TrainState')
  stored = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, jnp.float32), tree['params'])
  try:
    backbone.check_params(stored, template.params, where)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return mngr.restore(step, args=ocp.args.StandardRestore(template))


def save_state(mngr: ocp.CheckpointManager, state: TrainState) -> None:
  step = int(state.step)
  if step not in mngr.all_steps():
    mngr.save(step, args=ocp.args.StandardSave(state))


# ---------------------------------------------------------------------------------------------
# Loops.

def _log_metrics(workdir: str, record: Mapping[str, Any]) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train per `config` in `workdir` (resuming from its latest checkpoint), then evaluate on val."""
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

  state = create_state(config, jax.random.key_data(jax.random.key(config.seed)))
  mngr = checkpoint_manager(workdir, config)
  if mngr.latest_step() is not None:
    state = restore_state(mngr, state)
    print(f'resumed from step {int(state.step)} in {workdir}')
  start = int(state.step)
  num_steps = config.train.num_steps

  train_ds = data.make_dataset(config.data, 'train')
  batches = data.train_batches(train_ds, global_batch=config.train.batch_size, seed=config.seed,
                               start_step=start, process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               num_threads=config.data.num_threads)
  p_train = jax.pmap(lambda s, b, r: train_step(s, b, r, config), axis_name=AXIS, donate_argnums=(0,))
  warm_config = warmup_config(config)
  p_warm = jax.pmap(lambda s, b, r: train_step(s, b, r, warm_config), axis_name=AXIS,
                    donate_argnums=(0,))
  base_rng = state.rng
  rstate = jax_utils.replicate(state)
  del state

  bar = tqdm(total=num_steps, initial=start, disable=not config.train.progress_bar or jax.process_index() != 0,
             unit='step', dynamic_ncols=True)
  t_window, n_window, aux = time.perf_counter(), 0, None
  for step in range(start, num_steps):
    batch = shard(next(batches))
    step_fn = p_warm if step < config.train.warmup_steps else p_train
    rstate, aux = step_fn(rstate, batch, step_rngs(base_rng, step))
    n_window += 1
    done = step + 1
    if done % config.train.log_every == 0 or done == num_steps:
      scalars = {k: float(v[0]) for k, v in jax.device_get(aux).items()}
      dt = time.perf_counter() - t_window
      ips = n_window * config.train.batch_size / dt
      scalars.update(step=done, lr=float(learning_rate_schedule(config)(step)), images_per_sec=ips)
      _log_metrics(workdir, scalars)
      bar.set_postfix(loss=f'{scalars["loss"]:.4f}', img_s=f'{ips:.0f}')
      t_window, n_window = time.perf_counter(), 0
    bar.update(1)
    if done % config.train.checkpoint_every == 0 or done == num_steps:
      save_state(mngr, jax_utils.unreplicate(rstate))
  bar.close()
  mngr.wait_until_finished()
  params = jax_utils.unreplicate(rstate).params
  result = evaluate(params, config, config.eval.split, workdir=workdir,
                    step=num_steps)
  print(f'{config.eval.split} mIoU: {100 * result["miou"]:.2f}')
  mngr.close()
  return result


def tune_class_threshold(params, config, split: str = 'val') -> tuple[float, float]:
  """The sigmoid threshold on the FCL scores that best predicts the tags of `split`
  (mean per-class F1 over a 0.05..0.95 grid): inference has no tags (Sec. 7). Returns
  (threshold, its F1)."""
  ds = data.make_dataset(config.data, split)
  p_scores = jax.pmap(lambda p, x: jax.nn.sigmoid(model.forward(p, x, config, train=False)['image_logits'][:, 1:]),
                      axis_name=AXIS)
  rparams = jax_utils.replicate(params)
  scores, tags = [], []
  for batch in data.eval_batches(ds, config.eval.batch_size, process_index=jax.process_index(),
                                 process_count=jax.process_count(),
                                 limit=config.eval.num_examples or None):
    s = np.asarray(p_scores(rparams, shard({'image': batch['image']})['image']))
    keep = batch['valid'] > 0
    scores.append(s.reshape(len(keep), -1)[keep])
    tags.append(batch['tags'][keep] > 0)
  scores, tags = np.concatenate(scores), np.concatenate(tags)
  best = (0.5, -1.0)
  for t in np.arange(0.05, 0.951, 0.05):
    pred = scores > t
    tp = (pred & tags).sum(0)
    f1 = np.mean(2 * tp / np.maximum(pred.sum(0) + tags.sum(0), 1))
    if f1 > best[1] + 1e-9:
      best = (float(round(t, 2)), float(f1))
  return best


def evaluate(params, config, split: str, *, workdir: str | None = None, step: int | None = None,
             limit: int | None = None, variant: str = '') -> dict[str, Any]:
  """mIoU on `split` (all processes and devices pooled); writes the table/JSON/PNG to workdir."""
  ds = data.make_dataset(config.data, split)
  threshold = None
  if config.eval.tune_threshold and config.train.mode == 'weak':
    threshold, f1 = tune_class_threshold(params, config)
    config = copy.deepcopy(config)
    with config.unlocked():
      config.eval.class_threshold = threshold
    print(f'class threshold {threshold:.2f} (tag F1 {f1:.3f} on val)')
  p_eval = jax.pmap(lambda p, b: eval_step(p, b, config), axis_name=AXIS)
  rparams = jax_utils.replicate(params)
  k = config.data.num_classes + 1
  conf = np.zeros((k, k), np.int64)
  shown = []
  limit = limit if limit is not None else (config.eval.num_examples or None)
  for batch in data.eval_batches(ds, config.eval.batch_size, process_index=jax.process_index(),
                                 process_count=jax.process_count(), limit=limit):
    c, pred = p_eval(rparams, shard({kk: v for kk, v in batch.items() if kk != 'valid'}))
    conf += np.asarray(c[0], np.int64)
    if len(shown) < config.eval.num_images:
      pred = {kk: np.asarray(v).reshape(batch['mask'].shape) for kk, v in pred.items()}
      for i in np.nonzero(batch['valid'])[0][:config.eval.num_images - len(shown)]:
        shown.append([batch['image'][i]] + [pred[kk][i] for kk in ('attention', 'cnn', 'final')
                                             if kk in pred] + [batch['mask'][i]])
  names = list(ds.class_names)
  iou = metrics.iou_per_class(conf)
  result = {'split': split, 'variant': variant, 'step': step, 'miou': metrics.mean_iou(conf),
            'class_threshold': float(config.eval.class_threshold),
            'iou': {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
            'confusion': conf.tolist()}
  if workdir is not None and jax.process_index() == 0:
    table = metrics.format_iou_table(conf, names, title=f'{config.train.mode}@{step}')
    print(table)
    suffix = f'{split}_{variant}' if variant else split
    _atomic_write(os.path.join(workdir, f'eval_{suffix}.json'), json.dumps(result, indent=1))
    visualize.save_grid(os.path.join(workdir, f'examples_{suffix}.png'), shown)
  return result


def evaluate_workdir(workdir: str, split: str | None = None, step: int | None = None,
                     eval_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Evaluate the latest (or given) checkpoint of a train.py workdir (the job behind eval.py).

  `eval_overrides` replaces config.eval values ('dense_crf.enabled' style keys for nested
  ones); results of a variant go to files suffixed with it (see `variant_name`)."""
  if not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} is not a directory')
  config = load_config(workdir)
  eval_overrides = dict(eval_overrides or {})
  with config.unlocked():
    for key, value in eval_overrides.items():
      group, _, leaf = ('eval.' + key).rpartition('.')
      node = config
      for part in group.split('.'):
        node = node[part]
      if leaf not in node:
        raise ConfigError(f'unknown eval setting {key}')
      node[leaf] = value
  validate_config(config)
  mngr = checkpoint_manager(workdir, config)
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
  return '_'.join(parts)
