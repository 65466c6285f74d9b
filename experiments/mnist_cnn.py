"""Seed 004's recipe: the small CNN, Adam 1e-3, batch 32, 5 epochs, 10% of training held out for validation."""

from fluxdigits.config import defaults


def get_config():
  config = defaults()
  config.dataset.name = "mnist"
  config.dataset.photos = "digit"  # predict reads photos of digits the way MNIST was made
  config.model.name = "cnn"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 32
  config.num_epochs = 5
  config.validation_fraction = 0.1
  return config
