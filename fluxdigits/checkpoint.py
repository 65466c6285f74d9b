"""Orbax checkpoints of a run: save every epoch, resume from the newest readable one, keep the best.

A checkpoint holds the whole TrainState and the run's `Progress` (epoch, early-stopping state,
metrics history), so a resumed run continues exactly where the killed one left off. A population's
checkpoint holds its stacked state and one Progress per member; a single run (a population of one)
is saved unstacked, as a run always was, so older runs resume and `load_run` reads either.
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
import traceback

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from fluxdigits import config as configs, optim, registry, signals, steps, workdir as workdirs
from fluxdigits.errors import UserError, warn
from fluxdigits.population import member, population_size, stack

# Errors of a full or unwritable disk: a one-line error, never orbax's traceback.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
DISK_ERROR_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "File too large")


class _WithoutOrbaxEchoes(logging.Filter):
  """Drops the log records that repeat a checkpoint failure save(), close() or restore_latest already turned into
  one line: orbax logs each failed write of a save from its threads, a traceback each (hundreds of lines on a full
  disk), and asyncio logs the failures of orbax's tasks once more when they are collected (a damaged checkpoint's
  abandoned reads, whenever the collector gets to them)."""

  def filter(self, record):
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    from_orbax = "/orbax/" in record.pathname or "/orbax/" in text
    if from_orbax and any(t in text for t in DISK_ERROR_TEXTS):
      return False
    return not (record.name == "asyncio" and record.exc_info and _raised_in_orbax(record.exc_info[1]))


def _chain(e: BaseException | None):
  """`e` and the exceptions it was raised from or during, newest first."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def _raised_in_orbax(exc: BaseException | None) -> bool:
  return any(
    "/orbax/" in frame.f_code.co_filename for e in _chain(exc) for frame, _ in traceback.walk_tb(e.__traceback__)
  )


def _is_failed_save_echo(exc_type, exc) -> bool:
  # tensorstore's write callbacks, arriving after orbax closed the event loop of a failed save.
  return exc_type is RuntimeError and str(exc) == "Event loop is closed"


def _is_abandoned_read(unraisable) -> bool:
  # When one array of a damaged checkpoint fails to read, orbax abandons its other reads, and each of those
  # coroutines raises once more when it is collected, long after restore_latest turned the failure into a warning.
  code = getattr(unraisable.object, "cr_code", None)
  closed_unfinished = isinstance(getattr(unraisable.exc_value, "__cause__", None), GeneratorExit)
  return closed_unfinished and code is not None and "/orbax/" in code.co_filename


def _quiet_orbax_echoes():
  """Installs the filter above, and drops the 'Event loop is closed' echoes of a failed save and the abandoned
  reads of a damaged checkpoint (once per process)."""
  absl_logger = logging.getLogger("absl")
  if any(isinstance(f, _WithoutOrbaxEchoes) for f in absl_logger.filters):
    return
  for logger in (absl_logger, logging.getLogger("asyncio")):
    logger.addFilter(_WithoutOrbaxEchoes())
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
  sys.excepthook = lambda t, e, tb: None if _is_failed_save_echo(t, e) else excepthook(t, e, tb)
  sys.unraisablehook = lambda u: (
    None if _is_failed_save_echo(u.exc_type, u.exc_value) or _is_abandoned_read(u) else unraisablehook(u)
  )


@dataclasses.dataclass(frozen=True)
class Progress:
  epoch: int = 0
  best_val_accuracy: float = -1.0
  best_epoch: int = 0
  epochs_without_improvement: int = 0
  history: tuple = ()
  stopped: str = ""  # why a member stopped before num_epochs (early stop, pruned, diverged); '' while it trains

  def after_epoch(self, row: dict, improved: bool) -> "Progress":
    return Progress(
      epoch=row["epoch"],
      best_val_accuracy=row["val_accuracy"] if improved and row["val_accuracy"] is not None else self.best_val_accuracy,
      best_epoch=row["epoch"] if improved else self.best_epoch,
      epochs_without_improvement=0 if improved else self.epochs_without_improvement + 1,
      history=(*self.history, row),
    )


@dataclasses.dataclass(frozen=True)
class Place:
  """How far an epoch got: `step` of its steps trained, each metric's values at each of them ({name: (members,
  step)}), and each member's divergence (None or why) and whether it still trains."""

  epoch: int
  step: int
  values: dict
  diverged: tuple
  active: tuple

  def as_json(self) -> dict:
    values = {k: v.tolist() for k, v in self.values.items()}
    return {**dataclasses.asdict(self), "values": values, "active": [bool(a) for a in self.active]}

  @classmethod
  def from_json(cls, saved: dict) -> "Place":
    values = {k: np.asarray(v, np.float32).reshape(len(saved["active"]), -1) for k, v in saved["values"].items()}
    return cls(saved["epoch"], saved["step"], values, tuple(saved["diverged"]), tuple(saved["active"]))


@dataclasses.dataclass
class _KeepBest(policies.PreservationPolicy):
  """Keeps the checkpoints the newest one names: each member's best epoch, and the last epoch of a stopped member."""

  def should_preserve(self, checkpoints, *, context):
    if not checkpoints:
      return []
    metrics = max(checkpoints, key=lambda c: c.step).metrics or {}
    kept = set(metrics.get("keep_epochs", [metrics.get("best_epoch")]))
    return [c.step in kept for c in checkpoints]


def manager(
  workdir, config, create: bool = True, this_process_only: bool = False, within_epoch: bool = False
) -> ocp.CheckpointManager:
  """The run's checkpoints of finished epochs (or, `within_epoch`, the one place saved within an epoch),
  used by every process of a job, or by this one alone (`this_process_only`: reading a run)."""
  processes = ocp.options.MultiprocessingOptions()
  if this_process_only:
    processes = ocp.options.MultiprocessingOptions(
      primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
  kept = [policies.LatestN(1)] if within_epoch else [policies.LatestN(config.checkpoint.keep), _KeepBest()]
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policies.AnyPreservationPolicy(kept),
    enable_async_checkpointing=True,
    create=create,
    multiprocessing_options=processes,
  )
  folder = pathlib.Path(workdir).absolute() / (workdirs.WITHIN_EPOCH if within_epoch else "checkpoints")
  mngr = ocp.CheckpointManager(folder, item_names=("state", "progress"), options=options)
  signals.finish_saves_before_exit(mngr)
  _quiet_orbax_echoes()
  return mngr


def _disk_error(e: BaseException) -> OSError | None:
  """The OSError of a full or unwritable disk behind `e` (orbax wraps it in its own exceptions), if any."""
  for e in _chain(e):
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
      return e
    for number, text in zip((errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG), DISK_ERROR_TEXTS):
      if text in str(e):
        return OSError(number, text)
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
    raise UserError(
      f"cannot write a checkpoint in {mngr.directory} ({disk.strerror}): it needs about {needed:.0f} MB, "
      f"{free:.0f} MB are free; the checkpoints kept are {kept or 'none'}: free some space (or fix the "
      "permissions), then re-run the same command to resume"
    ) from None


def save(mngr: ocp.CheckpointManager, state, progresses: tuple, configs_: tuple):
  """Starts an asynchronous save of the population's epoch; orbax commits it atomically when written.

  The progress carries the config, so checkpoints never resume under another one, config.json or not.
  A failed earlier save surfaces here, before more epochs are trained on top of it.
  """
  keep = {p.best_epoch for p in progresses} | {p.epoch for p in progresses if p.stopped}
  metrics = {"best_epoch": progresses[0].best_epoch, "keep_epochs": sorted(keep)}
  _save(mngr, max(p.epoch for p in progresses), state, _saved_progress(progresses, configs_), metrics)


def save_place(mngr: ocp.CheckpointManager, state, progresses: tuple, configs_: tuple, place: Place):
  """Saves the state within an epoch, with the progress of the epochs before it and its `place`."""
  saved = {**_saved_progress(progresses, configs_), "place": place.as_json()}
  _save(mngr, (place.epoch - 1) * 10**9 + place.step, state, saved)  # orbax names a save by one growing integer


def _saved_progress(progresses: tuple, configs_: tuple) -> dict:
  if len(progresses) == 1:
    return {**dataclasses.asdict(progresses[0]), "config": configs.flatten(configs_[0])}
  return {
    "epoch": max(p.epoch for p in progresses),
    "members": [dataclasses.asdict(p) for p in progresses],
    "configs": [configs.flatten(c) for c in configs_],
  }


def finish(mngr: ocp.CheckpointManager) -> None:
  """Waits for the save in flight to be committed. A signal meanwhile acts after it: its handler waits for the same
  save, and a thread's join re-entered from a signal handler on the joining thread never returns."""
  with signals.deferred():
    mngr.wait_until_finished()


def _save(mngr: ocp.CheckpointManager, step: int, state, saved: dict, metrics=None):
  if population_size(state) == 1:
    state = member(state, 0)
  with _disk_errors_as_user_errors(mngr, state), signals.deferred():
    finish(mngr)
    mngr.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(saved)),
      metrics=metrics,
    )


def close(mngr: ocp.CheckpointManager, state):
  """Waits for the last save to be committed, then closes the manager."""
  with _disk_errors_as_user_errors(mngr, state), signals.deferred():
    try:
      finish(mngr)
    finally:
      mngr.close()


def _restore(mngr, step, template):
  """The checkpoint of epoch `step`: (stacked state, its progress JSON); `template` is a stacked state, or its
  jax.eval_shape (restored onto the default device)."""
  single = population_size(template) == 1
  if isinstance(jax.tree.leaves(template)[0], jax.ShapeDtypeStruct):
    # an explicit sharding: a run saved across several devices restores onto one (orbax refuses a topology guess)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape[1:] if single else x.shape, x.dtype, sharding=device), template
    )
  else:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, member(template, 0) if single else template)
  restored = mngr.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore())
  )
  return (stack([restored.state]) if single else restored.state), restored.progress


def _one_progress(saved: dict) -> Progress:
  return Progress(**{**saved, "history": tuple(saved["history"])})


def _progresses(saved: dict, step: int, size: int) -> tuple[tuple, list | None]:
  """Each member's Progress and the flat configs they were made with (None before checkpoints held them)."""
  saved = dict(saved)
  if "members" in saved:
    progresses, saved_configs = tuple(_one_progress(p) for p in saved["members"]), saved.get("configs")
  else:
    saved_config = saved.pop("config", None)
    progresses, saved_configs = (_one_progress(saved),), None if saved_config is None else [saved_config]
  if len(progresses) != size:
    raise ValueError(f"it holds {len(progresses)} members, not {size}")
  for p in progresses:
    if p.epoch > step or (p.epoch != step and not p.stopped) or len(p.history) != p.epoch:
      raise ValueError(f"its progress says epoch {p.epoch} with {len(p.history)} epochs of history")
  return progresses, saved_configs


def restore_latest(mngr: ocp.CheckpointManager, template, configs_=None):
  """(stacked state, each member's Progress) from the newest readable checkpoint, or None when there is none.

  `template` is a stacked state of the same structure: restoring against it keeps optax's state types.
  With `configs_` (the members'), a checkpoint made with other configs is refused.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      state, saved = _restore(mngr, step, template)
      progresses, saved_configs = _progresses(saved, step, population_size(template))
    except Exception as e:  # orbax raises many types for damaged files; any of them means "skip this one"
      warn(
        f"checkpoint of epoch {step} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
        "trying the one before"
      )
      continue
    if configs_ is not None and saved_configs is not None:
      for saved_config, config in zip(saved_configs, configs_):
        workdirs.check_same_run(saved_config, config, mngr.directory)
    return state, progresses
  if steps:
    raise UserError(
      f"none of the checkpoints {steps} in {mngr.directory} is readable; nothing was deleted: "
      "move that folder aside, or start over with --restart (which keeps the old run)"
    )
  return None


def restore_place(mngr: ocp.CheckpointManager, template, configs_) -> tuple | None:
  """(stacked state, each member's Progress, Place) saved within an epoch, or None when there is none, or it is
  damaged (a warning: the run resumes from its last finished epoch instead)."""
  step = mngr.latest_step()
  if step is None:
    return None
  try:
    state, saved = _restore(mngr, step, template)
    place = Place.from_json(saved.pop("place"))
    progresses, saved_configs = _progresses(saved, saved["epoch"], population_size(template))
  except Exception as e:  # damaged files: see restore_latest
    warn(f"the place saved within an epoch is unreadable ({type(e).__name__}); resuming from the last finished epoch")
    return None
  for saved_config, config in zip(saved_configs, configs_):
    workdirs.check_same_run(saved_config, config, mngr.directory)
  return state, progresses, place


def restore_epochs(mngr: ocp.CheckpointManager, state, state_epoch: int, epochs) -> dict:
  """{epoch: stacked state of that epoch's checkpoint} for each of `epochs` (`state` itself for `state_epoch`);
  an epoch whose checkpoint is damaged is left out."""
  restored = {}
  for epoch in sorted(set(epochs)):
    try:
      restored[epoch] = state if epoch == state_epoch else _restore(mngr, epoch, state)[0]
    except Exception:  # damaged files: see restore_latest
      continue
  return restored


def restore_best(mngr: ocp.CheckpointManager, state, progresses: tuple, within_epoch: bool = False):
  """(stacked state of each member's best epoch, progresses); a member whose best checkpoint is damaged gets its
  latest state as the best, with a warning. `state` is its progresses' last epoch's, or (`within_epoch`) later."""
  state_epoch = -1 if within_epoch else max(p.epoch for p in progresses)
  epochs = restore_epochs(mngr, state, state_epoch, [p.best_epoch for p in progresses])
  best, fixed = [], []
  for i, p in enumerate(progresses):
    if p.best_epoch in epochs:
      best.append(member(epochs[p.best_epoch], i))
      fixed.append(p)
      continue
    warn(
      f"the best checkpoint, epoch {p.best_epoch}, is unreadable; the latest, epoch {p.epoch}, stands in for it "
      "as the best"
    )
    latest = p.history[-1]
    best.append(member(state, i))
    fixed.append(
      dataclasses.replace(
        p,
        best_epoch=p.epoch,
        best_val_accuracy=(-1.0 if latest["val_accuracy"] is None else latest["val_accuracy"]),
        epochs_without_improvement=0,
      )
    )
  return stack(best), tuple(fixed)


def write_history(path: pathlib.Path, history):
  """metrics.jsonl as the checkpoint knows it: drops lines of an epoch that was killed before its checkpoint."""
  path.write_text("".join(json.dumps(row) + "\n" for row in history))


def write_member_checkpoints(mngr: ocp.CheckpointManager, state, progresses, members, member_dirs):
  """Each member's latest and best state, saved in its folder as a single run saves them."""
  epochs = restore_epochs(
    mngr, state, max(p.epoch for p in progresses), [e for p in progresses for e in (p.epoch, p.best_epoch)]
  )
  for i, (member_dir, progress, member_config) in enumerate(zip(member_dirs, progresses, members)):
    at_best = Progress(
      epoch=progress.best_epoch,
      best_val_accuracy=progress.best_val_accuracy,
      best_epoch=progress.best_epoch,
      history=progress.history[: progress.best_epoch],
    )
    saves = [(at_best, progress.best_epoch)] if 0 < progress.best_epoch != progress.epoch else []
    member_manager = manager(member_dir, member_config)
    try:
      for member_progress, epoch in [*saves, (progress, progress.epoch)]:
        if epoch in epochs and epoch not in member_manager.all_steps():
          saved = stack([member(epochs[epoch], i)])
          save(member_manager, saved, (member_progress,), (member_config,))
    finally:
      close(member_manager, state)


def load_run(workdir, which: str = "best"):
  """(config, data.Info, state, Progress) of a finished or interrupted run, for evaluation, reporting and prediction.

  `which` is 'best' (best validation accuracy) or 'latest'. The state is restored against an
  abstract state built from the run's own config.json, so optax's state keeps its types.
  """
  workdir = pathlib.Path(workdir)
  config_file = workdir / "config.json"
  if (workdir / workdirs.POPULATION_FILE).is_file():
    raise UserError(
      f"{workdir} is a population of runs ({workdir / workdirs.POPULATION_FILE} lists them); pass one "
      f"of its members' folders, e.g. {workdir / 'seed-0'}"
    )
  if not config_file.is_file():
    raise UserError(f"{workdir} is not a fluxdigits run (no config.json); pass the --workdir of a training run")
  try:
    config = configs.from_flat(json.loads(config_file.read_text()))
  except (json.JSONDecodeError, UserError) as e:
    raise UserError(f"{config_file} is unreadable ({e}); it must be the config.json a training run wrote") from e
  info = workdirs.read_dataset_info(workdir)
  mngr = manager(workdir, config, create=False, this_process_only=True)
  # Abstract: restoring needs the state's structure and shapes, not a compiled initialiser.
  template = jax.eval_shape(
    lambda: steps.create_states(
      [config], registry.create(config, len(info.class_names)), info.image_shape, optim.create(config, 1)
    )
  )
  restored = restore_latest(mngr, template)
  if restored is None:
    raise UserError(
      f"{workdir / 'checkpoints'} holds no checkpoint; train the run first (python -m fluxdigits.run ...)"
    )
  state, progresses = restored
  if which == "best":
    state, progresses = restore_best(mngr, state, progresses)
  mngr.close()
  return config, info, member(state, 0), progresses[0]
