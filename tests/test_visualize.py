"""Overlays, attention heat maps and the example grid (titles, legend) against numpy."""
import numpy as np
from PIL import Image

from wsss_jax import visualize


def test_overlay_tints_labelled_pixels_only():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
  labels = np.zeros((6, 7), np.int64)
  labels[1:3, 2:5], labels[4, :] = 8, 255
  got = visualize.overlay(image, labels, alpha=0.5).astype(int)
  pal = visualize.voc_palette().astype(np.float32)
  want = image.astype(np.float32).copy()
  want[1:3, 2:5] = 0.5 * image[1:3, 2:5] + 0.5 * pal[8]
  np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_heat_overlay_is_scaled_to_its_peak_over_the_grey_image():
  image = np.full((2, 3, 3), 90, np.uint8)
  heat = np.array([[0.0, 0.1, 0.2], [0.05, 0.15, 0.2]], np.float32)
  got = visualize.heat_overlay(image, heat, alpha=1.0)
  assert tuple(got[0, 2]) == (255, 255, 255) and tuple(got[0, 0]) == (0, 0, 0)  # peak white
  assert tuple(got[0, 1]) == (255, 127, 0)  # half the peak: red full, green half (m = 0.5)


def test_example_grid_has_titles_a_legend_and_heat_maps(tmp_path):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (40, 60, 3)).astype(np.uint8)
  labels = np.zeros((40, 60), np.int64)
  labels[5:20, 5:30] = 3
  labels[25:35, 30:55] = 12
  attention = np.zeros((40, 60, 21), np.float32)
  attention[5:20, 5:30, 3] = 1.0
  names = ['background'] + [f'class{c}' for c in range(1, 21)]
  path = str(tmp_path / 'grid.png')
  visualize.save_examples(path, [{'image': image, 'cnn': labels, 'final': labels, 'truth': labels,
                                  'attention': attention, 'classes': [3]}], names, scale=3)
  grid = np.asarray(Image.open(path))
  scale = 3  # (60 px tiles at scale 3 are 180 px wide: wide enough for their titles)
  tile_w = 60 * scale
  assert grid.shape[1] == 5 * tile_w  # image, CNN, final, truth, p^A of class 3
  pal = visualize.voc_palette()
  legend = grid[-18:]
  for c in (0, 3, 12):  # a swatch of every class the label maps show
    assert np.all(legend == pal[c], -1).sum() >= 64, c
  assert not np.all(legend == pal[1], -1).any()  # (a class not shown)
  band = grid[:14]  # the titles: dark text on a white band
  assert (band == 255).all(-1).mean() > 0.5 and (band < 80).all(-1).sum() > 50
  heat = grid[14:14 + 40 * scale, 4 * tile_w:]
  grey = image[10, 10].astype(np.float32).mean()
  peak = np.uint8(0.4 * grey + 0.6 * 255.0)  # class 3's peak: white at the default alpha 0.6
  assert np.all(heat[10 * scale, 10 * scale] == peak)
  away = np.uint8(0.4 * image[30, 50].astype(np.float32).mean())  # outside: the grey image only
  assert np.all(heat[30 * scale, 50 * scale] == away)
