"""A model of your own: any flax.linen.Module whose __call__(x, train) maps images (N, H, W, C) to logits.

fluxdigits fills `num_classes` from the dataset; the experiment's model.kwargs set the rest. The layers of
fluxdigits.layers compute what nn.Conv, nn.max_pool and nn.Dropout compute, faster on a CPU.
"""

import flax.linen as nn

from fluxdigits import layers


class SmallCNN(nn.Module):
  num_classes: int
  features: int = 32
  dropout_rate: float = 0.25

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in (self.features, 2 * self.features):
      x = layers.Conv3x3(features, padding="SAME", use_bias=False)(x)
      x = layers.BatchNorm(not train, relu=True)(x)  # nn.BatchNorm and nn.relu, on oneDNN
      x = layers.max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    x = layers.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)
