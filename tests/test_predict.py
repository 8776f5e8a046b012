"""predict.py on images of every awkward kind: outputs at original size, an unreadable file
reported and skipped, nothing written outside --out."""
import os
import shutil

import numpy as np
from PIL import Image

import helpers


def _tree(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_predict_on_awkward_images(tiny_straight, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_straight[0], workdir)
  photos = tmp_path / 'photos'
  photos.mkdir()
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (45, 70, 3)).astype(np.uint8)
  Image.fromarray(rgb).convert('RGBA').save(photos / 'rgba.png')
  Image.fromarray(rgb).convert('L').save(photos / 'gray.png')
  Image.fromarray(rgb).convert('CMYK').save(photos / 'cmyk.jpg')
  Image.fromarray(rng.integers(0, 65536, (33, 50)).astype(np.uint16)).save(photos / 'deep.png')
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
  Image.fromarray(rgb).save(photos / 'rotated.jpg', exif=exif)
  (photos / 'broken.jpg').write_bytes(b'not an image')
  assert Image.open(photos / 'deep.png').mode == 'I;16'
  before_inputs, before_workdir = _tree(photos), _tree(workdir)
  out = tmp_path / 'out'
  res = helpers.run('predict.py', f'--workdir={workdir}', f'--out={out}', '--attention',
                    str(photos))
  assert res.returncode == 0, res.stderr[-3000:]
  assert f'skipped {photos / "broken.jpg"}: cannot read it as an image' in res.stdout
  assert 'wrote predictions for 5 image(s)' in res.stdout
  sizes = {'rgba': (70, 45), 'gray': (70, 45), 'cmyk': (70, 45), 'deep': (50, 33),
           'rotated': (45, 70)}  # (width, height); the EXIF rotation swaps them
  for name, size in sizes.items():
    label = Image.open(out / f'{name}.png')
    assert label.mode == 'P' and label.size == size, name
    overlay = Image.open(out / f'{name}_overlay.png')
    assert overlay.mode == 'RGB' and overlay.size == size, name
    heat = [f for f in os.listdir(out) if f.startswith(f'{name}_attention_')]
    assert heat and all(Image.open(out / f).size == size for f in heat), name
  assert _tree(photos) == before_inputs and _tree(workdir) == before_workdir
  # given tags: the heat maps are exactly those classes'
  tagged = tmp_path / 'tagged'
  res = helpers.run('predict.py', f'--workdir={workdir}', f'--out={tagged}', '--attention',
                    '--tags=bee,fox', str(photos / 'gray.png'))
  assert res.returncode == 0, res.stderr[-3000:]
  assert sorted(os.listdir(tagged)) == ['gray.png', 'gray_attention_bee.png',
                                        'gray_attention_fox.png', 'gray_overlay.png']
  assert set(np.unique(np.asarray(Image.open(tagged / 'gray.png')))) <= {0, 2, 6}
