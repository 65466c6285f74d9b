"""The CPU's cores as JAX devices: one per core where that pays, claimed before JAX starts.

One compiled call per CPU device, running at once, fills two cores better than one call whose every op is split over
them, where steps are long (benchmarks/NOTES.md, "The CPU's cores as devices"). Where a model calls oneDNN, its
OpenMP threads use every core within each call, so that model keeps to one device (cpu.calls_onednn decides).
Importing fluxdigits claims nothing.
"""

import os

import jax

_cpu_lanes = 1  # the CPU devices claim() made, one per core; 1 until it runs


def claim() -> int:
  """Makes JAX's CPU backend one device per core; returns how many (1 where JAX already ran something)."""
  global _cpu_lanes
  cores = len(os.sched_getaffinity(0))
  try:
    jax.config.update("jax_num_cpu_devices", cores)
  except RuntimeError:
    return _cpu_lanes
  _cpu_lanes = cores
  return cores


def user_device_count() -> int | None:
  """The CPU device count the user chose with JAX_NUM_CPU_DEVICES or XLA_FLAGS, or None."""
  count = os.environ.get("JAX_NUM_CPU_DEVICES") or next(
    (
      flag.split("=")[1]
      for flag in os.environ.get("XLA_FLAGS", "").split()
      if flag.startswith("--xla_force_host_platform_device_count=")
    ),
    None,
  )
  return None if count is None else int(count)


def lanes() -> int:
  """The CPU devices fluxdigits claimed (one per core), or 1."""
  return _cpu_lanes
