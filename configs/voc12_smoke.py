"""configs/voc12_ours.py shrunk to seconds, for the fake VOC tree the tests generate
(`python -m wsss_jax.data.fake_voc --root=DIR`, then build it with wsss_jax.data.voc)."""
from configs import voc12_ours


def get_config():
  config = voc12_ours.get_config()
  d = config.data
  d.data_dir = ''                             # set --config.data.data_dir
  d.image_size = d.crop_size = 48
  d.eval_size = 128                           # fake images are at most 100 px
  d.num_threads = 1
  m = config.model
  m.backbone.width = 0.0625
  m.backbone.depth = (1, 1, 1, 1, 1)
  m.backbone.fc_features = 1024
  m.backbone.fc6_dilation = 1
  m.crf.lattice_capacity = 0
  t = config.train
  t.batch_size = 4
  t.num_steps = 3
  t.checkpoint_every = 2
  t.log_every = 1
  t.progress_bar = False
  e = config.eval
  e.batch_size = 2
  e.num_images = 2
  return config
