"""Seed 004's CNN (conv 32 3x3 VALID, ReLU, 2x2 max-pool, Dense 64, ReLU, Dense 10, Glorot-uniform kernels) written
with flax's own layers, in Linen and in NNX: what benchmarks/flax_apis.py trains beside the built-in `cnn`."""

import flax.linen as nn
from flax import nnx

GLOROT = nn.initializers.glorot_uniform()


class LinenCNN(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3), padding="VALID", kernel_init=GLOROT)(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(64, kernel_init=GLOROT)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes, kernel_init=GLOROT)(x)


class NNXCNN(nnx.Module):
  def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 32, (3, 3), padding="VALID", kernel_init=GLOROT, rngs=rngs)
    self.hidden = nnx.Linear(13 * 13 * 32, 64, kernel_init=GLOROT, rngs=rngs)
    self.logits = nnx.Linear(64, num_classes, kernel_init=GLOROT, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.conv(x)), (2, 2), (2, 2))
    return self.logits(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))
