"""Default config: weakly supervised baseline B1 (classification loss only) on the
synthetic benchmark with a width-reduced DeepLab-LargeFOV, sized for a 2-core CPU."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = 'synthetic'
  config.data.image_size = 64
  config.data.num_classes = 6
  config.data.train_size = 20000
  config.data.val_size = 500
  config.data.test_size = 500
  config.data.seed = 0
  config.data.generator = ml_collections.ConfigDict()  # extra SyntheticWSSS knobs
  config.data.num_threads = 1

  config.model = ml_collections.ConfigDict()
  config.model.backbone = ml_collections.ConfigDict()
  config.model.backbone.width = 0.25         # VGG 64..512 -> 16..128 channels, fc 1024 -> 256
  config.model.backbone.depth = (1, 1, 2, 2, 2)  # convs per VGG block (paper: 2, 2, 3, 3, 3)
  config.model.backbone.fc_features = 1024
  config.model.backbone.fc6_dilation = 2     # paper: 12 on 41x41 maps; 8x8 maps here
  config.model.backbone.dropout_rate = 0.5
  config.model.aggregation = 'fcl'           # fcl | gap | gmp | lse (Table 5)
  config.model.lse_r = 5.0
  config.model.aggregate_input = 'scores'    # scores (f, Sec. 3) | log_softmax (log p^S)

  config.train = ml_collections.ConfigDict()
  config.train.mode = 'weak'                 # weak (B1: Delta^C only) | fully_supervised
  config.train.optimizer = 'adam'            # adam (CPU default, see docs/DESIGN.md) | sgd (paper, Sec. 7)
  config.train.batch_size = 32
  config.train.num_steps = 1500
  config.train.learning_rate = 0.001
  config.train.momentum = 0.9
  config.train.weight_decay = 5e-4
  config.train.lr_decay_every = 1000
  config.train.lr_decay_factor = 0.1
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2
  config.train.log_every = 50
  config.train.progress_bar = True

  config.eval = ml_collections.ConfigDict()
  config.eval.split = 'val'
  config.eval.batch_size = 50
  config.eval.num_examples = 0   # 0 = the whole split
  config.eval.num_images = 8     # rows in the PNG grid
  return config
