"""A signal while the run waits for a checkpoint save: the handler, which waits for the same save before exiting,
must not run inside that wait (re-entering a thread's join from a handler on the joining thread never returns)."""

import subprocess
import sys
import textwrap

WAIT_INTERRUPTED_BY_SIGTERM = textwrap.dedent(
  """
  import os, signal
  from fluxdigits import checkpoint, signals

  class Manager:  # a save in flight whose first wait is where SIGTERM lands
    waits = 0
    waiting = False

    def wait_until_finished(self):
      self.waits += 1
      if self.waiting:
        print("the wait was re-entered", flush=True)
        return
      if self.waits > 1:  # the handler's own wait, after the first
        return
      self.waiting = True
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(1000):  # bytecodes in the wait, where Python runs the handler
        pass
      self.waiting = False
      print("the save finished", flush=True)

  manager = Manager()
  signals.install("resume with the same command")
  signals.finish_saves_before_exit(manager)
  checkpoint.finish(manager)
  print("not stopped", flush=True)
  """
)


def test_a_signal_during_a_checkpoint_wait_stops_the_run_after_the_wait():
  script = [sys.executable, "-c", WAIT_INTERRUPTED_BY_SIGTERM]
  done = subprocess.run(script, capture_output=True, text=True, timeout=120)
  assert done.returncode == 143, done.stderr
  assert done.stdout.splitlines() == ["the save finished"]
  last_line = done.stderr.strip().splitlines()[-1]
  assert last_line.startswith("SIGTERM: stopped; the checkpoints of finished epochs are kept"), last_line
