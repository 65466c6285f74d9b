"""A Linen CNN written as Flax's docs write one (the MNIST example, with the BatchNorm and Dropout guides'
`train` argument), for 8x8 digits: nothing in it knows fluxdigits."""

import flax.linen as nn


class CNN(nn.Module):
  """A simple CNN model."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(features=32, kernel_size=(3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.Conv(features=64, kernel_size=(3, 3))(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))  # flatten
    x = nn.Dense(features=256)(x)
    x = nn.relu(x)
    x = nn.Dropout(rate=0.25, deterministic=not train)(x)
    x = nn.Dense(features=10)(x)
    return x
