"""The one exception type a user is shown as a single line, never a traceback."""


class UserError(Exception):
  """Bad input (config, file, data, checkpoint): the message says what is wrong and how to fix it."""
  exit_code = 2


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""
  exit_code = 1
