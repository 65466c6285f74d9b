"""What every command line shares (run, tune, predict, export, report): bad input as one line and its exit code,
Ctrl-C as a hint and 130, and the --config.KEY=VALUE arguments."""

import sys

from fluxdigits import errors
from fluxdigits.errors import UserError


def main(command, interrupted: str) -> int:
  """Runs a command's body, which returns its exit code (None: 0): a UserError becomes `error: ...` on stderr and its
  exit code, a file-system error one line and 2, Ctrl-C the `interrupted` hint and 130."""
  try:
    return command() or 0
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  except OSError as e:  # a folder the command cannot write to, a full disk outside the checkpoints
    print(f"error: {errors.describe_os_error(e)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"interrupted; {interrupted}", file=sys.stderr)
    return 130


def config_overrides(rest, usage: str) -> list[str]:
  """KEY=VALUE of each --config.KEY=VALUE argument; any other argument is refused."""
  for arg in rest:
    if not arg.startswith("--config."):
      raise UserError(f"unknown argument {arg!r}; usage: {usage}")
  return [arg[len("--config.") :] for arg in rest]
