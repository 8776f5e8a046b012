"""Default config: the full method (Fig. 1: Delta^C + lambda Delta^S, top-down attention with
neighbours, CRF-RNN with the attention unary) on the synthetic benchmark, with a width-reduced
DeepLab-LargeFOV sized for a 2-core CPU. The baselines of Tables 1 and 5 are
configs/ablation.py:<name>."""
import ml_collections

# Keys that never change what a run computes (its parameters and its metrics at every step):
# input threads, where the raw VOC files are (only quoted in messages), which run a shared
# warm-up is read from (bit-identical to training it: tested), and how often to log and save.
BOOKKEEPING = ('data.num_threads', 'data.manual_dir', 'train.init_from', 'train.checkpoint_every',
               'train.keep_checkpoints', 'train.log_every', 'train.progress_bar')
# CRF-RNN settings that shape inference only (no parameter depends on them), so that
# `eval.py --crf` may change them on a trained model; training depends on them only where a loss
# reaches the CRF-RNN or its mean field refines Delta^S's target (config_lib.loss_reaches_crf).
CRF_INFERENCE = ('model.crf.attention_unary', 'model.crf.iters', 'model.crf.sigma_z',
                 'model.crf.sigma_r', 'model.crf.bilateral_weight', 'model.crf.spatial_weight',
                 'model.crf.spatial_sxy')
# What does not act in the Delta^C warm-up (the first train.warmup_steps steps train without
# attention, Delta^S or the CRF-RNN, classifying from the CNN scores; a group stands for its keys).
NOT_IN_WARMUP = ('model.attention', 'model.cls_from', 'model.crf', 'train.seg_loss_weight',
                 'train.seg_loss_on', 'train.seg_target', 'train.seg_target_stride',
                 'train.num_steps')


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.init_weights = ''  # ImageNet VGG-16 file for conv1_1..fc7 (wsss_jax/weights.py);
                            # '' = random

  config.data = ml_collections.ConfigDict()
  config.data.name = 'synthetic'
  config.data.image_size = 64
  config.data.num_classes = 6
  config.data.train_size = 20000
  config.data.val_size = 500
  config.data.test_size = 500
  config.data.tune_size = 500  # the split that chooses inference settings (never reported)
  config.data.seed = 0
  # The synthetic world's generator (wsss_jax/data/synthetic.py: SyntheticWSSS's arguments).
  config.data.generator = ml_collections.ConfigDict()
  config.data.generator.max_objects = 3        # objects per image: 1..max_objects
  config.data.generator.scale_range = (0.35, 0.7)  # body diameter / image side
  config.data.generator.part_scale = 0.3       # part diameter / body short axis
  config.data.generator.clutter = 4            # at most this many part-less background blobs
  config.data.generator.clutter_body_prob = 0.3  # ... each in a body colour with this probability
  config.data.generator.cooccur_prob = 0.5     # class a co-occurs with a + C/2
                                               # with this probability
  config.data.generator.noise_std = 6.0        # pixel noise
  config.data.generator.min_visible = 12       # pixels an object needs to count as tagged
  config.data.generator.center_bias = 0.0      # 0: object centres uniform; > 0: a centre prior
  config.data.num_threads = 1
  # Real data (configs/voc12_ours.py): TFDS data dir, raw VOCdevkit/SBD dir, training split,
  # augmentation (crop, random scale, flip; crop_size 0 = none) and the eval padding size
  # (0 = none).
  config.data.data_dir = ''
  config.data.manual_dir = ''
  config.data.train_split = 'train'
  config.data.crop_size = 0
  config.data.scale_range = (1.0, 1.0)
  config.data.flip = False
  config.data.eval_size = 0
  # A folder of <id>.png label maps in SegmentationClassAug/ (pseudo_labels.py writes them) that
  # replace the train split's masks: a fully supervised second stage on pseudo-labels.
  config.data.train_masks = ''

  config.model = ml_collections.ConfigDict()
  config.model.backbone = ml_collections.ConfigDict()
  config.model.backbone.width = 0.25         # VGG 64..512 -> 16..128 channels, fc 1024 -> 256
  config.model.backbone.depth = (1, 1, 2, 2, 2)  # convs per VGG block (paper: 2, 2, 3, 3, 3)
  config.model.backbone.fc_features = 1024
  config.model.backbone.fc6_dilation = 2     # paper: 12 on 41x41 maps; 8x8 maps here
  config.model.backbone.dropout_rate = 0.5
  config.model.aggregation = 'fcl'           # fcl | gap | gmp | lse (Table 5)
  # The FCL's form (the paper gives none): linear in f (GAP at init) | lse (per-position
  # log-weights inside LSE's sum, LSE at init; docs/DESIGN.md, "FCL form").
  config.model.fcl_form = 'lse'
  config.model.lse_r = 5.0
  config.model.aggregate_input = 'scores'    # scores (f, Sec. 3) | log_softmax (log p^S)
  config.model.cls_from = 'cnn'              # Delta^C on the FCL of: cnn scores |
                                             # crf (CRF-RNN logits)

  # Top-down attention p^A (Sec. 4, Eqs. 2-9).
  config.model.attention = ml_collections.ConfigDict()
  config.model.attention.enabled = True      # False: baseline B1 (w/o att)
  config.model.attention.neighbors = True    # False: baseline B4 (w/o neighbour, plain EB)
  config.model.attention.lateral = 'diffusion'  # diffusion | paper_eq9 (docs/DESIGN.md)
  config.model.attention.radius = 3
  config.model.attention.eps = 1.0           # diffusion strength: Q = (1 + eps) I - A
                                             # (docs/DESIGN.md)
  config.model.attention.qp_tol = 1e-3
  config.model.attention.qp_iters = 50
  config.model.attention.stop_at = 'pool4'
  # The training walk uses the dropout-masked activations (True) or the inference-mode network
  # (False), as the walk at test time and the reference implementations do.
  config.model.attention.walk_dropout = False
  config.model.attention.gradient = 'stop'   # stop (p^A is a target) |
                                             # through (QP's implicit grads)
  # Classes walked per image, background included (a static bound: the walk and QP cost scale
  # with it). 0: the data's bound, the most tags an image of the training split has, plus one
  # (synthetic: generator.max_objects + 1; VOC: recorded by the dataset builder). A training
  # image with more tags than the bound is an error naming it; at inference the predicted
  # classes are the best-scoring ones within the bound.
  config.model.attention.max_classes = 0
  config.model.attention.background = 'complement'  # p^A(bg) = (1 - max fg)^bg_power |
                                                    # walk (own EB)
  config.model.attention.bg_power = 1.0
  # b = gamma + w alpha (Eq. 7's alpha is the same for every class; 1 as printed, 0 chosen on
  # world 0; what it is worth on held-out worlds: docs/RESULTS.md, the departure table)
  config.model.attention.feedforward_weight = 0.0
  config.model.attention.top_signal = 'exclusive'  # seed of the walk: scores (relu f, Eq. 6) |
                                                   # exclusive (each cell seeds the class
                                                   # winning it)

  # CRF-RNN (Sec. 5, Eqs. 10-12).
  config.model.crf = ml_collections.ConfigDict()
  config.model.crf.enabled = True            # False: no CRF-RNN (B5 uses dense-CRF post-processing)
  config.model.crf.attention_unary = True    # False: baseline B3 (unary -log p^S)
  config.model.crf.iters = 3                 # Sec. 7
  # Eq. (8)'s bilateral kernel = pydensecrf's usual one (sxy 80 -> 20 for 64 px images, srgb 13,
  # weight 10; sxy = sigma_z / sqrt 2). It acts only at inference here (no loss reaches the CRF).
  config.model.crf.sigma_z = 28.3            # Eq. (8), pixels
  config.model.crf.sigma_r = 18.4            # Eq. (8), on RGB 0..255
  config.model.crf.bilateral_weight = 10.0
  config.model.crf.spatial_weight = 0.0      # an extra spatial-only kernel
                                             # (CRF-RNN has one; the paper not)
  config.model.crf.spatial_sxy = 3.0
  # lattice rows per image (0: worst case N(d+1) = 24576 at 64 px). Synthetic 64 px images need
  # <= 3169 with these kernels (64 val images); lattice_fill = rows needed / cap (> 1 drops mass).
  config.model.crf.lattice_capacity = 6144

  config.train = ml_collections.ConfigDict()
  config.train.mode = 'weak'                 # weak (Delta^C + lambda Delta^S) | fully_supervised
  config.train.warmup_steps = 1300           # Delta^C-only steps first
                                             # (stands in for ImageNet init)
  # A workdir whose checkpoint at step warmup_steps starts this run, when both runs' warm-ups
  # are the same computation (checked): ablations share one warm-up (bench/ablations.py).
  config.train.init_from = ''
  # Head Delta^C goes through in the warm-up ('' = model.aggregation). A stand-in for ImageNet
  # pre-training is one classifier for every row of Tables 1 and 5; the FCL then starts the
  # main phase at its init (docs/DESIGN.md, "Stand-ins of this machine").
  config.train.warmup_head = 'lse'
  config.train.fcl_lr_scale = 1.0           # the FCL's lr multiplier (Caffe's lr_mult)
  config.train.seg_loss_weight = 1.5         # lambda of Eq. (13); 0: baseline B2 (w/o seg loss)
  config.train.seg_loss_on = 'cnn'           # Delta^S on p^S (Eq. 15) |
                                             # crf (CRF-RNN output, Sec. 1)
  config.train.seg_target = 'attention'      # Delta^S's target: p^A (Eq. 15) | crf (p^A after the
                                             # CRF-RNN's mean field, fixed; not in the paper; its
                                             # step time: bench/step_time.py)
  config.train.seg_target_stride = 1         # seg_target = crf: its mean field on
                                             # stride x stride blocks
  config.train.optimizer = 'adam'            # adam (a stand-in: docs/DESIGN.md) |
                                             # sgd (paper, Sec. 7)
  config.train.batch_size = 32
  config.train.num_steps = 1650             # about 7.5 min on a 2-core CPU (docs/PERFORMANCE.md)
  config.train.learning_rate = 0.001
  config.train.momentum = 0.9
  config.train.weight_decay = 5e-4
  config.train.lr_decay_every = 1500
  config.train.lr_decay_factor = 0.1
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2
  config.train.log_every = 50
  config.train.progress_bar = True
  config.train.nonfinite = 'skip'            # non-finite loss/gradient: skip the update (counted in
                                             # metrics.jsonl as nonfinite_steps) |
                                             # stop with an error

  config.eval = ml_collections.ConfigDict()
  config.eval.split = 'val'
  config.eval.batch_size = 50
  config.eval.num_examples = 0   # 0 = the whole split
  config.eval.num_images = 8     # rows in the PNG grid
  config.eval.attention = True   # attention in the CRF unary at inference; False: baseline B6
  config.eval.class_threshold = 0.5  # sigmoid score above which a class is predicted present
  config.eval.tune_threshold = True  # ... chosen on the tags of eval.tune_split
                                     # instead (best mean F1)
  # The split whose tags choose the class threshold: never the split a number is reported on
  # (synthetic: 'tune', its own stream of images; VOC: no split is set aside, no tuning).
  config.eval.tune_split = 'tune'
  config.eval.scales = (1.0,)    # multi-scale inference: p^S averaged over these scales
  config.eval.flip = False       # ... and their horizontal flips
  config.eval.dense_crf = ml_collections.ConfigDict()  # dense-CRF post-processing (B5)
  config.eval.dense_crf.enabled = False
  config.eval.dense_crf.iters = 10
  config.eval.dense_crf.gaussian_sxy = 3.0
  config.eval.dense_crf.gaussian_compat = 3.0
  config.eval.dense_crf.bilateral_sxy = 20.0   # 80 on VOC-sized images; 64 px images here
  config.eval.dense_crf.bilateral_srgb = 13.0
  config.eval.dense_crf.bilateral_compat = 10.0
  return config
