"""Everything fluxdigits does for a CPU, in one place: the forms its operations run fastest in (forms.py, with
oneDNN's kernels through onednn.py), any model's forward pass rewritten into them (rewrite.py), its cores as JAX
devices (cores.py) and the allocator that serves XLA (memory.py). Models reach it through fluxdigits.layers; the
trainer and the command lines through the names below.
"""

import functools

import jax
import jax.numpy as jnp

from fluxdigits.cpu import cores, memory, onednn
from fluxdigits.cpu.forms import canonical  # noqa: F401 (the interface)
from fluxdigits.cpu.rewrite import formulated  # noqa: F401 (the interface)

lanes = cores.lanes


def set_up(keep_freed_memory: bool = True) -> int:
  """Before anything starts JAX: one CPU device per core, unless the user chose the count (JAX_NUM_CPU_DEVICES,
  XLA_FLAGS), and with `keep_freed_memory` the memory XLA frees kept for its next compiled call (memory.py: a
  population's members, which run in lanes on several threads at once, wait on its one heap). A model that calls
  oneDNN keeps to the first device (`calls_onednn`). Returns the devices claimed, 1 when none."""
  if keep_freed_memory:
    memory.keep_freed()
  if cores.user_device_count() is not None:
    return cores.lanes()
  return cores.claim()


def calls_onednn(model, image_shape) -> bool:
  """Whether the model's training forward pass, as the train step traces it, calls oneDNN, whose OpenMP threads use
  every core within each call: a run or population of it keeps to one CPU device, not one per core."""
  if not onednn.available():
    return False
  x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  apply = functools.partial(model.apply, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
  return onednn.called_in(jax.make_jaxpr(formulated(apply))(variables, x).jaxpr)
