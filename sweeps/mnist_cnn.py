"""Seed 003's tuning of the digit CNN, as one command: batch size, optimizer, learning rate, dropout.

The base is seed 004's CNN (experiments/mnist_cnn.py) with dropout after the pool and the dense
layer (cnn_dropout), trained 3 epochs a trial. Each optimizer gets a learning-rate range where it
can work: plain and momentum SGD need rates 10-100x those of Adam and RMSprop.

  python -m fluxdigits.tune sweeps/mnist_cnn.py --trials 20
"""

import pathlib

from fluxdigits import config as configs


def get_config():
  config = configs.load(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "mnist_cnn.py")
  config.model.name = "cnn_dropout"
  config.num_epochs = 3
  config.checkpoint.keep = 1  # the latest and the best: 20 trials stay small on disk
  return config


def space(trial):
  trial.suggest_categorical("batch_size", [32, 64, 128])
  optimizer = trial.suggest_categorical("optimizer.name", ["sgd", "momentum", "adam", "rmsprop"])
  if optimizer in ("sgd", "momentum"):
    trial.suggest_float("optimizer.learning_rate", 3e-3, 3e-1, log=True)
  else:
    trial.suggest_float("optimizer.learning_rate", 1e-4, 1e-2, log=True)
  trial.suggest_float("model.dropout_rate", 0.0, 0.5)
