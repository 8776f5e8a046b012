"""A seconds-long smoke config (tests, debugging): 32 px images, a 1/16-width one-conv-per-block
net."""
from configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 32
  config.data.train_size = 256
  config.data.val_size = 16
  config.data.test_size = 16
  config.data.tune_size = 16
  config.model.backbone.width = 0.0625
  config.model.backbone.depth = (1, 1, 1, 1, 1)
  config.model.backbone.fc6_dilation = 1
  config.train.batch_size = 4
  config.train.num_steps = 4
  config.train.warmup_steps = 2
  config.train.checkpoint_every = 2
  config.train.log_every = 2
  config.train.progress_bar = False
  config.eval.batch_size = 8
  config.eval.num_images = 2
  return config
