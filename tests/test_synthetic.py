"""The embedded synthetic benchmark: determinism and the properties that make it a WSSS
benchmark."""
import numpy as np
import pytest

from wsss_jax.data.synthetic import SyntheticWSSS


@pytest.fixture(scope='module')
def train():
  return SyntheticWSSS('train', 400, seed=7)


def test_same_seed_same_bytes_and_splits_differ(train):
  again = SyntheticWSSS('train', 400, seed=7)
  for i in (0, 17, 399):
    a, b = train[i], again[i]
    for k in ('image', 'tags', 'mask'):
      assert a[k].tobytes() == b[k].tobytes()
  val = SyntheticWSSS('val', 400, seed=7)
  other = SyntheticWSSS('train', 400, seed=8)
  assert train[0]['image'].tobytes() != val[0]['image'].tobytes()
  assert train[0]['image'].tobytes() != other[0]['image'].tobytes()
  assert train[0]['image'].tobytes() != train[1]['image'].tobytes()


def test_example_format_and_tags_match_mask(train):
  assert len(train) == 400 and train.num_classes >= 5
  for i in range(50):
    ex = train[i]
    assert ex['image'].dtype == np.uint8 and ex['image'].shape == (64, 64, 3)
    assert ex['mask'].dtype == np.int32 and ex['mask'].shape == (64, 64)
    present = set(np.unique(ex['mask'])) - {0}
    assert present == {c + 1 for c in np.nonzero(ex['tags'])[0]}
  with pytest.raises(IndexError):
    train[400]


def test_object_counts_scales_and_cooccurrence(train):
  n_classes = np.array([train[i]['tags'].sum() for i in range(400)])
  assert n_classes.min() >= 1 and n_classes.max() <= 3
  assert {1, 2, 3} <= set(n_classes.tolist())
  areas = np.array([(train[i]['mask'] > 0).mean() for i in range(400)])
  assert areas.min() < 0.15 and areas.max() > 0.5  # scale variation
  # Class a co-occurs with its partner (a + C/2) far more often than with another class.
  tags = np.stack([train[i]['tags'] for i in range(400)]).astype(float)
  co = tags.T @ tags
  c = train.num_classes
  partner = np.mean([co[a, (a + c // 2) % c] for a in range(c)])
  others = np.mean([co[a, b] for a in range(c) for b in range(c)
                    if b != a and b != (a + c // 2) % c])
  assert partner > 2 * others


def test_parts_are_small_and_background_is_cluttered(train):
  ious, touching = [], 0
  for i in range(200):
    ex = train.example(i, parts=True)
    for c in range(1, train.num_classes + 1):
      full, part = ex['mask'] == c, ex['part_mask'] == c
      if full.any():
        ious.append((full & part).sum() / (full | part).sum())
    m = ex['mask']
    edge = (m[:, 1:] != m[:, :-1]) & (m[:, 1:] > 0) & (m[:, :-1] > 0)
    touching += bool(edge.any())
  assert np.mean(ious) < 0.15  # part-only segmentation would score low IoU
  assert 10 < touching < 150  # objects overlap (occlude) occasionally, not always
  # Backgrounds are textured, not flat: high per-image variance of background pixels.
  bg_std = [train[i]['image'][train[i]['mask'] == 0].std() for i in range(50)]
  assert np.median(bg_std) > 10


def _single_object_centroids(ds, n):
  out = []
  for i in range(n):
    m = ds[i]['mask']
    if len(set(np.unique(m)) - {0}) == 1 and ds[i]['tags'].sum() == 1:
      ys, xs = np.nonzero(m)
      out.append((ys.mean(), xs.mean()))
  return np.array(out)


def test_center_bias_moves_objects_to_the_middle():
  """center_bias 0 is the default stream, byte for byte; 0.6 puts every single object's centroid
  within [0.36, 0.64] of the image (its centre's window; a symmetric body's centroid is its centre,
  clipping at the border only moves it inwards), which the default does not."""
  base, zero = SyntheticWSSS('val', 60, seed=3), SyntheticWSSS('val', 60, seed=3, center_bias=0.0)
  for i in (0, 31):
    assert base[i]['image'].tobytes() == zero[i]['image'].tobytes()
  s, lo, hi = 64, 0.15 + 0.35 * 0.6, 0.85 - 0.35 * 0.6
  biased = _single_object_centroids(SyntheticWSSS('val', 300, seed=3, center_bias=0.6), 300)
  default = _single_object_centroids(SyntheticWSSS('val', 300, seed=3), 300)
  assert len(biased) > 50 and len(default) > 50
  assert biased.min() >= lo * s - 2.0 and biased.max() <= hi * s + 2.0, (biased.min(), biased.max())
  assert ((default < lo * s - 2.0) | (default > hi * s + 2.0)).any(axis=1).mean() > 0.3


def test_bad_arguments():
  with pytest.raises(ValueError, match='split'):
    SyntheticWSSS('dev')
  with pytest.raises(ValueError, match='num_classes'):
    SyntheticWSSS('train', num_classes=9)
  with pytest.raises(ValueError, match='center_bias'):
    SyntheticWSSS('train', center_bias=1.0)
