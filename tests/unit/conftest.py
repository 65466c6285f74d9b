"""The fast layer: synthetic data, tiny models, in this process. `pytest -m fast` (or `pytest tests/unit`) runs it."""

import pathlib

import numpy as np
import pytest

IMAGE_SIZE = 28


def pytest_collection_modifyitems(items):
  here = pathlib.Path(__file__).parent
  for item in items:
    if here in pathlib.Path(item.fspath).parents:
      item.add_marker(pytest.mark.fast)


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """n (28, 28) uint8 images of 10 classes: class c is a bright bar in row band c, over noise. Learnable in steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.uint8)
  images = rng.integers(0, 60, (n, IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint8)
  for image, label in zip(images, labels):
    image[2 + 2 * label: 4 + 2 * label, 4:24] = 255
  return images, labels


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  path.write_bytes(header + array.tobytes())


@pytest.fixture(scope="session")
def idx_folder(tmp_path_factory) -> pathlib.Path:
  """MNIST's four IDX files, as Kaggle ships them, holding synthetic_digits: 600 to train on, 200 to test."""
  folder = tmp_path_factory.mktemp("idx")
  for split, n, seed in (("train", 600, 0), ("t10k", 200, 1)):
    images, labels = synthetic_digits(n, seed)
    write_idx(folder / f"{split}-images-idx3-ubyte", images)
    write_idx(folder / f"{split}-labels-idx1-ubyte", labels)
  return folder
