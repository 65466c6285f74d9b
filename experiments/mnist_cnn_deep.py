"""Two conv blocks (32-32-pool, 64-64-pool), dropout, digit augmentation and a one-cycle Adam schedule."""

from fluxdigits.config import defaults


def get_config():
  config = defaults()
  config.dataset.name = "mnist"
  config.dataset.photos = "digit"  # predict reads photos of digits the way MNIST was made
  config.model.name = "cnn_deep"
  config.model.dropout_rate = 0.25
  config.augment.name = "digits"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 3e-3
  config.schedule.name = "one_cycle"
  config.batch_size = 128
  config.microbatches = 4  # the same gradient in slices that fit a CPU's cache: faster there (benchmarks/NOTES.md)
  config.num_epochs = 12
  config.patience = 4
  return config
