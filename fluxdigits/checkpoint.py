"""Orbax checkpoints of a run: save every epoch, resume from the newest readable one, keep the best.

A checkpoint holds the whole TrainState and the run's `Progress` (epoch, early-stopping state,
metrics history), so a resumed run continues exactly where the killed one left off.
"""

import dataclasses
import json
import pathlib
import shutil
import time

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from fluxdigits import config as configs
from fluxdigits.errors import UserError

# Keys a resumed run may change: they do not alter what was computed up to the last checkpoint.
# The learning rate and weight decay live in the optimizer state and are set anew on resume, so
# a run that diverged can continue from its last good epoch with a lower rate.
RESUMABLE_CHANGES = ("num_epochs", "report", "optimizer.learning_rate", "optimizer.weight_decay")


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
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints", item_names=("state", "progress"),
                               options=options)


def save(mngr: ocp.CheckpointManager, state, progress: Progress):
  """Starts an asynchronous save of epoch `progress.epoch`; orbax commits it atomically when written."""
  mngr.save(progress.epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    progress=ocp.args.JsonSave(dataclasses.asdict(progress))),
            metrics={"best_epoch": progress.best_epoch})


def _restore(mngr, step, template):
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                    progress=ocp.args.JsonRestore()))


def restore_latest(mngr: ocp.CheckpointManager, template, log=print):
  """(state, Progress) from the newest readable checkpoint, or None when there is none.

  `template` is a state of the same structure: restoring against it keeps optax's state types.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      restored = _restore(mngr, step, template)
    except Exception as e:  # orbax raises many types for damaged files; any of them means "skip this one"
      log(f"warning: checkpoint of epoch {step} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
          "trying the one before")
      continue
    p = restored.progress
    return restored.state, Progress(**{**p, "history": tuple(p["history"])})
  if steps:
    raise UserError(f"none of the checkpoints {steps} in {mngr.directory} is readable; nothing was deleted: "
                    "move that folder aside, or start over with --restart (which keeps the old run)")
  return None


def restore_state(mngr: ocp.CheckpointManager, step: int, template):
  return _restore(mngr, step, template).state


def write_history(path: pathlib.Path, history):
  """metrics.jsonl as the checkpoint knows it: drops lines of an epoch that was killed before its checkpoint."""
  path.write_text("".join(json.dumps(row) + "\n" for row in history))


def prepare_workdir(workdir, config, restart: bool, log=print) -> pathlib.Path:
  """Creates WORKDIR (or moves an old one aside with `restart`) and checks it holds this config's run."""
  workdir = pathlib.Path(workdir)
  saved_file = workdir / "config.json"
  if restart and workdir.exists():
    aside = workdir.with_name(f"{workdir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(workdir), str(aside))
    log(f"--restart: moved the previous run to {aside}")
  elif saved_file.exists():
    try:
      saved = {**configs.VALUES_BEFORE_KEY_EXISTED, **json.loads(saved_file.read_text())}
    except json.JSONDecodeError as e:
      raise UserError(f"{saved_file} is not valid JSON ({e}); fix it, or use --restart or another --workdir") from e
    new = configs.flatten(config)
    differing = sorted(k for k in set(saved) | set(new)
                       if k not in RESUMABLE_CHANGES and saved.get(k, "<absent>") != new.get(k, "<absent>"))
    if differing:
      shown = ", ".join(f"{k} ({saved.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r})" for k in differing[:6])
      raise UserError(f"{workdir} holds a run with another config: {shown}; resume with the same config, "
                      "or pass --restart (the old run is moved aside) or another --workdir")
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(json.dumps(configs.flatten(config), indent=2) + "\n")
  return workdir
