"""JAX's private APIs that fluxdigits uses (fluxdigits/jax_private.py) still exist and still compute JAX's bits.

If this fails after a JAX upgrade, fluxdigits.layers.Dropout's fast CPU masks are broken: fix jax_private.py (or
drop the fast path) before moving the jax pin in pyproject.toml."""

import jax
import jax.numpy as jnp
import numpy as np

from fluxdigits import jax_private


def test_the_unrolled_threefry_gives_jax_s_own_bits():
  key = jax.random.key(42)
  counts = jnp.arange(1000, dtype=jnp.uint32)
  key_data = jax.random.key_data(key)
  high, low = jax_private.threefry2x32_unrolled(key_data[0], key_data[1], jnp.zeros_like(counts), counts)
  with jax.threefry_partitionable(True):
    expected = jax.random.bits(key, (1000,), jnp.uint32)
  np.testing.assert_array_equal(np.asarray(high ^ low), np.asarray(expected))
