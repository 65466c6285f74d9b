"""ResNet-18 on CIFAR-10, aiming at >= 93% test accuracy on a GPU or TPU (not verified: never run to the end here).

The standard recipe: pad-crop-flip augmentation, SGD with Nesterov momentum 0.9, peak rate 0.1
with warm-up and cosine decay, weight decay 5e-4, label smoothing 0.1, 40 epochs on all 50,000
training images. A CPU takes too long for it (benchmarks/cifar10.py projects the run from a partial
epoch: docs/performance.md). Without a prepared CIFAR-10
(TFDS_DATA_DIR), tfds downloads it: pip install -e '.[prepare]' first.
"""

from fluxdigits.config import defaults


def get_config():
  config = defaults()
  config.dataset.name = "cifar10"
  config.dataset.standardize = True
  config.model.name = "resnet"
  config.model.kwargs.depth = 18
  config.augment.name = "cifar"
  config.optimizer.name = "momentum"
  config.optimizer.nesterov = True
  config.optimizer.learning_rate = 0.1
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 2.0
  config.label_smoothing = 0.1
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 40
  config.validation_fraction = 0.0
  return config
