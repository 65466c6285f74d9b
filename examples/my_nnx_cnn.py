"""A model of your own in Flax NNX, as Flax's MNIST tutorial writes it: any nnx.Module whose __init__ takes `rngs`
and whose __call__(x) maps images (N, H, W, C) to logits.

fluxdigits fills `rngs` and, where the constructor takes them, `num_classes` and `dropout_rate`; the experiment's
model.kwargs set the rest. It calls train() before a train step and eval() before evaluation, so BatchNorm and
Dropout need nothing more; a __call__ that takes `rngs` gets the step's dropout stream there.

  python -m fluxdigits.run experiments/mnist_cnn.py --config.model.name=examples/my_nnx_cnn.py:CNN
"""

from functools import partial

from flax import nnx


class CNN(nnx.Module):
  """Two 3x3 convolutions with BatchNorm and 2x2 average pooling, then two Linear layers, for 28x28 images."""

  def __init__(self, num_classes: int, channels: int = 1, dropout_rate: float = 0.1, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, 32, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
    self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear(7 * 7 * 64, 256, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.linear2 = nnx.Linear(256, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.avg_pool(nnx.relu(self.batch_norm1(self.conv1(x))))
    x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
    x = x.reshape(x.shape[0], -1)  # flatten
    return self.linear2(self.dropout(nnx.relu(self.linear1(x))))
