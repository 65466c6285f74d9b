"""Joining a multi-process job (one process per host, as on TPU pod slices and multi-GPU nodes).

Every process runs the same command; `jax.distributed` connects them, `jax.devices()` then lists
the devices of all of them, and the mesh of mesh.py spans the whole job. Process 0 alone writes
files and prints; the others compute with it.
"""

import contextlib
import dataclasses
import os
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

from fluxdigits.errors import UserError

# What jax.distributed reads itself (JAX_COORDINATOR_ADDRESS) or what we read for it: the
# same command can then be started unchanged on every host, each with its own environment.
ENVIRONMENT = {
  "coordinator": "JAX_COORDINATOR_ADDRESS",
  "num_processes": "JAX_NUM_PROCESSES",
  "process_id": "JAX_PROCESS_ID",
}


@dataclasses.dataclass(frozen=True)
class JobSpec:
  """How this process joins a job; every field None with `auto`: as the cluster environment says."""

  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False  # --distributed: TPU pod slice, SLURM, Open MPI, Kubernetes (jax's cluster detection)
  heartbeat_timeout: int = 60

  @property
  def wanted(self) -> bool:
    return self.auto or any(v is not None for v in (self.coordinator, self.num_processes, self.process_id))


def job_spec(coordinator=None, num_processes=None, process_id=None, auto=False, heartbeat_timeout=60) -> JobSpec:
  """The command line's values, else the environment's (ENVIRONMENT)."""
  values = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
  for key, variable in ENVIRONMENT.items():
    if values[key] is None and os.environ.get(variable):
      values[key] = os.environ[variable]
  for key in ("num_processes", "process_id"):
    if values[key] is not None:
      try:
        values[key] = int(values[key])
      except ValueError:
        raise UserError(
          f"{key} must be an integer, got {values[key]!r} (from --{key} or ${ENVIRONMENT[key]})"
        ) from None
  if heartbeat_timeout < 1:
    raise UserError(f"--heartbeat_timeout must be at least 1 second, got {heartbeat_timeout}")
  return JobSpec(**values, auto=auto, heartbeat_timeout=heartbeat_timeout)


def initialize(spec: JobSpec):
  """Connects this process to the job's others; nothing when the job is one process. Before any JAX computation."""
  if not spec.wanted:
    return
  # JAX's preemption notifier takes SIGTERM; it is given back to fluxdigits' handler (signals.py), which stops every
  # process of the job together at the next train call (agreed_max), and answers Ctrl-C alike.
  handler = signal.getsignal(signal.SIGTERM)
  try:
    jax.distributed.initialize(
      spec.coordinator,
      spec.num_processes,
      spec.process_id,
      heartbeat_timeout_seconds=spec.heartbeat_timeout,
      # A process that finishes waits this long for the others at exit (process 0 writes the report).
      shutdown_timeout_seconds=600,
    )
  except (ValueError, TypeError, RuntimeError) as e:
    raise UserError(
      f"could not join the multi-process job ({str(e).splitlines()[0][:300]}); give every process "
      "--coordinator HOST:PORT (process 0's address) --num_processes N --process_id I "
      f"(or ${' $'.join(ENVIRONMENT.values())}), or --distributed on a TPU pod slice, SLURM or Open MPI, "
      "and start all N processes"
    ) from None
  if handler is not None:
    signal.signal(signal.SIGTERM, handler)


def is_primary() -> bool:
  """Process 0: the one that writes the run's files and prints."""
  return jax.process_index() == 0


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def describe() -> str:
  return f"process {jax.process_index()} of {jax.process_count()}"


@contextlib.contextmanager
def entered_on_primary(context):
  """`with context:` on process 0 only (the workdir's lock and checks); every process stops when entering failed there.

  The others wait for process 0 and stop with it, so a refused workdir ends the whole job at once
  instead of leaving them blocked until a heartbeat timeout.
  """
  if not is_multiprocess():
    with context:
      yield
    return
  error = None
  with contextlib.ExitStack() as held:
    if is_primary():
      try:
        held.enter_context(context)
      except UserError as e:
        error = e
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if error is not None:
      raise error
    if failed:
      raise UserError("process 0 stopped with an error (see its output); fix it and start all processes again")
    yield


def leave() -> None:
  """Leaves the job together with its other processes, which stop at the same call: a process that outlived
  the coordinator (process 0's) would abort instead of exiting with its signal's code."""
  if is_multiprocess():
    jax.distributed.shutdown()


def agreed_max(*values: float) -> tuple:
  """Each value's largest over the job's processes (the values themselves in one process): what they decide
  together, such as stopping or the next call's length."""
  if not is_multiprocess():
    return values
  return tuple(float(v) for v in multihost_utils.process_allgather(np.asarray(values, np.float64)).max(0))
