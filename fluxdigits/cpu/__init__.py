"""Everything fluxdigits does for a CPU, in one place: the forms its operations run fastest in (forms.py, with
oneDNN's kernels through onednn.py), any model's forward pass rewritten into them (rewrite.py), and its cores as JAX
devices (cores.py). Models reach it through fluxdigits.layers; the trainer and the command lines through the names
below.
"""

from fluxdigits.cpu import cores, onednn
from fluxdigits.cpu.forms import canonical  # noqa: F401 (the interface)
from fluxdigits.cpu.rewrite import formulated  # noqa: F401 (the interface)

lanes = cores.lanes


def claim_cores() -> int:
  """Before anything starts JAX: one CPU device per core, unless the user chose the count (JAX_NUM_CPU_DEVICES,
  XLA_FLAGS) or oneDNN's convolutions run, whose threads use every core within each call on one device. Returns the
  devices claimed, 1 when none."""
  if cores.user_device_count() is not None or onednn.available():
    return cores.lanes()
  return cores.claim()


def describe() -> str:
  """What runs a CPU's convolutions: 'oneDNN' or 'XLA'."""
  return onednn.describe()
