"""For your own handwriting: mnist_cnn_deep trained on digits distorted the way other writers, pens and cameras
distort them (slant, size and aspect, stroke width, blur, contrast, noise, European 1s and 7s, closed-top 4s), three in
ten of them traced by a thin pen and prepared as a photo is, for 15 epochs.

Each distortion was kept by measuring MNIST's test split, MNIST-C's corruptions and ../shared/data/real-digits
with and without it; elastic distortion (augment.elastic) lowered both and is left out (benchmarks/NOTES.md,
"Handwriting").
"""

import pathlib

from fluxdigits import config as configs


def get_config():
  config = configs.load(str(pathlib.Path(__file__).with_name("mnist_cnn_deep.py")))
  config.augment.max_scale = 0.15
  config.augment.max_aspect = 0.15
  config.augment.max_shear = 0.3
  config.augment.max_stroke = 0.8
  config.augment.max_blur = 1.0
  config.augment.min_contrast = 0.5
  config.augment.max_noise = 0.1
  config.augment.european_ones = 0.5
  config.augment.closed_fours = 0.5
  config.augment.crossed_sevens = 0.5
  config.augment.pen_traced = 0.3  # a photo's prepared strokes have one width: without these, thin-pen 9s read as 4
  config.num_epochs = 15
  config.patience = 0  # the whole one-cycle schedule: it ends where it is best
  return config
