"""Ctrl-C and SIGTERM stop a run at once, cleanly, at any moment: startup, compiling, training, saving.

A Python exception raised from a signal handler can land anywhere: inside an import (a traceback),
a finaliser (silently swallowed) or a library's thread teardown (a segfault at exit). So the handler
raises nothing: it lets a checkpoint save in flight finish (atomic either way, but a finished save
keeps the latest epoch), prints how to resume, and ends the process with 128 + the signal number
(130 for Ctrl-C, 143 for SIGTERM), as a shell reports it. The OS releases the workdir lock.
"""

import contextlib
import os
import signal
import sys
import weakref

_managers = weakref.WeakSet()  # checkpoint managers whose saves are finished before exiting
_deferring = 0  # > 0 while the main thread is inside a save: the signal waits for the save's end
_pending = None
_message = "interrupted"


def install(message: str) -> None:
  """Ctrl-C and SIGTERM print `message` and end the process (see the module's docstring)."""
  global _message
  _message = message
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _on_signal)


def set_message(message: str) -> None:
  global _message
  _message = message


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


def _on_signal(signum, frame):
  global _pending
  if _deferring:
    _pending = signum
    return
  _exit(signum)


def _exit(signum):
  # A second signal while saves are finished ends the process at once.
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  for manager in list(_managers):
    try:
      manager.wait_until_finished()
    except Exception:  # a failed save leaves the previous checkpoints, which is all a resume needs
      pass
  sys.stdout.flush()
  print(f"\n{signal.Signals(signum).name}: {_message}", file=sys.stderr, flush=True)
  os._exit(128 + signum)
