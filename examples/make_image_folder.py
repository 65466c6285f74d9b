"""Writes real Fashion-MNIST images as a folder of PNG files, the layout dataset.name='folder' reads.

  python examples/make_image_folder.py OUT [--train-per-class 500] [--test-per-class 100]

OUT/train/<class>/<n>.png and OUT/test/<class>/<n>.png, from the prepared tfds copy in $TFDS_DATA_DIR.
"""

import argparse
import pathlib

import numpy as np
from PIL import Image

from fluxdigits import data


def write_folder(out, train_per_class: int, test_per_class: int, data_dir=None) -> pathlib.Path:
  out = pathlib.Path(out)
  names = [n.replace("/", "-") for n in data.tfds_class_names("fashion_mnist", data_dir)]  # T-shirt/top: no folder
  for split, per_class in (("train", train_per_class), ("test", test_per_class)):
    examples = data.read_tfds_split("fashion_mnist", split, data_dir, use_cache=True, log=lambda line: None)
    for label, name in enumerate(names):
      folder = out / split / name
      folder.mkdir(parents=True, exist_ok=True)
      for n, index in enumerate(np.flatnonzero(examples.labels == label)[:per_class]):
        Image.fromarray(examples.images[index, :, :, 0], "L").save(folder / f"{n}.png")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("out", help="the folder to write")
  parser.add_argument("--train-per-class", type=int, default=500)
  parser.add_argument("--test-per-class", type=int, default=100)
  args = parser.parse_args()
  out = write_folder(args.out, args.train_per_class, args.test_per_class)
  print(f"wrote {out}/train and {out}/test")


if __name__ == "__main__":
  main()
