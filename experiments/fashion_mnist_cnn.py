"""The dropout CNN on Fashion-MNIST, 10 epochs: 91.67% test accuracy (seed 0, on the exact copy in ../shared/tfds).

Without a prepared copy (TFDS_DATA_DIR), tfds downloads it: pip install -e '.[prepare]' first.
"""

from fluxdigits.config import defaults


def get_config():
  config = defaults()
  config.dataset.name = "fashion_mnist"
  config.dataset.photos = "object"
  config.model.name = "cnn_dropout"
  config.model.dropout_rate = 0.25
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 32
  config.num_epochs = 10
  return config
