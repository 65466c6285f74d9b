"""A run's folder: one process at a time, moved aside whole on --restart, holding one config's run.

Every way into a workdir (the command line, each tuning trial) goes through `open_run`, which
  - takes an exclusive file lock on WORKDIR/.lock for the whole run (the OS drops it when the
    process dies, so a killed run never leaves a stale lock); a second process is refused;
  - refuses a folder that is not a fluxdigits run, so a user's files are never overwritten or moved;
  - on --restart, moves the old run to a fresh `WORKDIR.old-<time>[-n]` while holding its lock;
  - refuses a config that differs from the one the run's checkpoints were made with.
"""

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import time

from fluxdigits import config as configs, signals
from fluxdigits.errors import UserError

LOCK_FILE = ".lock"
# The folder of the place saved within an epoch (a stop, or checkpoint.every_minutes).
WITHIN_EPOCH = "checkpoint-within-epoch"
# What a fluxdigits run writes (train.log: a tuning trial's output, opened before the trial's run starts);
# a non-empty folder with none of these is someone else's.
# population.json: a population's folder (its members' runs are in subfolders).
RUN_FILES = (
  "config.json",
  "checkpoints",
  WITHIN_EPOCH,
  "metrics.jsonl",
  "summary.json",
  "train.log",
  "population.json",
  LOCK_FILE,
)
POPULATION_FILE = "population.json"
# Keys a resumed run may change: they do not alter what was computed up to the last checkpoint.
# The learning rate and weight decay live in the optimizer state and are set anew on resume, so
# a run that diverged can continue from its last good epoch with a lower rate. The data's
# location and cache say where the same data is read from, not what it is.
RESUMABLE_CHANGES = (
  "num_epochs",
  "report",
  "optimizer.learning_rate",
  "optimizer.weight_decay",
  "dataset.data_dir",
  "dataset.cache",
  "microbatches",
  "tensorboard",
  "profile_steps",
  "steps_per_call",
  "seconds_per_call",
  "checkpoint.every_minutes",
)


def _os_error(e: OSError, what: str, path) -> UserError:
  return UserError(f"cannot {what} {path} ({e.strerror or e}); pass a --workdir in a folder you can write to")


def is_run(folder: pathlib.Path) -> bool:
  return any((folder / name).exists() for name in RUN_FILES)


def _check_is_run_or_empty(workdir: pathlib.Path):
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {workdir} is a file, not a folder; pass a folder for the run's files")
  if workdir.is_dir() and not is_run(workdir):
    try:
      entries = sorted(p.name for p in workdir.iterdir())
    except OSError as e:
      raise _os_error(e, "read the workdir", workdir) from None
    if entries:
      raise UserError(
        f"{workdir} is not a fluxdigits run (it holds {', '.join(entries[:3])}"
        f"{', ...' if len(entries) > 3 else ''}) and is left untouched; pass a new or empty --workdir"
      )


@contextlib.contextmanager
def _locked(workdir: pathlib.Path):
  """Holds WORKDIR/.lock (creating WORKDIR) until the block ends; raises UserError if another process holds it."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise _os_error(e, "create the workdir", workdir) from None
  lock_file = workdir / LOCK_FILE
  while True:
    try:
      fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise _os_error(e, "write in the workdir", workdir) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise _os_error(e, "lock", lock_file) from None
      raise UserError(
        f"{workdir} is in use by another fluxdigits process (pid {holder}); wait for it to end "
        f"or stop it (kill {holder}), or pass another --workdir"
      ) from None
    # The folder may have been moved aside (--restart) between open() and flock(): then this lock
    # guards the old run, not WORKDIR, and the new WORKDIR's lock file must be taken instead.
    try:
      same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
    workdir.mkdir(parents=True, exist_ok=True)
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)


def _aside_name(workdir: pathlib.Path) -> pathlib.Path:
  stem = f"{workdir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
  aside, n = workdir.with_name(stem), 1
  while aside.exists():
    n += 1
    aside = workdir.with_name(f"{stem}-{n}")
  return aside


def _move_aside(workdir: pathlib.Path, log) -> None:
  if pathlib.Path.cwd().resolve().is_relative_to(workdir.resolve()):
    raise UserError(
      f"--restart would move {workdir}, which holds the current directory; run from elsewhere "
      "or pass a --workdir below the current directory"
    )
  with _locked(workdir):
    aside = _aside_name(workdir)
    try:
      os.rename(workdir, aside)  # never into an existing folder, unlike shutil.move
    except OSError as e:
      raise _os_error(e, "move aside", workdir) from None
    log(f"--restart: moved the previous run to {aside}")


def read_config(path: pathlib.Path) -> dict:
  """A run's flat config.json; one clear error for any damage."""
  fix = "it must be the config.json a training run wrote: restore it, or use --restart or another --workdir"
  try:
    saved = json.loads(path.read_text())
  except IsADirectoryError:
    raise UserError(f"{path} is a folder; {fix}") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is unreadable ({type(e).__name__}: {e}); {fix}") from None
  if not isinstance(saved, dict):
    raise UserError(f"{path} holds {type(saved).__name__}, not a JSON object of config keys; {fix}")
  return saved


def check_same_run(saved: dict, config, where) -> None:
  """Raises unless `config` may continue a run made with the flat config `saved`."""
  new = configs.flatten(config)
  differing = sorted(
    k
    for k in set(saved) | set(new)
    if k not in RESUMABLE_CHANGES and saved.get(k, "<absent>") != new.get(k, "<absent>")
  )
  if differing:
    shown = ", ".join(f"{k} ({saved.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r})" for k in differing[:6])
    raise UserError(
      f"{where} holds a run with another config: {shown}; resume with the same config, "
      "or pass --restart (the old run is moved aside) or another --workdir"
    )


def has_checkpoints(workdir: pathlib.Path) -> bool:
  folders = [workdir / "checkpoints", workdir / WITHIN_EPOCH]
  return any(folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir()) for folder in folders)


def write_config(workdir: pathlib.Path, config) -> None:
  """WORKDIR/config.json, written only when it changes (a finished read-only run stays readable)."""
  _write_if_changed(workdir / "config.json", json.dumps(configs.flatten(config), indent=2, allow_nan=False) + "\n")


def _write_if_changed(path: pathlib.Path, text: str) -> None:
  try:
    if not path.is_file() or path.read_text(errors="replace") != text:
      path.write_text(text)
  except OSError as e:
    raise _os_error(e, "write", path) from None


DATASET_FILE = "dataset.json"


def write_dataset_info(workdir: pathlib.Path, info) -> None:
  """WORKDIR/dataset.json: the class names, image shape and normalisation the run's model was trained with."""
  _write_if_changed(workdir / DATASET_FILE, json.dumps(info.to_json(), indent=2) + "\n")


def read_dataset_info(workdir: pathlib.Path):
  """The run's data.Info, from the dataset.json its training wrote."""
  from fluxdigits import data

  path = workdir / DATASET_FILE
  try:
    return data.Info.from_json(json.loads(path.read_text()))
  except FileNotFoundError:
    raise UserError(
      f"{path} is missing; a training run writes it when it starts: restore it, or train the run again"
    ) from None
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    raise UserError(
      f"{path} is unreadable ({type(e).__name__}: {e}); restore the dataset.json the training run wrote"
    ) from None


def with_recorded_data_dir(config, workdir: pathlib.Path):
  """The config with the data dir a resumed run recorded, when this command names none (nor $TFDS_DATA_DIR)."""
  if config.dataset.data_dir or os.environ.get("TFDS_DATA_DIR") or not has_checkpoints(workdir):
    return config
  recorded = read_config(workdir / "config.json").get("dataset.data_dir")
  if not recorded or not isinstance(recorded, str):
    return config
  return configs.override(config, [f"dataset.data_dir={recorded}"])


def finished_summary(workdir: pathlib.Path, config) -> dict | None:
  """summary.json when WORKDIR holds this config's run, finished at this config's num_epochs; else None."""
  summary_file, config_file = workdir / "summary.json", workdir / "config.json"
  if not (summary_file.is_file() and config_file.is_file()):
    return None
  try:
    summary = json.loads(summary_file.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return None  # damaged: the run is finished again from its checkpoints
  saved = read_config(config_file)
  check_same_run(saved, config, workdir)
  if not isinstance(summary, dict) or summary.get("num_epochs") != config.num_epochs:
    return None
  return summary


def _listed(names) -> str:
  return ", ".join(names) if len(names) <= 8 else f"{', '.join(names[:3])}, ..., {names[-1]} ({len(names)} members)"


def check_population(workdir: pathlib.Path, member_dirs) -> None:
  """Refuses a population in WORKDIR other than the one there (or a single run there); records it if new.

  A recorded population none of whose members has started (one refused as too large for memory, say) holds
  nothing to lose: another takes its place."""
  names = [os.path.relpath(d, workdir) for d in member_dirs]
  single = names == ["."]
  path = workdir / POPULATION_FILE
  try:
    recorded = json.loads(path.read_text())["members"] if path.is_file() else None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(
      f"{path} is unreadable ({type(e).__name__}); restore it, or use --restart or another --workdir"
    ) from None
  if recorded is not None and recorded != names and not any(is_run(workdir / name) for name in recorded):
    recorded = None
  if single:
    if recorded is not None:
      raise UserError(
        f"{workdir} holds a population ({path}); train it again with the same --seeds, pass one of its "
        "members' folders to the report or predict commands, or use another --workdir"
      )
    path.unlink(missing_ok=True)
    return
  if (workdir / "config.json").is_file():
    raise UserError(f"{workdir} holds a single run, not a population; pass another --workdir (or --restart)")
  if recorded is not None and recorded != names:
    raise UserError(
      f"{workdir} holds a population of {_listed(recorded)}, not {_listed(names)}; train the same "
      "members (e.g. the same --seeds), or pass --restart (the old one is moved aside) or another --workdir"
    )
  if recorded is None:
    try:
      path.write_text(json.dumps({"members": names}, indent=2) + "\n")
    except OSError as e:
      raise _os_error(e, "write", path) from None


@contextlib.contextmanager
def open_run(workdir, config, restart: bool = False, log=print):
  """Holds WORKDIR for one run of `config` (see the module's docstring); yields its absolute path."""
  workdir = pathlib.Path(workdir).absolute()
  _check_is_run_or_empty(workdir)
  if restart and workdir.exists():
    _move_aside(workdir, log)
  with _locked(workdir):
    held_for_tests("lock")
    config_file = workdir / "config.json"
    if has_checkpoints(workdir) and config_file.exists():
      check_same_run(read_config(config_file), config, workdir)
    yield workdir


# Tests that race another process or a signal against a run set HOLD_ENV to POINT:FILE: at POINT ('lock': once the
# run holds its workdir; 'checkpoint': once a checkpoint save is committed; 'call': after each train call) the run
# waits while FILE exists, provably alive, so that no test hopes a run outlives another's start-up or a signal's
# delivery. With HOLD_AFTER_ENV set to a path, only once that path exists (the checkpoint a test waits for).
HOLD_ENV, HOLD_AFTER_ENV = "FLUXDIGITS_TEST_HOLD", "FLUXDIGITS_TEST_HOLD_AFTER"


def held_for_tests(point: str, first=None) -> None:
  """Waits as HOLD_ENV says at `point`, after calling `first` (committing a save); PATH.held exists while it waits."""
  where, _, path = os.environ.get(HOLD_ENV, "").partition(":")
  if where != point:
    return
  if first is not None:
    first()
  after = os.environ.get(HOLD_AFTER_ENV)
  if after and not os.path.exists(after):
    return  # not yet: marking PATH.held now would let a test act before the point it waits for
  held = pathlib.Path(f"{path}.held")
  held.touch()
  while os.path.exists(path) and (not after or os.path.exists(after)) and signals.requested() is None:
    time.sleep(0.02)
  held.unlink(missing_ok=True)
