"""The fully supervised oracle: the default config trained with pixel cross-entropy on the masks.
Every weakly supervised number is compared with this upper bound."""
from configs import default


def get_config():
  config = default.get_config()
  config.train.mode = 'fully_supervised'
  # the oracle is the CNN alone: no attention, no CRF-RNN (nothing weak to fuse)
  config.model.attention.enabled = False
  config.model.crf.enabled = False
  config.train.warmup_head = ''  # no image-level head acts in the pixel loss
  return config
