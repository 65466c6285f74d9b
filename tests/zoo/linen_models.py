"""Linen models as people write them, not with fluxdigits.layers: the zoo every command must take (test_zoo.py)."""

from functools import partial

import flax.linen as nn


class PooledCNN(nn.Module):
  """max_pool and avg_pool called positionally, as Flax's docs call them, and Dropout."""

  num_classes: int
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2), "SAME")
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)


class ResidualNet(nn.Module):
  """Strided convolutions, BatchNorm and a residual add."""

  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda: nn.BatchNorm(use_running_average=not train)
    x = nn.relu(norm()(nn.Conv(16, (3, 3), strides=2, use_bias=False)(x)))
    y = nn.relu(norm()(nn.Conv(16, (3, 3), use_bias=False)(x)))
    y = norm()(nn.Conv(16, (3, 3), use_bias=False)(y))
    x = nn.relu(x + y)
    return nn.Dense(self.num_classes)(x.mean((1, 2)))


class NormNet(nn.Module):
  """LayerNorm and GroupNorm; the mode argument named `training`."""

  num_classes: int

  @nn.compact
  def __call__(self, x, training: bool = False):
    x = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(16, (3, 3))(x)))
    x = nn.relu(nn.LayerNorm()(nn.Conv(32, (3, 3), strides=2)(x)))
    return nn.Dense(self.num_classes)(x.mean((1, 2)))


class GeluSwishNet(nn.Module):
  """gelu and swish activations, no dropout and no mode argument."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Conv(16, (3, 3))(x))
    x = nn.swish(nn.Conv(32, (3, 3), strides=2)(x))
    return nn.Dense(self.num_classes)(x.mean((1, 2)))


class SequentialNet(nn.Module):
  """nn.Sequential of layers and activations."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    features = nn.Sequential(
      [
        nn.Conv(16, (3, 3)),
        nn.relu,
        nn.Conv(32, (3, 3), strides=2),
        nn.relu,
        partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2)),
      ]
    )
    return nn.Dense(self.num_classes)(features(x).mean((1, 2)))
