"""Constants shared by the data, the model and the metrics: the label of ignored pixels and the
pixel statistics the network standardises its input with."""
import numpy as np

# PASCAL VOC's 'void' label: boundaries and padding; never counted by the metrics or the losses.
IGNORE_LABEL = 255

# ImageNet RGB mean and std on the 0..255 scale (numpy: no JAX backend at import).
PIXEL_MEAN = np.array([123.68, 116.78, 103.94], np.float32)
PIXEL_STD = np.array([58.4, 57.1, 57.4], np.float32)
# Padding colour of crops and eval buckets: the mean, so padding is ~0 after standardisation.
PAD_RGB = tuple(int(round(float(v))) for v in PIXEL_MEAN)
