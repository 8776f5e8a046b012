"""Shared test utilities: the repository root, the tiny config's flags, and one runner for
train.py, eval.py and `python -m` commands in a subprocess."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ['--config=configs/tiny.py', '--config.model.backbone.dropout_rate=0.0']


def env(devices: int = 1) -> dict:
  """This process's environment with `devices` host CPU devices for the child."""
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def run(*args, devices: int = 1, timeout: float = 300, background: bool = False):
  """`python *args` in the repository root (e.g. run('train.py', *flags) or run('-m',
  'wsss_jax.data.voc', ...)) on `devices` host CPU devices, capturing text output. Returns the
  CompletedProcess, or with `background` the running Popen."""
  cmd = [sys.executable, *map(str, args)]
  if background:
    return subprocess.Popen(cmd, cwd=ROOT, env=env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env(devices), capture_output=True, text=True,
                        timeout=timeout)


def last_error_line(result) -> str:
  """The last line of a failed run's stderr (train.py / eval.py report bad input as one line)."""
  lines = result.stderr.strip().splitlines()
  return lines[-1] if lines else ''


def tiny_config(**train):
  """configs/tiny.py without dropout (so that 1- and 2-device runs draw no different masks), with
  config.train overrides."""
  from configs import tiny  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.model.backbone.dropout_rate = 0.0
  config.train.update(train)
  return config


def one_step(config, state, batch, devices):
  """One pmapped train step of `state` on `batch` split over `devices`: (params, loss) of
  device 0."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import jax_utils  # pylint: disable=import-outside-toplevel

  from wsss_jax import trainer  # pylint: disable=import-outside-toplevel
  n = len(devices)
  p = jax.pmap(lambda s, b, r: trainer.train_step(s, b, r, config), axis_name=trainer.AXIS,
               devices=devices)
  sharded = {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
  rngs = jax.random.split(jax.random.key(5), n)
  new, aux = p(jax_utils.replicate(state, devices=devices), sharded, rngs)
  return jax.tree.map(lambda x: np.asarray(x)[0], new.params), float(aux['loss'][0])


def restored(workdir, config, step=None):
  """(step, host state) of a workdir's latest (or given) checkpoint."""
  import jax  # pylint: disable=import-outside-toplevel

  from wsss_jax import checkpointing, trainer  # pylint: disable=import-outside-toplevel
  mngr = checkpointing.checkpoint_manager(workdir, config)
  state = checkpointing.restore_state(
      mngr, trainer.create_state(config, jax.random.key_data(jax.random.key(9))), step)
  mngr.close()
  return int(state.step), jax.device_get(state)


def complete_steps(ckpt_dir):
  """The steps of the complete checkpoints in a checkpoints/ directory."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


# ---------------------------------------------------------------------------------------------
# Fake VOC trees (wsss_jax.data.fake_voc).


def expected_train_aug(fake):
  """train_aug written out independently of voc.train_aug_names."""
  sbd = set(fake.sbd_train) | set(fake.sbd_val) | set(fake.aug_names)
  return sorted((sbd | set(fake.voc_train)) - set(fake.voc_val))


def file_pixels(fake, name):
  """The RGB pixels of a fake tree's image file."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for p in (os.path.join(fake.root, 'VOCdevkit', 'VOC2012', 'JPEGImages', name + '.jpg'),
            os.path.join(fake.root, 'benchmark_RELEASE', 'dataset', 'img', name + '.jpg')):
    if os.path.exists(p):
      return np.asarray(Image.open(p).convert('RGB'))
  raise FileNotFoundError(name)


def interior(mask):
  """Pixels whose 3x3 neighbourhood has one label (away from resampling blur; not on the border,
  whose outside neighbours were cropped away)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  p = np.pad(mask, 1, constant_values=-1)
  same = np.ones(mask.shape, bool)
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      same &= p[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
  return same


def pattern(h=37, w=53):
  """An asymmetric label map and an image whose colour is a function of the label."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  label = np.zeros((h, w), np.int32)
  label[2:15, 3:20] = 3
  label[20:35, 10:18] = 7
  label[5:30, 30:50] = 12
  label[8:12, 40:48] = 19  # gaps between labels: blending labels would make values not drawn here
  lut = np.zeros((256, 3), np.uint8)
  lut[[0, 3, 7, 12, 19]] = [[20, 20, 20], [230, 30, 30], [30, 220, 40], [40, 60, 230],
                            [240, 240, 30]]
  return {'image': lut[label], 'mask': label, 'tags': np.ones(20, np.uint8)}, lut
