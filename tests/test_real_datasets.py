"""Fashion-MNIST and CIFAR-10 as prepared in TFDS_DATA_DIR (../shared/tfds): short real runs, the real class names."""

import os
import pathlib

import pytest
from conftest import EXPERIMENTS, read_summary

from fluxdigits import data, run


def data_dir_with(name) -> str:
  data_dir = os.environ["TFDS_DATA_DIR"]
  if not (pathlib.Path(data_dir) / name).is_dir():
    pytest.skip(f"{name} is not prepared in TFDS_DATA_DIR={data_dir}")
  return data_dir


@pytest.mark.parametrize(
  "name, names",
  [
    ("mnist", tuple("0123456789")),
    (
      "fashion_mnist",
      ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    ("cifar10", ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
  ],
)
def test_class_names_come_from_the_prepared_dataset(name, names):
  assert data.tfds_class_names(name, data_dir_with(name)) == names


def train_briefly(experiment, workdir, *overrides) -> dict:
  assert run.main([str(EXPERIMENTS / experiment), "--workdir", str(workdir), "--config.num_epochs=1", *overrides]) == 0
  return read_summary(workdir)


def test_fashion_mnist_cnn_learns_real_fashion_mnist(tmp_path):
  data_dir_with("fashion_mnist")
  summary = train_briefly("fashion_mnist_cnn.py", tmp_path, "--config.dataset.max_train_examples=6000")
  assert summary["test_examples"] == 10_000 and summary["test_accuracy"] >= 0.75, summary  # chance: 10%
  per_class = (tmp_path / "report" / "per_class.csv").read_text()
  assert "T-shirt/top" in per_class and "Ankle boot" in per_class


def test_cifar10_fast_learns_real_cifar10(tmp_path):
  data_dir_with("cifar10")
  # Narrow, one epoch on 8,192 images, no report and no test-time flip: the test pass over all 10,000
  # test images costs as much as the training. The report's class names are checked on Fashion-MNIST.
  summary = train_briefly(
    "cifar10_fast.py",
    tmp_path,
    "--config.dataset.max_train_examples=8192",
    "--config.model.kwargs.width=16",
    "--config.test_time_flip=false",
    "--config.report=false",
  )
  assert summary["test_examples"] == 10_000 and summary["test_accuracy"] >= 0.30, (
    summary
  )  # chance: 10%; 35.4% on 2 Xeon cores
