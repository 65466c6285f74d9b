"""The dropout CNN on Fashion-MNIST (real runs download it: pip install -e '.[prepare]' first)."""

from fluxdigits.config import defaults


def get_config():
  config = defaults()
  config.dataset.name = "fashion_mnist"
  config.model.name = "cnn_dropout"
  config.model.dropout_rate = 0.25
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 32
  config.num_epochs = 10
  return config
