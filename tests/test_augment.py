"""Training augmentation and eval padding keep image and mask aligned."""
import numpy as np
import pytest

from wsss_jax.data import augment

import helpers


def test_augmentation_keeps_image_and_mask_aligned():
  ex, lut = helpers.pattern()
  aug = augment.TrainAugment(crop_size=(40, 48), scale_range=(0.5, 1.5), flip=True)
  shapes = set()
  for seed in range(16):
    out = aug(ex, np.random.default_rng(seed))
    assert out['image'].shape == (40, 48, 3) and out['mask'].shape == (40, 48)
    assert out['image'].dtype == np.uint8 and out['mask'].dtype == np.int32
    assert out['tags'] is ex['tags']  # other keys pass through
    m, img = out['mask'], out['image'].astype(int)
    assert set(np.unique(m).tolist()) <= {0, 3, 7, 12, 19, 255}  # nearest, not blended, labels
    pad = m == 255  # the pattern has no 255 of its own: every 255 is padding
    assert (img[pad] == augment.PAD_RGB).all()
    inner = helpers.interior(m) & ~pad
    assert inner.sum() > 200
    assert np.abs(img[inner] - lut[m[inner]].astype(int)).max() <= 3
    shapes.add(int((m != 255).sum()))
  assert len(shapes) > 5  # scales and crops vary with the generator
  # Scale alone: with a big crop the unpadded region is the image resized by 0.5, at the top left.
  out = augment.TrainAugment(crop_size=(80, 110), scale_range=(0.5, 0.5), flip=False)(
      ex, np.random.default_rng(0))
  rows, cols = np.nonzero(out['mask'] != 255)
  assert rows.min() == 0 and cols.min() == 0
  assert rows.max() + 1 in (18, 19) and cols.max() + 1 in (26, 27)
  assert ((out['mask'][rows.max() + 1:] == 255).all()
          and (out['mask'][:, cols.max() + 1:] == 255).all())
  # Flip and crop alone (scale 1): the output is a window of the input, mirrored about half the
  # time.
  flips, windows = 0, set()
  for seed in range(24):
    for flip in (True, False):
      out = augment.TrainAugment(crop_size=(20, 20), scale_range=(1.0, 1.0), flip=flip)(
          ex, np.random.default_rng(seed))
      found = [(t, l, f) for t in range(18) for l in range(34) for f in (False, True)
               if np.array_equal(out['mask'], (ex['mask'][t:t + 20, l:l + 20])[:, ::-1 if f else 1])
               and np.array_equal(out['image'],
                                  (ex['image'][t:t + 20, l:l + 20])[:, ::-1 if f else 1])]
      assert found, seed
      flips += any(f for _, _, f in found) and not any(not f for _, _, f in found)
      windows.add(found[0][:2])
      if not flip:
        assert any(not f for _, _, f in found)
  assert 6 <= flips <= 18 and len(windows) > 10


def test_pad_to_and_small_images():
  ex, _ = helpers.pattern(10, 12)
  out = augment.pad_to(ex, (16, 20))
  assert out['image'].shape == (16, 20, 3) and out['mask'].shape == (16, 20)
  assert np.array_equal(out['image'][:10, :12], ex['image'])
  assert np.array_equal(out['mask'][:10, :12], ex['mask'])
  assert (out['mask'][10:] == 255).all() and (out['mask'][:, 12:] == 255).all()
  assert ((out['image'][10:] == (124, 117, 104)).all()
          and (out['image'][:, 12:] == (124, 117, 104)).all())
  assert out['size'].tolist() == [10, 12] and out['size'].dtype == np.int32
  with pytest.raises(ValueError, match='10x12'):
    augment.pad_to(ex, (8, 20))
  # An image smaller than the crop: padded with ignore, all of it kept.
  small = augment.TrainAugment(crop_size=CROP, scale_range=(1.0, 1.0), flip=False)(
      ex, np.random.default_rng(0))
  assert small['image'].shape == (CROP, CROP, 3)
  assert np.array_equal(small['mask'][:10, :12], ex['mask']) and (small['mask'] != 255).sum() == 120

CROP = 48
