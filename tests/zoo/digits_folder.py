"""A folder of real handwritten digits nobody here trained on: scikit-learn's copy of the UCI optical digits
(1,797 scans from 43 writers, 8x8 pixels of 17 grey levels), written as PNG files in dataset.name='folder''s layout.
The last 360 scans, of writers the first ones do not share, are the test split."""

import pathlib

import numpy as np
from PIL import Image

TEST_IMAGES = 360


def write(root) -> pathlib.Path:
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)
  root = pathlib.Path(root)
  for n, (image, label) in enumerate(zip(images, digits.target)):
    split = "test" if n >= len(images) - TEST_IMAGES else "train"
    folder = root / split / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "L").save(folder / f"{n}.png")
  return root
