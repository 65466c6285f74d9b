"""oneDNN's convolutions through XLA's FFI (fluxdigits/onednn.py): values and gradients against lax's convolution,
under jit, grad and vmap; and a short training run that equals the XLA formulations' figures. Skipped where the
extension is not built (FLUXDIGITS_ONEDNN=0 runs the rest of the suite without it)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluxdigits import onednn

from conftest import EXPERIMENTS, run_cli

pytestmark = pytest.mark.skipif(not onednn.available(), reason="the oneDNN extension is not built or is turned off")

CASES = [  # (batch, size, channels, features, kernel size, stride, padding)
    (1, 7, 3, 5, 3, 1, "SAME"), (1, 8, 4, 6, 3, 2, "SAME"), (2, 9, 8, 4, 3, 2, "VALID"), (3, 6, 4, 6, 3, 1, "VALID"),
    (128, 32, 16, 16, 3, 1, "SAME"), (128, 16, 16, 32, 3, 2, "SAME"), (128, 15, 32, 32, 3, 2, "SAME"),
    (4, 8, 16, 32, 1, 2, "VALID"), (2, 28, 1, 32, 3, 1, "VALID"),
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


def test_vmap_over_members_equals_each_member_alone():
  x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 4))
  kernels = jax.random.normal(jax.random.key(1), (3, 3, 3, 4, 5))
  stacked = jax.jit(jax.vmap(lambda x, k: onednn.conv(x, k, 1, "SAME")))(x, kernels)
  for member in range(3):
    np.testing.assert_allclose(stacked[member], lax_conv(x[member], kernels[member], 1, "SAME"), atol=2e-5)


def test_a_short_run_equals_the_xla_formulations(tmp_path):
  # cnn_deep's convolutions of 32 and 64 channels run on oneDNN; its first, of 1 channel, on a matmul either way.
  # Ten steps: rounding differences grow as training goes on, so a longer run would compare the chaos, not the code.
  args = [EXPERIMENTS / "mnist_cnn_deep.py", "--config.num_epochs=1", "--config.dataset.max_train_examples=1280",
          "--config.ema_decay=0", "--config.report=false", "--config.tensorboard=false",
          "--config.split_batch_over_cpu_cores=false"]
  summaries = {}
  for enabled in ("1", "0"):
    result = run_cli(*args, "--workdir", tmp_path / enabled, env={onednn.DISABLE_ENV: enabled})
    assert result.returncode == 0, result.stderr
    assert ("convolutions: oneDNN" if enabled == "1" else "convolutions: XLA") in result.stdout
    summaries[enabled] = json.loads((tmp_path / enabled / "summary.json").read_text())
  with_onednn, with_xla = summaries["1"], summaries["0"]
  assert with_onednn["test_loss"] == pytest.approx(with_xla["test_loss"], rel=1e-3)
  assert abs(with_onednn["test_accuracy"] - with_xla["test_accuracy"]) <= 0.001 and with_xla["test_accuracy"] > 0.2
