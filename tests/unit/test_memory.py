"""The allocator set up for XLA (fluxdigits/cpu/memory.py): a block as large as a compiled call's temporaries comes
from the heap, not from a mapping of its own, and stays there when freed, so the next call reuses its pages."""

import ctypes

import numpy as np
import pytest

from fluxdigits.cpu import memory

_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


def mallinfo2() -> MallInfo2:
  function = ctypes.CDLL(None).mallinfo2
  function.restype = MallInfo2
  return function()


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc's malloc only")
def test_a_block_of_64_mib_comes_from_the_heap_and_stays_there_when_freed():
  assert memory.keep_freed()  # as cpu.set_up did in conftest
  before = mallinfo2()
  block = np.ones(2**23)  # 64 MiB: glibc's defaults map a block this large alone and unmap it when it is freed
  held = mallinfo2()
  assert (held.hblks, held.hblkhd) == (before.hblks, before.hblkhd)
  assert held.uordblks >= before.uordblks + block.nbytes - 2**20  # other threads may free a little meanwhile
  del block
  assert mallinfo2().arena == held.arena
