"""NNX models as people write them: the zoo's other half (test_zoo.py). Each takes the images' channels and
fluxdigits' num_classes; global average pooling keeps them to any image size."""

from functools import partial

from flax import nnx


class PooledCNN(nnx.Module):
  """max_pool and avg_pool called positionally, and Dropout holding its rngs."""

  def __init__(self, num_classes: int, channels: int = 1, dropout_rate: float = 0.1, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.head = nnx.Linear(32, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2), "SAME")
    return self.head(self.dropout(x.mean((1, 2))))


class ResidualNet(nnx.Module):
  """Strided convolutions, BatchNorm and a residual add."""

  def __init__(self, num_classes: int, channels: int = 1, *, rngs: nnx.Rngs):
    self.stem = nnx.Conv(channels, 16, (3, 3), strides=2, use_bias=False, rngs=rngs)
    self.norm0 = nnx.BatchNorm(16, rngs=rngs)
    self.conv1 = nnx.Conv(16, 16, (3, 3), use_bias=False, rngs=rngs)
    self.norm1 = nnx.BatchNorm(16, rngs=rngs)
    self.conv2 = nnx.Conv(16, 16, (3, 3), use_bias=False, rngs=rngs)
    self.norm2 = nnx.BatchNorm(16, rngs=rngs)
    self.head = nnx.Linear(16, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.norm0(self.stem(x)))
    y = self.norm2(self.conv2(nnx.relu(self.norm1(self.conv1(x)))))
    return self.head(nnx.relu(x + y).mean((1, 2)))


class NormNet(nnx.Module):
  """LayerNorm and GroupNorm."""

  def __init__(self, num_classes: int, channels: int = 1, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, 16, (3, 3), rngs=rngs)
    self.group_norm = nnx.GroupNorm(16, num_groups=4, rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
    self.layer_norm = nnx.LayerNorm(32, rngs=rngs)
    self.head = nnx.Linear(32, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.group_norm(self.conv1(x)))
    x = nnx.relu(self.layer_norm(self.conv2(x)))
    return self.head(x.mean((1, 2)))


class GeluSwishNet(nnx.Module):
  """gelu and swish activations, no dropout."""

  def __init__(self, num_classes: int, channels: int = 1, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
    self.head = nnx.Linear(32, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.swish(self.conv2(nnx.gelu(self.conv1(x)))).mean((1, 2)))


class SequentialNet(nnx.Module):
  """nnx.Sequential of layers and activations, and Dropout given its rngs at the call."""

  def __init__(self, num_classes: int, channels: int = 1, *, rngs: nnx.Rngs):
    self.features = nnx.Sequential(
      nnx.Conv(channels, 16, (3, 3), rngs=rngs),
      nnx.relu,
      nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs),
      nnx.relu,
      partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2)),
    )
    self.dropout = nnx.Dropout(0.1)
    self.head = nnx.Linear(32, num_classes, rngs=rngs)

  def __call__(self, x, rngs: nnx.Rngs | None = None):
    return self.head(self.dropout(self.features(x).mean((1, 2)), rngs=rngs))
