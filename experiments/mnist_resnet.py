"""CIFAR-style ResNet-20 on MNIST with BatchNorm, digit augmentation and SGD with Nesterov momentum."""

from fluxdigits.config import defaults


def get_config():
  config = defaults()
  config.dataset.name = "mnist"
  config.dataset.photos = "digit"  # predict reads photos of digits the way MNIST was made
  config.model.name = "resnet"
  config.model.kwargs.depth = 20
  config.augment.name = "digits"
  config.optimizer.name = "momentum"
  config.optimizer.nesterov = True
  config.optimizer.learning_rate = 0.1
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = "one_cycle"
  config.batch_size = 128
  config.num_epochs = 4
  config.label_smoothing = 0.1
  return config
