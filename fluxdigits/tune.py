"""Hyperparameter tuning on Optuna: python -m fluxdigits.tune SWEEP.py --trials N [options] [--config.KEY=VALUE ...]

A sweep file is an experiment file (its `get_config()` is the base config) that also defines
`space(trial)`: Optuna define-by-run suggestions named by config keys, e.g.
`trial.suggest_float("optimizer.learning_rate", 1e-4, 1e-2, log=True)`. Each trial is an ordinary
run in WORKDIR/trials/NNNN/ trained by `loop.train`; its objective is its best validation
accuracy, each epoch's going to the pruner. The study lives in an Optuna storage (SQLite in WORKDIR
by default), so the command resumes after a crash and any number of workers can share it.
"""

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import pathlib
import socket
import sys
import time
import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from fluxdigits import cli, config as configs, loop, signals, tune_report
from fluxdigits.errors import TrainingDiverged, UserError
from fluxdigits.tune_report import FINISHED, best_value, count, directory_number

USAGE = (
  "python -m fluxdigits.tune SWEEP.py --trials N [--workdir DIR] [--sampler tpe|random|grid] "
  "[--pruner median|hyperband|none] [--population K] [--storage URL] [--config.KEY=VALUE ...]"
)
# A dead worker's trial is failed (and re-queued) by another worker once its heartbeat is this old.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
# Random draws of the space that the checks before training run: enough to reach conditional branches.
DRY_RUN_DRAWS = 32
HOST = socket.gethostname()


@functools.cache
def _retry():
  """Re-queues a dead worker's trial with its intermediate values (made when needed: Optuna warns as it is made)."""
  return RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog="python -m fluxdigits.tune",
    usage=USAGE.replace(" [--pruner", "\n" + " " * 6 + "[--pruner"),
    description=__doc__.split("\n", 2)[2],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="--config.KEY=VALUE overrides the sweep's base config (`python -m fluxdigits.run --help` lists\n"
    "the keys)\n\n"
    "example: python -m fluxdigits.tune sweeps/mnist_cnn.py --trials 20 --population 4",
  )
  parser.add_argument("sweep", help="a sweep file, e.g. sweeps/mnist_cnn.py")
  parser.add_argument(
    "--trials",
    type=int,
    required=True,
    help="finished (complete or pruned) trials the study ends with, all workers together",
  )
  parser.add_argument("--workdir", help="tuning directory (default: runs/<sweep file stem>-tune)")
  parser.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe")
  parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
  parser.add_argument(
    "--population",
    type=int,
    default=1,
    metavar="K",
    help="ask the sampler for K trials at a time and train those of one shape (model, batch size, "
    "optimizer, ...) at once, as one population (default 1: one trial at a time)",
  )
  parser.add_argument(
    "--storage", help="Optuna storage URL (default: sqlite:///WORKDIR/study.db); journal:PATH for a journal file"
  )
  args, rest = parser.parse_known_args(argv)
  overrides = cli.config_overrides(rest, USAGE)
  if args.trials < 1:
    raise UserError(f"--trials must be at least 1, got {args.trials}")
  if args.population < 1:
    raise UserError(f"--population must be at least 1, got {args.population}")
  if configs.smoke():
    args.trials = min(args.trials, configs.SMOKE_TRIALS)
  return args, overrides


# --- the sweep and its search space, checked before anything trains --------------------------------


def load_sweep(path):
  """(module, base config): the sweep file's get_config() and its space(trial)."""
  module = configs.load_module(path, "sweep")
  if not callable(getattr(module, "space", None)):
    raise UserError(
      f"sweep file {path!r} has no space(trial) function; define one that calls "
      "trial.suggest_*('CONFIG.KEY', ...), e.g. trial.suggest_float('optimizer.learning_rate', 1e-4, 1e-2, log=True)"
    )
  return module, configs.config_from(module, path)


def with_values(config, values: dict):
  """`config` with config keys set to the given (typed) values, validated."""
  flat = configs.flatten(config)
  unknown = sorted(set(values) - set(flat))
  if unknown:
    raise UserError(f"the search space names unknown config key {unknown[0]!r}; known keys: {', '.join(flat)}")
  return configs.from_flat({**flat, **values})


def space_of(sweep, base_config) -> dict:
  """{config key: sorted distribution JSONs}: the space as random draws of space(trial) see it,
  every extreme validated."""
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  seen = {}
  for _ in range(DRY_RUN_DRAWS):
    trial = study.ask()
    try:
      sweep.space(trial)
    except Exception as e:
      raise UserError(f"space(trial) in the sweep file failed: {type(e).__name__}: {e}") from e
    for name, distribution in trial.distributions.items():
      seen.setdefault(name, {})[optuna.distributions.distribution_to_json(distribution)] = distribution
    study.tell(trial, 0.0)
  if not seen:
    raise UserError(
      "the search space is empty: space(trial) suggests nothing; "
      "call trial.suggest_*('CONFIG.KEY', ...) for each config key to tune"
    )
  for name, distributions in seen.items():
    for distribution in distributions.values():
      for value in extremes(distribution):
        try:
          with_values(base_config, {name: value})
        except UserError as e:
          if str(e).startswith("the search space names unknown"):
            raise
          raise UserError(f"the search space's {name!r} can take {value!r}, which the config refuses: {e}") from None
  return {name: sorted(distributions) for name, distributions in sorted(seen.items())}


def extremes(distribution):
  if isinstance(distribution, optuna.distributions.CategoricalDistribution):
    return distribution.choices
  return distribution.low, distribution.high


def grid_of(space: dict) -> dict:
  """GridSampler's {name: values}: only categorical or stepped parameters have a grid."""
  grid = {}
  for name, jsons in space.items():
    values = []
    for text in jsons:
      d = optuna.distributions.json_to_distribution(text)
      if isinstance(d, optuna.distributions.CategoricalDistribution):
        values += d.choices
      elif d.step is not None and not d.log:
        count = int(round((d.high - d.low) / d.step)) + 1
        values += [d.low + i * d.step for i in range(count)]
      else:
        raise UserError(
          f"--sampler grid needs categorical or stepped parameters; {name!r} is a continuous range: "
          "give it step=..., use suggest_categorical, or use --sampler tpe|random"
        )
    grid[name] = list(dict.fromkeys(values))
  return grid


# --- the study -------------------------------------------------------------------------------------


def open_storage(url: str):
  try:
    if url.startswith("journal:"):
      path = url[len("journal:") :].removeprefix("//")
      return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    # SQLite waits for a lock instead of failing when two workers write at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(
      url,
      engine_kwargs=engine,
      heartbeat_interval=HEARTBEAT_SECONDS,
      grace_period=GRACE_SECONDS,
      heartbeat_stale_trial_callback=_retry(),
    )
  except Exception as e:
    first_line = (str(e).splitlines() or [""])[0][:300]
    raise UserError(
      f"cannot open the storage {url!r} ({type(e).__name__}: {first_line}); pass an Optuna storage URL "
      "that this machine can reach, e.g. sqlite:///tune.db or postgresql://USER:PASSWORD@HOST/DB"
    ) from None


def open_study(storage, name: str, space: dict, base_config, sampler, pruner) -> optuna.Study:
  """Creates the study, or loads it after checking it was made with this search space and base config."""
  study = optuna.create_study(
    storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True
  )
  base = configs.flatten(base_config)
  recorded_space, recorded_base = study.user_attrs.get("space"), study.user_attrs.get("base_config")
  if recorded_space is None:
    study.set_user_attr("space", space)
    study.set_user_attr("base_config", base)
    return study
  if recorded_space != space:
    changed = sorted(k for k in set(space) | set(recorded_space) if space.get(k) != recorded_space.get(k))
    raise UserError(
      f"study {name!r} in this storage was made with another search space (differs in: {', '.join(changed)}); "
      "keep the sweep's space as it was, or use another --workdir (or --storage)"
    )
  changed = sorted(k for k in set(base) | set(recorded_base) if base.get(k) != recorded_base.get(k))
  if changed:
    shown = ", ".join(f"{k} ({recorded_base.get(k)!r} -> {base.get(k)!r})" for k in changed[:6])
    raise UserError(
      f"study {name!r} in this storage was made with another base config: {shown}; "
      "run with the same sweep and --config values, or use another --workdir (or --storage)"
    )
  return study


def make_sampler(name: str, space: dict):
  if name == "grid":
    return optuna.samplers.GridSampler(grid_of(space))
  if name == "random":
    return optuna.samplers.RandomSampler()
  # constant_liar: parallel workers see each other's running trials and sample elsewhere.
  return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True)


def make_pruner(name: str, trials: int, num_epochs: int):
  if name == "median":
    # Prune against the median of finished trials once a quarter of the budget (at most 5) has finished.
    return optuna.pruners.MedianPruner(n_startup_trials=max(1, min(5, trials // 4)), n_warmup_steps=0)
  if name == "hyperband":
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=num_epochs)
  return optuna.pruners.NopPruner()


@contextlib.contextmanager
def exclusive(lock_file: pathlib.Path):
  """One worker of this machine at a time inside the block."""
  with open(lock_file, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


def requeue_interrupted(study, log=print):
  """Fails this machine's trials whose worker died (kill -9, Ctrl-C) and re-queues them, to resume from
  their checkpoints.

  Other machines' dead workers are found by the storage's heartbeat (an RDB storage), a little later.
  """
  trials = study.get_trials(deepcopy=False)
  retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
  for t in trials:
    if t.number in retried or t.user_attrs.get("host") != HOST:
      continue
    dead = t.state == TrialState.RUNNING and not process_alive(t.user_attrs.get("pid"))
    if dead:
      with contextlib.suppress(RuntimeError, ValueError):  # another worker got there first
        study.tell(t.number, state=TrialState.FAIL)
    if dead or (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
      _retry()(study, study.get_trials(deepcopy=False)[t.number])
      log(f"trial {directory_number(t):04d} was interrupted; it is queued to resume from its last checkpoint")


def process_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True
  return True


# --- one trial -------------------------------------------------------------------------------------


PRUNED = "pruned"


def pruning(trial, config, prune: bool):
  """A run's on_epoch: reports each epoch's validation accuracy to the trial; says 'pruned ...' when the
  pruner stops it."""

  def on_epoch(row):
    trial.report(row["val_accuracy"], row["epoch"])
    # The last epoch is never pruned: it has been paid for, and the trial is complete.
    if prune and row["epoch"] < config.num_epochs and trial.should_prune():
      return (
        f"{PRUNED} after epoch {row['epoch']}: validation accuracy {row['val_accuracy']:.4f} is behind the other trials"
      )
    return None

  return on_epoch


def start_trial(trial, sweep, base_config, workdir: pathlib.Path):
  """(config, run directory) of an asked trial, recorded in its attributes; a re-queued trial gets its predecessor's."""
  trial.set_user_attr("host", HOST)
  trial.set_user_attr("pid", os.getpid())
  trial.set_user_attr("interrupted", False)  # a resumed trial inherits its predecessor's attributes
  sweep.space(trial)
  config = with_values(base_config, trial.params)
  number = directory_number(trial.study.get_trials(deepcopy=False)[trial.number])
  trial.set_user_attr("directory", f"trials/{number:04d}")
  trial_dir = workdir / "trials" / f"{number:04d}"
  if number != trial.number:
    print(f"trial {trial.number:04d} resumes trial {number:04d} ({trial_dir}) from its last checkpoint", flush=True)
  trial_dir.mkdir(parents=True, exist_ok=True)
  return config, trial_dir


def trial_result(trial, summary: dict) -> float:
  """The objective of a trained trial's summary; raises TrialPruned for one the pruner stopped or that diverged."""
  stopped = summary.get("stopped", "")
  if stopped.startswith("diverged"):
    trial.set_user_attr("diverged", stopped)
  if stopped.startswith((PRUNED, "diverged")):
    raise optuna.TrialPruned(stopped)
  return summary["best_val_accuracy"]


def make_objective(sweep, base_config, workdir: pathlib.Path, prune: bool):
  def objective(trial):
    config, trial_dir = start_trial(trial, sweep, base_config, workdir)
    with open(trial_dir / "train.log", "a") as log_file:
      try:
        prune_now = pruning(trial, config, prune)
        summary = loop.train(
          [config], trial_dir, log=file_log(log_file), on_epoch=lambda member, row: prune_now(row), test=False
        )[0]
      except TrainingDiverged as e:
        summary = {"stopped": f"diverged: {e}"}
      except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        raise
    return trial_result(trial, summary)

  return objective


def file_log(log_file):
  return lambda line: print(line, file=log_file, flush=True)


def train_population_of_trials(study, sweep, base_config, workdir: pathlib.Path, size: int, prune: bool, target: int):
  """Asks the sampler for `size` trials and trains those of one shape together, a population each (population.py).

  Each trial keeps its own run directory, reports each epoch to the pruner and is told its result as if trained
  alone; the population's stacked checkpoints are in WORKDIR/populations/, so an interrupted one resumes.
  """
  from fluxdigits import population

  trials = [study.ask() for _ in range(size)]
  try:
    started = [start_trial(trial, sweep, base_config, workdir) for trial in trials]
    for group in population.groups([config for config, _ in started]):
      members, member_dirs = [started[i][0] for i in group], [started[i][1] for i in group]
      numbers = [int(d.name) for d in member_dirs]
      name = f"{numbers[0]:04d}-{numbers[-1]:04d}-{len(numbers)}-{hashlib.sha1(str(numbers).encode()).hexdigest()[:8]}"
      # A trial alone in its shape trains in its own directory, as without --population.
      population_dir = workdir / "populations" / name if len(group) > 1 else member_dirs[0]
      for i in group:
        trials[i].set_user_attr("population", str(population_dir.relative_to(workdir)))
      population_dir.mkdir(parents=True, exist_ok=True)
      pruners = [pruning(trials[i], started[i][0], prune) for i in group]
      with open(population_dir / "train.log", "a") as log_file:
        try:
          summaries = loop.train(
            members,
            population_dir,
            member_dirs,
            log=file_log(log_file),
            on_epoch=lambda member, row: pruners[member](row),
            test=False,
          )
        except TrainingDiverged as e:  # a population of one stops at once, as a run does
          summaries = [{"stopped": f"diverged: {e}"}]
      for i, summary in zip(group, summaries):
        try:
          frozen = study.tell(trials[i], trial_result(trials[i], summary))
        except optuna.TrialPruned:
          frozen = study.tell(trials[i], state=TrialState.PRUNED)
        print(progress_line(study, frozen, target), flush=True)
  except BaseException:
    for trial in trials:
      if study.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING:
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
    raise


def progress_line(study, trial, target: int) -> str:
  finished = count(study, FINISHED)
  value = best_value(trial)
  epochs = max(trial.intermediate_values, default=0)
  seconds = trial.duration.total_seconds() if trial.duration else 0.0
  line = (
    f"[{finished}/{target}] trial {trial.number:04d} {trial.state.name.lower():<8} "
    f"val {'-' if value is None else f'{value:.4f}'}  {epochs} epochs  {seconds:.1f}s"
  )
  with contextlib.suppress(ValueError):
    best = study.best_trial
    line += f"  best {best.value:.4f} (trial {best.number:04d})"
  return line + "  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())


def evaluate_chosen_trial(study, trial, workdir: pathlib.Path):
  """The chosen trial's summary with its test figures, evaluated once (None when its directory is on another
  machine)."""
  trial_dir = workdir / "trials" / f"{directory_number(trial):04d}"
  if not (trial_dir / "summary.json").is_file():
    return None
  # Two workers finishing together both get here; one evaluates, the other reads its summary.
  with exclusive(workdir / "chosen.lock"):
    summary = json.loads((trial_dir / "summary.json").read_text())
    if "test_accuracy" not in summary:
      with open(trial_dir / "train.log", "a") as log_file:
        summary = loop.train([tune_report.config_of(study, trial)], trial_dir, log=file_log(log_file))[0]
  return summary


# --- the command -----------------------------------------------------------------------------------


def tune(args, overrides) -> pathlib.Path:
  sweep, base_config = load_sweep(args.sweep)
  base_config = configs.smoke_budget(configs.validate(configs.override(base_config, overrides)))
  if not base_config.validation_fraction > 0:
    raise UserError(
      "tuning chooses on validation accuracy: set validation_fraction > 0 (e.g. --config.validation_fraction=0.1)"
    )
  space = space_of(sweep, base_config)
  sampler = make_sampler(args.sampler, space)
  stem = pathlib.Path(args.sweep).stem
  workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / f"{stem}-tune")
  workdir.mkdir(parents=True, exist_ok=True)
  url = args.storage or f"sqlite:///{(workdir / 'study.db').absolute()}"
  # Workers started together would race to create the storage's tables and the study.
  with exclusive(workdir / "study.lock"):
    study = open_study(
      open_storage(url),
      stem,
      space,
      base_config,
      sampler,
      make_pruner(args.pruner, args.trials, base_config.num_epochs),
    )
    requeue_interrupted(study)

  def stop_at_target(study, trial):
    print(progress_line(study, trial, args.trials), flush=True)
    # Running trials count too, so that workers together end at the target instead of each overshooting it.
    if count(study, (*FINISHED, TrialState.RUNNING)) >= args.trials:
      study.stop()

  start = time.perf_counter()
  if args.population > 1:
    # Running trials count too, so that workers together end at the target instead of each overshooting it.
    while (left := args.trials - count(study, (*FINISHED, TrialState.RUNNING))) > 0:
      train_population_of_trials(
        study, sweep, base_config, workdir, min(args.population, left), args.pruner != "none", args.trials
      )
  elif count(study, (*FINISHED, TrialState.RUNNING)) < args.trials:
    study.optimize(make_objective(sweep, base_config, workdir, args.pruner != "none"), callbacks=[stop_at_target])
  print(f"this worker tuned for {time.perf_counter() - start:.1f}s", flush=True)
  chosen = None
  if tune_report.is_over(study, args.trials) and count(study, (TrialState.COMPLETE,)):
    chosen = evaluate_chosen_trial(study, study.best_trial, workdir)
  return tune_report.write(study, args, overrides, workdir, args.trials, chosen)


def main(argv=None) -> int:
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  # Heartbeats, retries of dead trials and the matplotlib plots are "experimental" in Optuna 4 (stable for years).
  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
  # --population asks and tells trials itself; its trials' workers are found dead by their pid (requeue_interrupted).
  warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

  def command():
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from fluxdigits import cpu

    cpu.set_up(keep_freed_memory=args[0].population == 1)  # before anything starts JAX
    out = tune(*args)
    print(f"results -> {out / 'index.html'}, {out / 'tuning.md'}")

  return cli.main(command, "finished trials are kept in the study: re-run the same command to resume")


if __name__ == "__main__":
  signals.install("re-run the same command to resume")  # first: a signal while JAX loads is a clean stop too
  sys.exit(main())
