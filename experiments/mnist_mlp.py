"""A dense network on MNIST: Dense 128-ReLU, Dense 64-ReLU, Dense 10; Adam 1e-3, batch 32, 5 epochs."""

from fluxdigits.config import defaults


def get_config():
  config = defaults()
  config.dataset.name = "mnist"
  config.dataset.photos = "digit"  # predict reads photos of digits the way MNIST was made
  config.model.name = "mlp"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 32
  config.num_epochs = 5
  return config
