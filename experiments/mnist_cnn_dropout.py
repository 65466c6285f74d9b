"""Seed 004's CNN with dropout 0.25 after the pooling and the dense layer, trained a little longer."""

from fluxdigits.config import defaults


def get_config():
  config = defaults()
  config.dataset.name = "mnist"
  config.dataset.photos = "digit"  # predict reads photos of digits the way MNIST was made
  config.model.name = "cnn_dropout"
  config.model.dropout_rate = 0.25
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 32
  config.num_epochs = 8
  return config
