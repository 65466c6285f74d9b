"""Orbax checkpoints of a run: save every epoch, resume from the newest readable one, keep the best.

A checkpoint holds the whole TrainState and the run's `Progress` (epoch, early-stopping state,
metrics history), so a resumed run continues exactly where the killed one left off.
"""

import contextlib
import dataclasses
import errno
import json
import logging
import math
import pathlib
import shutil
import sys

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from fluxdigits import config as configs, signals, workdir as workdirs
from fluxdigits.errors import UserError, warn

# Errors of a full or unwritable disk: a one-line error, never orbax's traceback.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
DISK_ERROR_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "File too large")


class _WithoutFailedSaveTracebacks(logging.Filter):
  """Orbax logs each failed write of a save from its threads, a traceback each (hundreds of lines on a full
  disk), and asyncio logs the same failures of orbax's tasks once more when they are collected; save() and
  close() turn the failure into one line, so those records are dropped."""

  def filter(self, record):
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    from_orbax = "/orbax/" in record.pathname or "/orbax/" in text
    return not (from_orbax and any(t in text for t in DISK_ERROR_TEXTS))


def _is_failed_save_echo(exc_type, exc) -> bool:
  # tensorstore's write callbacks, arriving after orbax closed the event loop of a failed save.
  return exc_type is RuntimeError and str(exc) == "Event loop is closed"


def _quiet_failed_saves():
  """Installs the filter above, and drops the 'Event loop is closed' echoes of a failed save (once per process)."""
  absl_logger = logging.getLogger("absl")
  if any(isinstance(f, _WithoutFailedSaveTracebacks) for f in absl_logger.filters):
    return
  for logger in (absl_logger, logging.getLogger("asyncio")):
    logger.addFilter(_WithoutFailedSaveTracebacks())
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
  sys.excepthook = lambda t, e, tb: None if _is_failed_save_echo(t, e) else excepthook(t, e, tb)
  sys.unraisablehook = lambda u: None if _is_failed_save_echo(u.exc_type, u.exc_value) else unraisablehook(u)

@dataclasses.dataclass(frozen=True)
class Progress:
  epoch: int = 0
  best_val_accuracy: float = -1.0
  best_epoch: int = 0
  epochs_without_improvement: int = 0
  history: tuple = ()

  def after_epoch(self, row: dict, improved: bool) -> "Progress":
    return Progress(
        epoch=row["epoch"],
        best_val_accuracy=row["val_accuracy"] if improved and row["val_accuracy"] is not None else self.best_val_accuracy,
        best_epoch=row["epoch"] if improved else self.best_epoch,
        epochs_without_improvement=0 if improved else self.epochs_without_improvement + 1,
        history=(*self.history, row),
    )


@dataclasses.dataclass
class _KeepBest(policies.PreservationPolicy):
  """Keeps the checkpoint that the newest checkpoint's progress names as the best epoch."""

  def should_preserve(self, checkpoints, *, context):
    if not checkpoints:
      return []
    newest = max(checkpoints, key=lambda c: c.step)
    best = (newest.metrics or {}).get("best_epoch")
    return [c.step == best for c in checkpoints]


def manager(workdir, config, create: bool = True, this_process_only: bool = False) -> ocp.CheckpointManager:
  """The run's checkpoints, used by every process of a job, or by this one alone (`this_process_only`: reading a run)."""
  processes = ocp.options.MultiprocessingOptions()
  if this_process_only:
    processes = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(config.checkpoint.keep), _KeepBest()]),
      enable_async_checkpointing=True,
      create=create,
      multiprocessing_options=processes,
  )
  mngr = ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints", item_names=("state", "progress"),
                               options=options)
  signals.finish_saves_before_exit(mngr)
  _quiet_failed_saves()
  return mngr


def _disk_error(e: BaseException) -> OSError | None:
  """The OSError of a full or unwritable disk behind `e` (orbax wraps it in its own exceptions), if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
      return e
    for number, text in zip((errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG), DISK_ERROR_TEXTS):
      if text in str(e):
        return OSError(number, text)
    e = e.__cause__ or e.__context__
  return None


@contextlib.contextmanager
def _disk_errors_as_user_errors(mngr: ocp.CheckpointManager, state):
  try:
    yield
  except Exception as e:
    disk = _disk_error(e)
    if disk is None:
      raise
    needed = sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)) / 2**20
    free = shutil.disk_usage(mngr.directory).free / 2**20
    kept = [step for step in mngr.all_steps() if (mngr.directory / str(step)).is_dir()]
    raise UserError(f"cannot write a checkpoint in {mngr.directory} ({disk.strerror}): it needs about {needed:.0f} MB, "
                    f"{free:.0f} MB are free; the checkpoints kept are {kept or 'none'}: free some space (or fix the "
                    "permissions), then re-run the same command to resume") from None


def save(mngr: ocp.CheckpointManager, state, progress: Progress, config):
  """Starts an asynchronous save of epoch `progress.epoch`; orbax commits it atomically when written.

  The progress carries the config, so checkpoints never resume under another one, config.json or not.
  A failed earlier save surfaces here, before more epochs are trained on top of it.
  """
  with _disk_errors_as_user_errors(mngr, state), signals.deferred():
    mngr.wait_until_finished()
    mngr.save(progress.epoch,
              args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(
                  {**dataclasses.asdict(progress), "config": configs.flatten(config)})),
              metrics={"best_epoch": progress.best_epoch})


def close(mngr: ocp.CheckpointManager, state):
  """Waits for the last save to be committed, then closes the manager."""
  with _disk_errors_as_user_errors(mngr, state), signals.deferred():
    try:
      mngr.wait_until_finished()
    finally:
      mngr.close()


def _restore(mngr, step, template):
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                    progress=ocp.args.JsonRestore()))


def _progress(saved: dict, step: int) -> tuple[Progress, dict | None]:
  """The Progress a checkpoint holds and the flat config it was made with (None before checkpoints held one)."""
  saved = dict(saved)
  config = saved.pop("config", None)
  progress = Progress(**{**saved, "history": tuple(saved["history"])})
  if progress.epoch != step or len(progress.history) != step:
    raise ValueError(f"its progress says epoch {progress.epoch} with {len(progress.history)} epochs of history")
  return progress, config


def restore_latest(mngr: ocp.CheckpointManager, template, config=None):
  """(state, Progress) from the newest readable checkpoint, or None when there is none.

  `template` is a state of the same structure: restoring against it keeps optax's state types.
  With `config`, a checkpoint made with another config is refused.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      restored = _restore(mngr, step, template)
      progress, saved_config = _progress(restored.progress, step)
    except Exception as e:  # orbax raises many types for damaged files; any of them means "skip this one"
      warn(f"checkpoint of epoch {step} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
           "trying the one before")
      continue
    if config is not None and saved_config is not None:
      workdirs.check_same_run(saved_config, config, mngr.directory)
    return restored.state, progress
  if steps:
    raise UserError(f"none of the checkpoints {steps} in {mngr.directory} is readable; nothing was deleted: "
                    "move that folder aside, or start over with --restart (which keeps the old run)")
  return None


def restore_best(mngr: ocp.CheckpointManager, state, progress: Progress):
  """(state of the best epoch, Progress); if that checkpoint is damaged, the latest `state` becomes the best, with a warning."""
  if progress.best_epoch == progress.epoch:
    return state, progress
  try:
    return _restore(mngr, progress.best_epoch, state).state, progress
  except Exception as e:  # damaged files: see restore_latest
    warn(f"the best checkpoint, epoch {progress.best_epoch}, is unreadable ({type(e).__name__}); the latest, epoch "
         f"{progress.epoch}, stands in for it as the best")
  latest = progress.history[-1]
  return state, dataclasses.replace(progress, best_epoch=progress.epoch, best_val_accuracy=(
      -1.0 if latest["val_accuracy"] is None else latest["val_accuracy"]), epochs_without_improvement=0)


def write_history(path: pathlib.Path, history):
  """metrics.jsonl as the checkpoint knows it: drops lines of an epoch that was killed before its checkpoint."""
  path.write_text("".join(json.dumps(row) + "\n" for row in history))
