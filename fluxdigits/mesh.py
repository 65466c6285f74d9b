"""Placing arrays on every local device: a 1-D 'data' mesh, batches split along it, the rest replicated.

The same code runs on 1 CPU, 1 GPU or 8 TPU cores; XLA inserts the cross-device reductions
(gradients, BatchNorm statistics) that the shardings imply.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fluxdigits.errors import UserError


def data_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ("data",))


def check_divisible(batch_size: int, key: str, mesh: Mesh):
  devices = mesh.devices.size
  if batch_size % devices:
    raise UserError(f"{key}={batch_size} is not divisible by the {devices} devices; "
                    f"use a multiple of {devices}, e.g. --config.{key}={batch_size // devices * devices or devices}")


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batches(indices, mesh: Mesh):
  """(..., batch) index arrays, split along their last axis."""
  spec = P(*([None] * (np.ndim(indices) - 1)), "data")
  return jax.device_put(indices, NamedSharding(mesh, spec))


def describe() -> str:
  devices = jax.devices()
  return f"{len(devices)}x {devices[0].device_kind} ({devices[0].platform})"
