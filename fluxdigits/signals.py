"""Ctrl-C and SIGTERM stop a run cleanly, at any moment: startup, compiling, training, saving.

A Python exception raised from a signal handler can land anywhere: inside an import (a traceback),
a finaliser (silently swallowed) or a library's thread teardown (a segfault at exit). So the handler
raises nothing. While the epoch loop trains (`stoppable()`), it only records the signal: the loop
asks `requested()` after each compiled call (a second or two), saves its place within the epoch and
calls `stop`. Anywhere else, or at a second signal, the process ends at once: a checkpoint save in
flight is finished first (atomic either way, but a finished save keeps the latest epoch). Either way
it prints how to resume and ends with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as
a shell reports it. The OS releases the workdir lock.
"""

import contextlib
import os
import signal
import sys
import weakref

_managers = weakref.WeakSet()  # checkpoint managers whose saves are finished before exiting
_deferring = 0  # > 0 while the main thread is inside a save: the signal waits for the save's end
_pending = None
_stoppable = 0  # > 0 while a loop polls requested() and stops at its next safe point
_requested = None  # the signal such a loop was asked to stop by
_message = "interrupted"


def install(message: str) -> None:
  """Ctrl-C and SIGTERM end the process, saying what was kept and `message`: how to resume (see the module's
  docstring)."""
  global _message
  _message = message
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _on_signal)


def finish_saves_before_exit(manager) -> None:
  _managers.add(manager)


@contextlib.contextmanager
def deferred():
  """A signal arriving inside this block takes effect at its end."""
  global _deferring
  _deferring += 1
  try:
    yield
  finally:
    _deferring -= 1
    if not _deferring and _pending is not None:
      _exit(_pending)


@contextlib.contextmanager
def stoppable():
  """A first signal inside this block is recorded for `requested()`, not acted on."""
  global _stoppable
  _stoppable += 1
  try:
    yield
  finally:
    _stoppable -= 1


def requested() -> int | None:
  """The signal that asked a stoppable loop to stop, or None."""
  return _requested


def stop(signum: int, kept: str, leave=lambda: None) -> None:
  """Ends the process as a signal does, saying what was `kept`; `leave` runs after its saves finish."""
  _exit(signum, kept, leave)


def _on_signal(signum, frame):
  global _pending, _requested
  if _stoppable and _requested is None:
    _requested = signum
    return
  if _deferring:
    _pending = signum
    return
  _exit(signum)


def _exit(signum, kept="the checkpoints of finished epochs are kept", leave=lambda: None):
  # A second signal while saves are finished ends the process at once.
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  for manager in list(_managers):
    try:
      manager.wait_until_finished()
    except Exception:  # a failed save leaves the previous checkpoints, which is all a resume needs
      pass
  leave()
  sys.stdout.flush()
  print(f"\n{signal.Signals(signum).name}: stopped; {kept}: {_message}", file=sys.stderr, flush=True)
  os._exit(128 + signum)
