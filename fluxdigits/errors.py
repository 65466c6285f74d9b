"""The one exception type a user is shown as a single line, never a traceback; warnings on stderr."""

import sys


class UserError(Exception):
  """Bad input (config, file, data, checkpoint): the message says what is wrong and how to fix it."""

  exit_code = 2


class TrainingDiverged(UserError):
  """The loss became NaN or infinite, or exploded; the run stops and keeps its last good checkpoint."""

  exit_code = 1


def warn(message: str) -> None:
  """A warning line on stderr, apart from the progress on stdout."""
  print(f"warning: {message}", file=sys.stderr, flush=True)


def describe_os_error(e: OSError) -> str:
  """One line for a file-system error: what failed on which path, and what to do."""
  where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None) or "a file"
  return f"{e.strerror or e} on {where}; check that the path exists, is a folder you can write to, and has free space"
