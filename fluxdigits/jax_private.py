"""Every use of JAX's private APIs, in one place: a JAX upgrade that moves them breaks here, and in
tests/test_jax_private.py, loudly, instead of deep inside a layer.

jax is pinned to 0.10.x in pyproject.toml; moving the pin means running that test first.
"""

from jax._src.random import threefry2x32 as _threefry2x32


def threefry2x32_unrolled(key1, key2, count_high, count_low):
  """JAX's own threefry2x32 hash as one unrolled pass: the (high, low) words of the bits for those counters.

  jax 0.10's public lowering on a CPU is a rolled loop of five passes; the unrolled form is in its
  private module only (upstream made it the default later, jax-ml/jax#37872).
  """
  return _threefry2x32._threefry2x32_lowering(key1, key2, count_high, count_low, use_rolled_loops=False)
