"""The fully supervised oracle: the default config trained with pixel cross-entropy on the masks.
Every weakly supervised number is compared with this upper bound."""
from configs import default


def get_config():
  config = default.get_config()
  config.train.mode = 'fully_supervised'
  return config
