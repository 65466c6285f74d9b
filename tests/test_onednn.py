"""oneDNN's convolutions and batch normalisation through XLA's FFI (fluxdigits/cpu/onednn.py): values and gradients
against lax's convolution and flax's BatchNorm, under jit, grad and vmap; and short training runs that equal the XLA
formulations' figures. Skipped where the
extension is not built (FLUXDIGITS_ONEDNN=0 runs the rest of the suite without it)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import EXPERIMENTS, run_cli

from fluxdigits import layers
from fluxdigits.cpu import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="the oneDNN extension is not built or is turned off")

CASES = [  # (batch, size, channels, features, kernel size, stride, padding)
  (1, 7, 3, 5, 3, 1, "SAME"),
  (1, 8, 4, 6, 3, 2, "SAME"),
  (2, 9, 8, 4, 3, 2, "VALID"),
  (3, 6, 4, 6, 3, 1, "VALID"),
  (128, 32, 16, 16, 3, 1, "SAME"),
  (128, 16, 16, 32, 3, 2, "SAME"),
  (128, 15, 32, 32, 3, 2, "SAME"),
  (4, 8, 16, 32, 1, 2, "VALID"),
  (2, 28, 1, 32, 3, 1, "VALID"),
]


def lax_conv(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_values_and_gradients_equal_lax(case):
  n, size, channels, features, window, stride, padding = case
  keys = jax.random.split(jax.random.key(sum(case[:5])), 3)
  x = jax.random.normal(keys[0], (n, size, size, channels))
  kernel = jax.random.normal(keys[1], (window, window, channels, features)) / np.sqrt(window * window * channels)
  expected = lax_conv(x, kernel, stride, padding)
  target = jax.random.normal(keys[2], expected.shape)
  got = jax.jit(onednn.conv, static_argnums=(2, 3))(x, kernel, stride, padding)
  np.testing.assert_allclose(got, expected, atol=2e-5, rtol=2e-5)
  loss = lambda conv: lambda x, k: jnp.vdot(conv(x, k, stride, padding), target)
  want = jax.grad(loss(lax_conv), (0, 1))(x, kernel)
  grads = jax.jit(jax.grad(loss(onednn.conv), (0, 1)))(x, kernel)
  for g, w in zip(grads, want):
    np.testing.assert_allclose(g, w, atol=1e-4 * float(jnp.abs(w).max()), rtol=1e-4)


@pytest.mark.skipif(not onednn.native_bf16(), reason="oneDNN is off, or this CPU has no bfloat16 instructions")
@pytest.mark.parametrize("case", CASES[4:7], ids=lambda c: "-".join(map(str, c)))
def test_bfloat16_values_and_gradients_equal_lax_within_bfloat16_rounding(case):
  n, size, channels, features, window, stride, padding = case
  keys = jax.random.split(jax.random.key(sum(case[:5])), 3)
  x = jax.random.normal(keys[0], (n, size, size, channels)).astype(jnp.bfloat16)
  kernel = (jax.random.normal(keys[1], (window, window, channels, features)) / np.sqrt(9 * channels)).astype(
    jnp.bfloat16
  )
  as_float = lambda *arrays: [a.astype(jnp.float32) for a in arrays]
  expected = lax_conv(*as_float(x, kernel), stride, padding)
  target = jax.random.normal(keys[2], expected.shape)
  got = jax.jit(onednn.conv, static_argnums=(2, 3))(x, kernel, stride, padding)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), expected, atol=1e-2 * float(jnp.abs(expected).max()))
  loss = lambda conv: lambda x, k: jnp.vdot(conv(x, k, stride, padding).astype(jnp.float32), target)
  want = jax.grad(loss(lax_conv), (0, 1))(*as_float(x, kernel))
  grads = jax.jit(jax.grad(loss(onednn.conv), (0, 1)))(x, kernel)
  for g, w in zip(grads, want):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(g.astype(jnp.float32), w, atol=1e-2 * float(jnp.abs(w).max()))


def test_vmap_over_members_equals_each_member_alone():
  x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 4))
  kernels = jax.random.normal(jax.random.key(1), (3, 3, 3, 4, 5))
  stacked = jax.jit(jax.vmap(lambda x, k: onednn.conv(x, k, 1, "SAME")))(x, kernels)
  for member in range(3):
    np.testing.assert_allclose(stacked[member], lax_conv(x[member], kernels[member], 1, "SAME"), atol=2e-5)


@pytest.mark.parametrize("shape", [(128, 8, 8, 64), (3, 7, 5, 16), (1, 6, 6, 4)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_equals_flax_with_its_statistics_and_gradients(shape, relu):
  keys = jax.random.split(jax.random.key(shape[0] + relu), 4)
  x = 2 * jax.random.normal(keys[0], shape) + 1
  variables = {
    "params": {"scale": 1 + jax.random.normal(keys[1], shape[-1:]), "bias": jax.random.normal(keys[2], shape[-1:])},
    "batch_stats": {"mean": jnp.zeros(shape[-1:]), "var": jnp.ones(shape[-1:])},
  }
  target = jax.random.normal(keys[3], shape)
  flax_norm = lambda x: nn.relu(x) if relu else x
  models = {
    "onednn": (layers.BatchNorm(False, relu=relu), lambda y: y),
    "flax": (nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5), flax_norm),
  }
  results = {}
  for name, (model, after) in models.items():

    def loss(params, x):
      y, updated = model.apply({**variables, "params": params}, x, mutable=["batch_stats"])
      return jnp.vdot(after(y), target), (after(y), updated["batch_stats"])

    results[name] = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(variables["params"], x)
  (_, (y, stats)), grads = results["onednn"]
  (_, (want_y, want_stats)), want_grads = results["flax"]
  np.testing.assert_allclose(y, want_y, atol=2e-5, rtol=2e-5)
  for got, want in zip(jax.tree_util.tree_leaves((stats, grads)), jax.tree_util.tree_leaves((want_stats, want_grads))):
    np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.abs(want).max()), rtol=1e-4)


def test_batch_norm_under_vmap_equals_each_member_alone():
  x = jax.random.normal(jax.random.key(0), (3, 4, 5, 5, 8))
  scales = jax.random.normal(jax.random.key(1), (3, 8))
  norm = lambda x, scale: onednn.batch_norm(x, scale, jnp.zeros(8), 1e-5, True)[0]
  stacked = jax.jit(jax.vmap(norm))(x, scales)
  for member in range(3):
    np.testing.assert_allclose(stacked[member], norm(x[member], scales[member]), atol=1e-6)


def short_run(workdir, experiment, onednn_enabled, *extra):
  args = [
    EXPERIMENTS / f"{experiment}.py",
    "--config.num_epochs=1",
    "--config.dataset.max_train_examples=1280",
    "--config.dataset.max_test_examples=2000",
    "--config.validation_fraction=0",  # the test figures are compared: no validation pass to pay for
    "--config.patience=0",
    "--config.ema_decay=0",
    "--config.report=false",
    "--config.tensorboard=false",
    "--config.split_batch_over_cpu_cores=false",
    *extra,
  ]
  result = run_cli(*args, "--workdir", workdir, env={onednn.DISABLE_ENV: onednn_enabled})
  assert result.returncode == 0, result.stderr
  assert ("convolutions: oneDNN" if onednn_enabled == "1" else "convolutions: XLA") in result.stdout
  return json.loads((workdir / "summary.json").read_text())


# cnn_deep's convolutions of 32 and 64 channels run on oneDNN (its first, of 1 channel, on a matmul either way); the
# ResNet's BatchNorm and ReLU too. Ten steps: rounding differences grow as training goes on, so a longer run would
# compare the chaos, not the code. A BatchNorm network at its full rate amplifies them within ten steps (and two XLA
# formulations differ as much), so the ResNet runs at a rate where they stay rounding.
SHORT_RUNS = {"mnist_cnn_deep": (), "mnist_resnet": ("--config.optimizer.learning_rate=0.01",)}


@pytest.fixture(scope="module")
def resnet_on_onednn(tmp_path_factory):
  return short_run(tmp_path_factory.mktemp("onednn") / "resnet", "mnist_resnet", "1", *SHORT_RUNS["mnist_resnet"])


@pytest.mark.xdist_group("resnet_on_onednn")  # one worker runs both users of the fixture (--dist loadgroup)
@pytest.mark.parametrize("experiment", SHORT_RUNS)
def test_a_short_run_equals_the_xla_formulations(tmp_path, experiment, request):
  with_onednn = (
    request.getfixturevalue("resnet_on_onednn")
    if experiment == "mnist_resnet"
    else short_run(tmp_path / "onednn", experiment, "1", *SHORT_RUNS[experiment])
  )
  with_xla = short_run(tmp_path / "xla", experiment, "0", *SHORT_RUNS[experiment])
  assert with_onednn["test_loss"] == pytest.approx(with_xla["test_loss"], rel=1e-3)
  assert abs(with_onednn["test_accuracy"] - with_xla["test_accuracy"]) <= 0.001
  assert experiment == "mnist_resnet" or with_xla["test_accuracy"] > 0.2


@pytest.mark.xdist_group("resnet_on_onednn")
def test_a_run_on_onednn_repeats_exactly(tmp_path, resnet_on_onednn):
  """Resuming a run replays it; XLA starts independent layers' oneDNN calls at once, and the extension runs them one at
  a time so that BatchNorm's sums keep their order."""
  first, second = resnet_on_onednn, short_run(tmp_path / "again", "mnist_resnet", "1", *SHORT_RUNS["mnist_resnet"])
  assert first["test_loss"] == second["test_loss"] and first["test_accuracy"] == second["test_accuracy"]
