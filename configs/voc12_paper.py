"""The method as printed on PASCAL VOC 2012: configs/voc12_ours.py with every departure of the
project's method reverted to its printed value (configs/paper.py: DEPARTURES lists them with
their sections and equations). Sec. 7's training setup (VGG-16 from ImageNet, SGD, batch 20,
10,000 steps) is voc12_ours.py's.

  python train.py --config=configs/voc12_paper.py --workdir=runs/voc12_paper \\
      --config.data.data_dir=/data/tfds --config.init_weights=/weights/vgg16.safetensors
"""
from configs import paper, voc12_ours


def get_config():
  config = voc12_ours.get_config()
  for changes in paper.DEPARTURES.values():
    paper.apply(config, changes)
  return config
