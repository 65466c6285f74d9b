"""Placing arrays on every device of the job: a 1-D 'data' mesh, batches split along it, the rest replicated.

The same code runs on 1 CPU, 1 GPU, 8 TPU cores or the hosts of a multi-process job (distributed.py);
XLA inserts the cross-device reductions (gradients, BatchNorm statistics) that the shardings imply.
Every process computes the same host arrays (data, batch indices) and places only what its own
devices hold.

On a CPU, fluxdigits' command lines may ask JAX for one device per core (cpu.set_up, before JAX starts): a
population's members train side by side on them (`member_lanes`), runs of models with long steps split their
batches over them (loop.data_mesh_for), and the rest keeps to the first.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fluxdigits.cpu import cores
from fluxdigits.errors import UserError


def data_mesh(local: bool = False, batch_sizes: tuple = ()) -> Mesh:
  """Over the whole job's devices, or this process's alone (`local`: work one process does by itself). On a CPU
  whose devices are fluxdigits' (one per core): over as many of each process's as divide every size in `batch_sizes`,
  the first alone where none are given."""
  devices = jax.local_devices() if local else jax.devices()
  if cores.lanes() > 1 and devices[0].platform == "cpu":
    count = (
      max(n for n in range(1, cores.lanes() + 1) if all(size % n == 0 for size in batch_sizes)) if batch_sizes else 1
    )
    devices = [d for d in devices if jax.local_devices(d.process_index).index(d) < count]
  return Mesh(np.array(devices), ("data",))


def member_lanes(members: int) -> Mesh | None:
  """The CPU devices a population of `members`, run one member after another, is split over (a 'members' mesh);
  None on accelerators, in multi-process jobs and where there is one lane or one member."""
  lanes = min(cores.lanes(), members)
  if lanes < 2 or jax.default_backend() != "cpu" or jax.process_count() > 1:
    return None
  return Mesh(np.array(jax.local_devices()[:lanes]), ("members",))


def in_lanes(fn, lanes: Mesh):
  """fn(stacked state, images, labels, (members, steps, batch) indices, hyperparams, active, count) compiled with the
  members split evenly over the lanes, which run at once: each lane's share is padded with inactive copies of member
  0, whose results are dropped."""
  split = P("members")
  sharded = jax.shard_map(
    fn, mesh=lanes, in_specs=(split, P(), P(), split, split, split, P()), out_specs=split, check_vma=False
  )

  def padded(state, images, labels, batch_indices, hyperparams, active, count):
    members = active.shape[0]
    padding = -members % lanes.size
    pad = lambda x, fill=None: jax.numpy.concatenate([x, jax.numpy.repeat(x[:1] if fill is None else fill, padding, 0)])
    state, batch_indices, hyperparams = jax.tree.map(pad, (state, batch_indices, hyperparams))
    active = pad(active, jax.numpy.zeros(1, bool))
    trained, outputs = sharded(state, images, labels, batch_indices, hyperparams, active, count)
    return jax.tree.map(lambda x: x[:members], (trained, outputs))

  return jax.jit(padded, donate_argnums=0, out_shardings=replicated_sharding(lanes))


def check_divisible(batch_size: int, key: str, mesh: Mesh):
  devices = mesh.devices.size
  if batch_size % devices:
    raise UserError(
      f"{key}={batch_size} is not divisible by the {devices} devices; "
      f"use a multiple of {devices}, e.g. --config.{key}={batch_size // devices * devices or devices}"
    )


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated_sharding(mesh))


def free_memory_bytes(mesh: Mesh) -> int | None:
  """Memory one device of this process can still allocate: an accelerator's own, the host's for CPU devices."""
  device = mesh.local_devices[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  try:
    with open("/proc/meminfo") as f:
      fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024 // max(len(mesh.local_devices), 1)
  except (OSError, KeyError, ValueError):
    return None


def shard_batches(indices: np.ndarray, mesh: Mesh):
  """(..., batch) index arrays, split along their last axis; each process places only its devices' slices."""
  sharding = NamedSharding(mesh, P(*([None] * (indices.ndim - 1)), "data"))
  return jax.make_array_from_callback(indices.shape, sharding, lambda index: indices[index])


def to_host(array) -> np.ndarray:
  """A numpy copy of the whole array, also when other processes hold parts of it."""
  if array.is_fully_addressable or array.is_fully_replicated:
    return np.asarray(array)
  return multihost_utils.process_allgather(array, tiled=True)


def describe(mesh: Mesh) -> str:
  devices = mesh.devices.ravel()
  processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
  return f"{len(devices)}x {devices[0].device_kind} ({devices[0].platform}){processes}"
