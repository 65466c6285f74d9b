"""The built-in classifiers, as flax.linen modules: `model(x, train)` maps normalised images (N, H, W, C) to logits.

They are built from fluxdigits.layers as any user's model can be. A model may declare what the trainer should know
of it (each optional, read by fluxdigits.registry):
  cpu_batch_split    on a CPU, split each batch over one device per core (long steps of narrow layers gain);
  vectorize_members  on a CPU, step a population's members together under jax.vmap rather than one after another;
  whitened_stem      the name of a first Conv3x3 whose kernel starts as a whitening of training patches.
Adding a built-in model is a class here and a line in BUILTIN.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fluxdigits.layers import BatchNorm, Conv1x1, Conv3x3, Dropout, max_pool_2x2

# Keras' default kernel initialiser: the seed notebooks' recipes (learning rates, epochs) were
# tuned with it. The ResNets keep flax's default, as their reference implementations do.
KERAS_INIT = nn.initializers.glorot_uniform()


class MLP(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  vectorize_members = True  # its small matmuls gain from being batched over members

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128, kernel_init=KERAS_INIT, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(64, kernel_init=KERAS_INIT, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, kernel_init=KERAS_INIT, dtype=self.dtype)(x)


class CNN(nn.Module):
  """Seed 004's CNN: conv 32 3x3 valid, 2x2 max-pool, Dense 64, Dense 10 (dropout optional)."""

  dropout_rate: float = 0.0
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    # Pooling before the ReLU gives the same values (ReLU is monotonic) on a quarter of the elements.
    x = nn.relu(max_pool_2x2(Conv3x3(32, KERAS_INIT, self.dtype)(x)))
    x = x.reshape(x.shape[0], -1)
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(nn.Dense(64, kernel_init=KERAS_INIT, dtype=self.dtype)(x))
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=KERAS_INIT, dtype=self.dtype)(x)


class DeepCNN(nn.Module):
  """Two conv blocks, 32-32-pool and 64-64-pool, then Dense 128 with dropout."""

  dropout_rate: float = 0.25
  features: Sequence[int] = (32, 64)
  num_classes: int = 10
  dtype: Any = jnp.float32
  cpu_batch_split = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in self.features:
      x = nn.relu(Conv3x3(features, KERAS_INIT, self.dtype)(x))
      x = nn.relu(Conv3x3(features, KERAS_INIT, self.dtype)(x))
      x = Dropout(self.dropout_rate, deterministic=not train)(max_pool_2x2(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(128, kernel_init=KERAS_INIT, dtype=self.dtype)(x))
    x = Dropout(self.dropout_rate * 2, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=KERAS_INIT, dtype=self.dtype)(x)


class ResidualBlock(nn.Module):
  features: int
  strides: int
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda relu=False: BatchNorm(not train, relu=relu, dtype=self.dtype)
    conv = lambda strides: Conv3x3(
      self.features, nn.initializers.lecun_normal(), self.dtype, strides, "SAME", use_bias=False
    )
    y = norm(relu=True)(conv(self.strides)(x))
    y = norm()(conv(1)(y))
    if x.shape != y.shape:  # projection shortcut where the stage changes width or resolution
      # Named as the nn.Conv it replaced, so that earlier checkpoints load.
      x = Conv1x1(self.features, self.strides, self.dtype, name="Conv_0")(x)
      x = norm()(x)
    return nn.relu(x + y)


RESNET_STAGES = {20: ((16, 32, 64), 3), 18: ((64, 128, 256, 512), 2)}  # depth -> (stage widths, blocks a stage)


class ResNet(nn.Module):
  """CIFAR-style ResNet: 3x3 stem, no stem pooling, global average pool, BatchNorm.

  depth 20: three stages of 16/32/64 channels, three blocks each (He et al. 2016, section 4.2);
  depth 18: four stages of 64/128/256/512 channels, two blocks each.
  """

  depth: int = 20
  num_classes: int = 10
  dtype: Any = jnp.float32

  @property
  def cpu_batch_split(self):
    # ResNet-18's wide matmuls already keep a CPU's cores busy on one device.
    return self.depth == 20

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.depth not in RESNET_STAGES:
      raise ValueError(f"ResNet depth must be one of {', '.join(map(str, RESNET_STAGES))}, got {self.depth}")
    widths, blocks = RESNET_STAGES[self.depth]
    x = Conv3x3(widths[0], nn.initializers.lecun_normal(), self.dtype, padding="SAME", use_bias=False)(x)
    x = BatchNorm(not train, relu=True, dtype=self.dtype)(x)
    for stage, features in enumerate(widths):
      for block in range(blocks):
        x = ResidualBlock(features, 2 if stage > 0 and block == 0 else 1, self.dtype)(x, train)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x.mean(axis=(1, 2)))


class ConvGroup(nn.Module):
  """airbench's block: conv, 2x2 max-pool, BatchNorm, GELU, conv, BatchNorm, GELU."""

  features: int
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    for pool in (True, False):
      x = Conv3x3(self.features, nn.initializers.lecun_normal(), self.dtype, padding="SAME", use_bias=False)(x)
      x = max_pool_2x2(x) if pool else x
      x = nn.gelu(_airbench_norm(train, self.dtype)(x))
    return x


def _airbench_norm(train, dtype):
  # No learned scale, and statistics that follow the weights quickly: a short run has few steps.
  return BatchNorm(not train, momentum=0.6, use_scale=False, dtype=dtype)


class AirbenchNet(nn.Module):
  """Keller Jordan's airbench94 CIFAR-10 net, widths scaled by `width` (airbench94: 64, so 64-256-256).

  A 3x3 stem of 24 channels (the trainer initialises it with `whitening_kernel`; airbench whitens
  2x2 patches and freezes the stem, this one keeps training), three ConvGroups of width, 4 x width,
  4 x width, a global max-pool, and a linear head whose logits are scaled by 1/9, as in airbench.
  """

  width: int = 64
  num_classes: int = 10
  dtype: Any = jnp.float32
  whitened_stem = "stem"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = Conv3x3(24, nn.initializers.lecun_normal(), self.dtype, padding="SAME", use_bias=False, name="stem")(x)
    x = nn.gelu(_airbench_norm(train, self.dtype)(x))
    for features in (self.width, 4 * self.width, 4 * self.width):
      x = ConvGroup(features, self.dtype)(x, train)
    x = x.max(axis=(1, 2))
    return nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype)(x) / 9


# The names configs give the built-in models (config.model.name); any other name is an import path (registry.py).
BUILTIN = {
  "mlp": MLP,
  "cnn": functools.partial(CNN, dropout_rate=0.0),
  "cnn_dropout": CNN,
  "cnn_deep": DeepCNN,
  "resnet": ResNet,
  "airbench": AirbenchNet,
}
