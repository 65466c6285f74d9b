"""The C library's allocator, told to keep the memory XLA frees.

XLA:CPU allocates a compiled call's temporary buffers when the call starts and frees them when it ends. glibc's
malloc serves blocks that large with mmap and unmaps them when they are freed, so every call faults its pages in
again: a tenth of a second a call for cifar10_fast's step (benchmarks/NOTES.md, "Memory kept between calls"). Served
from one heap that is never trimmed, the next call reuses the same pages. Threads that allocate at once wait for
each other on that heap: a population's lanes ran ~15% slower, so populations go without (cpu.set_up).
"""

import ctypes

# glibc's mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# One arena (threads' own arenas grow in heaps of 64 MiB and mmap anything larger), no mmap, no trimming.
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed() -> bool:
  """Makes glibc's malloc serve every block, every thread's too, from its one main heap (grown with brk, not mmap),
  and never hand freed memory back to the system; returns whether it did (False with another C library)."""
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc's own: other C libraries' mallopt, where they have one, means other things
  except (OSError, AttributeError):
    return False
  return all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS)
