"""The baselines of Table 1 and the aggregation heads of Table 5 as one-line variations of the
full method: `python train.py --config=configs/ablation.py:no_att`.

Table 1: no_att (B1), no_seg_loss (B2), no_att_unary (B3), no_neighbor (B4), no_crf_rnn (B5),
no_att_inference (B6), full; no_crf_rnn_fused is B5 under another reading (docs/DESIGN.md,
"B5: which unary the post-processing gets").
Table 5 (full method, other heads): gmp, gap, lse, fcl.
The departure table: printed_<name> is the full method with one departure from the paper
reverted to its printed value (configs/paper.py: DEPARTURES, STAND_INS); walk_dropout walks the
dropout-masked network in training instead of the inference-mode one.
"""
from configs import default, paper


def _no_att(c):  # B1: no top-down attention, so no Delta^S and no attention unary
  c.model.attention.enabled = False
  c.train.seg_loss_weight = 0.0


def _no_seg_loss(c):  # B2: attention only in the CRF-RNN unary (Eq. 11)
  c.train.seg_loss_weight = 0.0


def _no_att_unary(c):  # B3: attention only through Delta^S (Eq. 15)
  c.model.crf.attention_unary = False


def _no_neighbor(c):
  """B4: plain excitation backprop as in [44]: parent-child term only (no lateral QP), the walk
  seeded with the class score, background walked like any class (the printed method's p^A)."""
  c.model.attention.neighbors = False
  paper.apply(c, {**paper.DEPARTURES['seed'], **paper.DEPARTURES['background']})


def _no_crf_rnn(c):
  """B5: no CRF-RNN layer, so no attention unary (Eq. 11 is the CRF-RNN's); DeepLab's dense-CRF
  post-processing [7] of the CNN's p^S instead. Attention acts through Delta^S only."""
  c.model.crf.enabled = False
  c.train.seg_loss_on = 'cnn'
  c.eval.dense_crf.enabled = True
  c.eval.attention = False


def _no_crf_rnn_fused(c):  # B5 read as: dense-CRF post-processing of the fused p^S p^A
  _no_crf_rnn(c)
  c.eval.attention = True


def _no_att_inference(c):  # B6: trained as the full method, no attention in the unary at test time
  c.eval.attention = False


def _printed(changes):
  def apply(c):
    paper.apply(c, changes)
  return apply


def _walk_dropout(c):
  c.model.attention.walk_dropout = True


def _head(name):
  def apply(c):
    c.model.aggregation = name
  return apply


ABLATIONS = {
    'full': lambda c: None,
    'no_att': _no_att,
    'no_seg_loss': _no_seg_loss,
    'no_att_unary': _no_att_unary,
    'no_neighbor': _no_neighbor,
    'no_crf_rnn': _no_crf_rnn,
    'no_crf_rnn_fused': _no_crf_rnn_fused,
    'no_att_inference': _no_att_inference,
    'gmp': _head('gmp'),
    'gap': _head('gap'),
    'lse': _head('lse'),
    'fcl': _head('fcl'),
    **{f'printed_{name}': _printed(changes)
       for name, changes in {**paper.DEPARTURES, **paper.STAND_INS}.items()},
    'walk_dropout': _walk_dropout,
}


def get_config(name: str = 'full'):
  if name not in ABLATIONS:
    raise ValueError(f'unknown ablation {name!r}; choose one of {", ".join(ABLATIONS)}')
  config = default.get_config()
  ABLATIONS[name](config)
  return config
