"""Layers for any Flax model, fast on a CPU: the parameters and values of nn.Conv, nn.max_pool, nn.Dropout and
nn.BatchNorm, computed in the forms a CPU runs fastest (fluxdigits.cpu), lax's own on a GPU or TPU. A model built
from them gets the built-in models' speed, and its dropout rate may be traced (a population's members may differ in
it); `whitening_kernel` initialises a first 3x3 layer from the data.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from fluxdigits.cpu.forms import batch_norm, bernoulli, conv1x1, conv3x3, max_pool_2x2  # noqa: F401 (max_pool_2x2: a layer)


class Conv3x3(nn.Module):
  """3x3 convolution: the function and parameters of nn.Conv(features, (3, 3), strides, padding, use_bias), computed
  by `conv3x3`."""

  features: int
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  strides: int = 1
  padding: str = "VALID"  # or "SAME", as lax pads: the odd pixel of padding goes after
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features), jnp.float32).astype(self.dtype)
    bias = (
      self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32).astype(self.dtype)
      if self.use_bias
      else None
    )
    return conv3x3(x.astype(self.dtype), kernel, bias, self.strides, self.padding)


class Conv1x1(nn.Module):
  """1x1 convolution without bias: the function and parameters of nn.Conv(features, (1, 1), strides, use_bias=False),
  computed by `conv1x1`."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features), jnp.float32)
    return conv1x1(x.astype(self.dtype), kernel.astype(self.dtype), self.strides)


class BatchNorm(nn.Module):
  """nn.BatchNorm over N, H and W, with its parameters, batch_stats and values, followed by a ReLU when `relu`.

  In training on a CPU with the oneDNN extension, float32: normalisation and ReLU are one oneDNN primitive each way
  (cpu.forms.batch_norm).
  """

  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_scale: bool = True
  relu: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32) if self.use_scale else jnp.ones(features)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(features, jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones(features, jnp.float32))
    y = None
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    elif (fused := batch_norm(x, scale, bias, self.epsilon, self.relu)) is not None:
      y, mean, var = fused
    else:  # flax's statistics: the mean of squares less the squared mean
      mean = x.mean(range(x.ndim - 1), dtype=jnp.float32)
      var = jnp.maximum(0.0, lax.square(x.astype(jnp.float32)).mean(range(x.ndim - 1)) - lax.square(mean))
    if not self.use_running_average and not self.is_initializing():
      running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
      running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
    if y is None:
      y = (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
      y = nn.relu(y) if self.relu else y
    return y.astype(self.dtype or jnp.result_type(x, jnp.float32))


class Dropout(nn.Module):
  """nn.Dropout's masks and values, with a rate that may be traced: a population member's rate is data, not shape.

  On a CPU the masks' bits are computed faster (cpu.forms.bernoulli): the same bits.
  """

  rate: Any
  deterministic: bool

  @nn.compact
  def __call__(self, x):
    if self.deterministic or (isinstance(self.rate, float) and self.rate == 0.0):
      return x
    keep = 1.0 - self.rate
    mask = bernoulli(self.make_rng("dropout"), keep, x.shape)
    return lax.select(mask, x / keep, jnp.zeros_like(x))


def whitening_kernel(images, features: int, eps: float = 5e-4):
  """(3, 3, channels, features) kernel mapping each 3x3 patch onto its top features/2 principal
  directions, scaled to unit variance, and their negations: airbench's patch whitening, which makes
  the first layer's outputs decorrelated from the first step on."""
  n, h, w, c = images.shape
  # The (row, column, channel) order of Conv3x3's patches, so the result reshapes into its kernel.
  patches = jnp.concatenate([images[:, i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3)], axis=-1)
  patches = patches.reshape(-1, 9 * c).astype(jnp.float32)
  eigenvalues, eigenvectors = jnp.linalg.eigh(patches.T @ patches / len(patches))  # ascending order
  top = eigenvectors[:, ::-1][:, : features // 2] / jnp.sqrt(eigenvalues[::-1][: features // 2] + eps)
  return jnp.concatenate([top, -top], axis=1).reshape(3, 3, c, features)
