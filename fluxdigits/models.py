"""The classifiers, as flax.linen modules: `model(x, train=...)` maps normalised images to logits."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

NUM_CLASSES = 10
# Keras' default kernel initialiser: the seed notebooks' recipes (learning rates, epochs) were
# tuned with it. The ResNets keep flax's default, as their reference implementations do.
KERAS_INIT = nn.initializers.glorot_uniform()


def max_pool_2x2(x):
  """2x2 max-pool, stride 2, VALID, written as a reshape and max.

  Same values as nn.max_pool, but its gradient is an elementwise select instead of XLA's
  select-and-scatter, which is several times slower on CPU.
  """
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class MLP(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128, kernel_init=KERAS_INIT, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(64, kernel_init=KERAS_INIT, dtype=self.dtype)(x))
    return nn.Dense(NUM_CLASSES, kernel_init=KERAS_INIT, dtype=self.dtype)(x)


class CNN(nn.Module):
  """Seed 004's CNN: conv 32 3x3 valid, 2x2 max-pool, Dense 64, Dense 10 (dropout optional)."""
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = max_pool_2x2(nn.relu(nn.Conv(32, (3, 3), padding="VALID", kernel_init=KERAS_INIT, dtype=self.dtype)(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(nn.Dense(64, kernel_init=KERAS_INIT, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(NUM_CLASSES, kernel_init=KERAS_INIT, dtype=self.dtype)(x)


class DeepCNN(nn.Module):
  """Two conv blocks, 32-32-pool and 64-64-pool, then Dense 128 with dropout."""
  dropout_rate: float = 0.25
  features: Sequence[int] = (32, 64)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in self.features:
      x = nn.relu(nn.Conv(features, (3, 3), padding="VALID", kernel_init=KERAS_INIT, dtype=self.dtype)(x))
      x = nn.relu(nn.Conv(features, (3, 3), padding="VALID", kernel_init=KERAS_INIT, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(max_pool_2x2(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128, kernel_init=KERAS_INIT, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rate * 2, deterministic=not train)(x)
    return nn.Dense(NUM_CLASSES, kernel_init=KERAS_INIT, dtype=self.dtype)(x)


class ResidualBlock(nn.Module):
  features: int
  strides: int
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    conv = lambda strides: nn.Conv(self.features, (3, 3), (strides, strides), padding="SAME", use_bias=False, dtype=self.dtype)
    y = nn.relu(norm()(conv(self.strides)(x)))
    y = norm()(conv(1)(y))
    if x.shape != y.shape:  # projection shortcut where the stage changes width or resolution
      x = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False, dtype=self.dtype)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """CIFAR-style ResNet: 3x3 stem, no stem pooling, global average pool, BatchNorm.

  depth 20: three stages of 16/32/64 channels, three blocks each (He et al. 2016, section 4.2);
  depth 18: four stages of 64/128/256/512 channels, two blocks each.
  """
  depth: int = 20
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    widths, blocks = {20: ((16, 32, 64), 3), 18: ((64, 128, 256, 512), 2)}[self.depth]
    x = nn.Conv(widths[0], (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)(x))
    for stage, features in enumerate(widths):
      for block in range(blocks):
        x = ResidualBlock(features, 2 if stage > 0 and block == 0 else 1, self.dtype)(x, train)
    return nn.Dense(NUM_CLASSES, dtype=self.dtype)(x.mean(axis=(1, 2)))


def create(config) -> nn.Module:
  dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
  m = config.model
  return {
      "mlp": lambda: MLP(dtype=dtype),
      "cnn": lambda: CNN(dropout_rate=0.0, dtype=dtype),
      "cnn_dropout": lambda: CNN(dropout_rate=m.dropout_rate, dtype=dtype),
      "cnn_deep": lambda: DeepCNN(dropout_rate=m.dropout_rate, dtype=dtype),
      "resnet": lambda: ResNet(depth=m.depth, dtype=dtype),
  }[m.name]()
