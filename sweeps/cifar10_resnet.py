"""Tuning the CIFAR-10 ResNet-18 recipe (experiments/cifar10_resnet.py) around its published values.

Trials train 10 epochs with 10% of the training split held out for validation (the recipe
itself trains on all of it); the chosen config is then trained the full 40 epochs with
`--config.num_epochs=40`. Meant for an accelerator: a trial takes hours on a CPU.

  python -m fluxdigits.tune sweeps/cifar10_resnet.py --trials 30 --pruner hyperband
"""

import pathlib

from fluxdigits import config as configs


def get_config():
  config = configs.load(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "cifar10_resnet.py")
  config.validation_fraction = 0.1
  config.num_epochs = 10
  config.checkpoint.keep = 1
  return config


def space(trial):
  trial.suggest_categorical("batch_size", [128, 256])
  trial.suggest_float("optimizer.learning_rate", 0.02, 0.4, log=True)
  trial.suggest_float("optimizer.weight_decay", 1e-4, 1e-3, log=True)
  trial.suggest_float("label_smoothing", 0.0, 0.2)
  trial.suggest_float("schedule.warmup_epochs", 0.0, 3.0, step=0.5)
