"""The independent dense-CRF reference the tests compare against: pydensecrf2's mean field."""
import numpy as np


def pydensecrf_marginals(p, image, *, iters=10, gaussian_sxy=3.0, gaussian_compat=3.0,
                         bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0):
  """pydensecrf2's marginals (H, W, K) for probabilities p (H, W, K) of a uint8 image (H, W, 3):
  unary -log(clip(p, 1e-5, 1)), a Gaussian and a bilateral Potts kernel (crf.dense_crf's setup)."""
  import pydensecrf.densecrf as dcrf  # pylint: disable=import-outside-toplevel
  h, w, k = p.shape
  d = dcrf.DenseCRF2D(w, h, k)
  d.setUnaryEnergy(np.ascontiguousarray(
      -np.log(np.clip(p, 1e-5, 1.0)).transpose(2, 0, 1).reshape(k, -1).astype(np.float32)))
  d.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
  d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb,
                         rgbim=np.ascontiguousarray(image), compat=bilateral_compat)
  return np.array(d.inference(iters)).reshape(k, h, w).transpose(1, 2, 0)
