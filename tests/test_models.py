import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluxdigits import config as configs, layers, registry, steps


def conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def dense(n_in, n_out):
  return n_in * n_out + n_out


BN = 2  # scale and bias per channel

EXPECTED_PARAMS = {
  "mlp": dense(784, 128) + dense(128, 64) + dense(64, 10),
  "cnn": conv(3, 1, 32) + dense(13 * 13 * 32, 64) + dense(64, 10),
  "cnn_dropout": conv(3, 1, 32) + dense(13 * 13 * 32, 64) + dense(64, 10),
  "cnn_deep": conv(3, 1, 32)
  + conv(3, 32, 32)
  + conv(3, 32, 64)
  + conv(3, 64, 64)
  + dense(4 * 4 * 64, 128)
  + dense(128, 10),
}


def make(name, **overrides):
  config = configs.defaults()
  config.model.name = name
  for key, value in overrides.items():
    if key == "dropout_rate":
      config.model.dropout_rate = value
    else:
      config.model.kwargs[key] = value
  return registry.create(configs.validate(config), num_classes=10)


def init(model, shape):
  return model.init(jax.random.key(0), jnp.zeros((2, *shape)), train=False)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_digit_models_shapes_and_parameter_counts(name):
  model = make(name)
  variables = init(model, (28, 28, 1))
  assert steps.count_params(variables["params"]) == EXPECTED_PARAMS[name]
  logits = model.apply(variables, jnp.ones((5, 28, 28, 1)), train=False)
  assert logits.shape == (5, 10)


@pytest.mark.parametrize("depth, expected", [(20, 272_474), (18, 11_173_962)])
def test_resnet_parameter_counts_match_the_published_cifar_models(depth, expected):
  model = make("resnet", depth=depth)
  variables = init(model, (32, 32, 3))
  assert steps.count_params(variables["params"]) == expected
  assert model.apply(variables, jnp.ones((3, 32, 32, 3)), train=False).shape == (3, 10)


def test_airbench_parameter_count_and_width():
  width = 8
  expected = (
    conv(3, 3, 24, bias=False)
    + 24  # BatchNorm has a bias but no scale
    + conv(3, 24, width, False)
    + width
    + conv(3, width, width, False)
    + width
    + conv(3, width, 4 * width, False)
    + 4 * width
    + conv(3, 4 * width, 4 * width, False)
    + 4 * width
    + 2 * (conv(3, 4 * width, 4 * width, False) + 4 * width)
    + 4 * width * 10
  )
  model = make("airbench", width=width)
  variables = init(model, (32, 32, 3))
  assert steps.count_params(variables["params"]) == expected
  assert model.apply(variables, jnp.ones((3, 32, 32, 3)), train=False).shape == (3, 10)


def test_whitening_kernel_decorrelates_3x3_patches():
  noise = jax.random.normal(jax.random.key(0), (64, 18, 18, 3))
  images = (noise[:, 1:-1, 1:-1] + noise[:, :-2, 1:-1] + noise[:, 1:-1, :-2]) * jnp.array(
    [1.0, 2.0, 0.5]
  )  # correlated pixels
  kernel = layers.whitening_kernel(images, features=24, eps=0.0)
  out = layers.Conv3x3(24, use_bias=False).apply({"params": {"kernel": kernel}}, images).reshape(-1, 24)
  np.testing.assert_allclose(out[:, :12].T @ out[:, :12] / len(out), np.eye(12), atol=1e-3)
  np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-5)


def test_resnet_batchnorm_uses_batch_statistics_in_training_and_running_averages_in_eval():
  model = make("resnet", depth=20)
  variables = init(model, (28, 28, 1))
  x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1)) * 3 + 1
  train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  eval_logits = model.apply(variables, x, train=False)
  assert not np.allclose(train_logits, eval_logits, atol=1e-3)
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_dropout_is_active_only_in_training():
  model = make("cnn_dropout", dropout_rate=0.5)
  variables = init(model, (28, 28, 1))
  x = jnp.ones((4, 28, 28, 1))
  eval_a = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_a, model.apply(variables, x, train=False))
  train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(train_a, train_b)


@pytest.mark.parametrize("shape", [(7,), (32, 13, 13, 32)])
def test_dropout_matches_flax_dropout_bit_for_bit(shape):
  # On a CPU our masks' bits come from another lowering of JAX's threefry; they must be the same bits.
  x = jax.random.normal(jax.random.key(0), shape)
  rngs = {"dropout": jax.random.fold_in(jax.random.key(5), 3)}
  ours = jax.jit(lambda x: layers.Dropout(0.3, deterministic=False).apply({}, x, rngs=rngs))(x)
  traced_rate = jax.jit(lambda x, rate: layers.Dropout(rate, deterministic=False).apply({}, x, rngs=rngs))(x, 0.3)
  flax = jax.jit(lambda x: nn.Dropout(0.3, deterministic=False).apply({}, x, rngs=rngs))(x)
  np.testing.assert_array_equal(ours, flax)
  np.testing.assert_array_equal(traced_rate != 0, flax != 0)  # a population's rate: the same masks
  assert 0.6 < float((ours != 0).mean()) < 0.8
  with jax.threefry_partitionable(False):  # JAX's other counters: ours must follow them
    np.testing.assert_array_equal(
      layers.Dropout(0.3, deterministic=False).apply({}, x, rngs=rngs),
      nn.Dropout(0.3, deterministic=False).apply({}, x, rngs=rngs),
    )


def test_max_pool_matches_flax_max_pool():
  x = jax.random.normal(jax.random.key(0), (3, 13, 26, 5))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2), padding="VALID"))


def test_mixed_precision_computes_in_bfloat16_and_keeps_float32_parameters():
  config = configs.defaults()
  config.mixed_precision = "true"
  model = registry.create(configs.validate(config), num_classes=10)
  variables = init(model, (28, 28, 1))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  hidden = model.apply(variables, jnp.ones((2, 28, 28, 1), jnp.bfloat16), train=False)
  assert hidden.dtype == jnp.bfloat16
