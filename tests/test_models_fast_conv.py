"""The CPU-fast layers compute what flax's own layers compute, and their gradients match."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluxdigits import cpu, layers
from fluxdigits.models import KERAS_INIT


@pytest.mark.parametrize(
  "channels, features, strides, padding, use_bias",
  [
    (1, 32, 1, "VALID", True),
    (3, 8, 1, "VALID", True),
    (32, 64, 1, "VALID", True),
    (3, 16, 1, "SAME", False),
    (16, 32, 2, "SAME", False),
    (4, 8, 2, "VALID", True),
    (16, 16, 1, "SAME", False),
    (16, 8, 1, "VALID", True),
    (48, 8, 1, "SAME", True),
  ],
)
# Odd and even output sizes: winograd_conv3x3 crops an odd one.
@pytest.mark.parametrize("height, width", [(11, 8), (12, 9)])
def test_conv3x3_matches_flax_conv_with_the_same_parameters(
  channels, features, strides, padding, use_bias, height, width
):
  x = jax.random.normal(jax.random.key(0), (2, height, width, channels))
  fast = layers.Conv3x3(features, KERAS_INIT, strides=strides, padding=padding, use_bias=use_bias)
  reference = nn.Conv(features, (3, 3), (strides, strides), padding=padding, use_bias=use_bias, kernel_init=KERAS_INIT)
  params = fast.init(jax.random.key(1), x)
  reference_params = reference.init(jax.random.key(1), x)
  # Same parameter shapes and the same initial values for the same key: checkpoints and seeds carry over.
  jax.tree.map(np.testing.assert_array_equal, params, reference_params)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)

  def loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply(params, x)))

  # Winograd's transforms round differently from a direct sum: errors of ~2e-6 of the largest value.
  def assert_close(actual, desired):
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=2e-5 * np.abs(desired).max())

  assert_close(fast.apply(params, x), reference.apply(params, x))
  grads = jax.grad(loss, argnums=(1, 2))(fast, params, x)
  reference_grads = jax.grad(loss, argnums=(1, 2))(reference, params, x)
  jax.tree.map(assert_close, grads, reference_grads)


@pytest.mark.parametrize(
  "channels, strides, padding, use_bias", [(1, 1, "VALID", True), (32, 1, "SAME", False), (16, 2, "SAME", False)]
)
def test_conv3x3_on_an_accelerator_is_lax_s_convolution(monkeypatch, channels, strides, padding, use_bias):
  x = jax.random.normal(jax.random.key(0), (2, 12, 9, channels))
  reference = nn.Conv(8, (3, 3), (strides, strides), padding=padding, use_bias=use_bias)
  params = jax.tree.map(
    lambda p: p + jax.random.normal(jax.random.key(2), p.shape), reference.init(jax.random.key(1), x)
  )
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  module = layers.Conv3x3(8, strides=strides, padding=padding, use_bias=use_bias)
  jaxpr = str(jax.make_jaxpr(module.apply)(params, x))
  assert "conv_general_dilated" in jaxpr and "custom_vjp" not in jaxpr
  np.testing.assert_allclose(module.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)


def test_conv1x1_on_an_accelerator_is_lax_s_convolution(monkeypatch):
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
  reference = nn.Conv(5, (1, 1), (2, 2), use_bias=False)
  params = reference.init(jax.random.key(1), x)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  module = layers.Conv1x1(5, 2)
  assert "conv_general_dilated" in str(jax.make_jaxpr(module.apply)(params, x))
  np.testing.assert_allclose(module.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)


# im2col, conv_stride1 and winograd_conv3x3: each computes in bf16 under mixed_precision.
@pytest.mark.parametrize("channels", [2, 16, 32])
def test_conv3x3_computes_in_its_dtype_and_keeps_float32_parameters(channels):
  module = layers.Conv3x3(4, dtype=jnp.bfloat16)
  params = module.init(jax.random.key(0), jnp.ones((1, 6, 6, channels)))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert module.apply(params, jnp.ones((1, 6, 6, channels))).dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(3, 13, 26, 5), (2, 27, 9, 4)])
def test_max_pool_values_and_gradient_match_flax_max_pool(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_array_equal(layers.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2), padding="VALID"))
  weights = jax.random.normal(jax.random.key(1), layers.max_pool_2x2(x).shape)
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool_2x2(x) * weights))(x)
  reference = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2), padding="VALID") * weights))(x)
  np.testing.assert_array_equal(grad, reference)


def test_max_pool_gives_a_tied_window_s_whole_gradient_to_its_first_maximum():
  x = jnp.array([[1.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: layers.max_pool_2x2(x).sum())(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("size, strides", [(8, 2), (7, 2), (6, 1)])
def test_conv1x1_matches_flax_conv_with_the_same_parameters(size, strides):
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  fast = layers.Conv1x1(5, strides)
  reference = nn.Conv(5, (1, 1), (strides, strides), use_bias=False)
  params = fast.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, params, reference.init(jax.random.key(1), x))
  np.testing.assert_allclose(fast.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)
  loss = lambda module, params, x: jnp.sum(jnp.sin(module.apply(params, x)))
  grads = jax.grad(loss, argnums=(1, 2))(fast, params, x)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
    grads,
    jax.grad(loss, argnums=(1, 2))(reference, params, x),
  )


class FlaxWritten(nn.Module):
  """flax's own layers, as a user writes them: what cpu_formulated rewrites."""

  channels: int
  strides: int
  padding: str

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.channels, (3, 3), self.strides, padding=self.padding)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.Conv(self.channels, (1, 1), 2, use_bias=False)(x)
    x = nn.Conv(8, (3, 3), padding=self.padding, use_bias=False)(x)
    return nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)  # avg_pool: left as flax computes it


@pytest.mark.parametrize(
  "channels, strides, padding", [(1, 1, "VALID"), (16, 1, "SAME"), (32, 2, "SAME"), (24, 1, "VALID")]
)
def test_cpu_formulated_computes_any_flax_model_s_convolutions_and_pools_in_the_layers_forms(
  channels, strides, padding
):
  x = jax.random.normal(jax.random.key(0), (2, 22, 21, 3))
  model = FlaxWritten(channels, strides, padding)
  params = model.init(jax.random.key(1), x)
  formulated = cpu.formulated(model.apply)
  operations = {eqn.primitive.name for eqn in jax.make_jaxpr(formulated)(params, x).jaxpr.eqns}
  assert not operations & {"conv_general_dilated", "reduce_window_max"}, operations

  def loss(apply, params, x):
    return jnp.sum(jnp.sin(apply(params, x)))

  def assert_close(actual, desired):
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=2e-5 * np.abs(desired).max())

  assert_close(jax.jit(formulated)(params, x), model.apply(params, x))
  grads = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(formulated, params, x)
  jax.tree.map(assert_close, grads, jax.grad(loss, argnums=(1, 2))(model.apply, params, x))


def test_cpu_formulated_leaves_a_model_on_an_accelerator_as_it_is(monkeypatch):
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 1))
  model = FlaxWritten(8, 1, "SAME")
  params = model.init(jax.random.key(1), x)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert str(jax.make_jaxpr(cpu.formulated(model.apply))(params, x)) == str(jax.make_jaxpr(model.apply)(params, x))
