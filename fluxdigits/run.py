"""The command line: python -m fluxdigits.run experiments/X.py [--workdir DIR] [--restart] [--config.key=value ...]

One process per host joins a multi-process job with --coordinator/--num_processes/--process_id
(or their environment variables) or --distributed; see distributed.py.
"""

import argparse
import os
import pathlib
import shlex
import sys

from fluxdigits import config as configs, errors, signals
from fluxdigits.errors import UserError

USAGE = "python -m fluxdigits.run EXPERIMENT.py [--workdir DIR] [--restart] [--config.KEY=VALUE ...]"
EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def _help_epilog() -> str:
  keys = "\n".join(f"  --config.{key}={value!r}" for key, value in configs.flatten(configs.defaults()).items())
  experiments = " ".join(sorted(f"experiments/{f.name}" for f in EXPERIMENTS.glob("*.py"))) or "(none found)"
  return f"config keys and their defaults (README.md, 'Training', says what each means):\n{keys}\n\nexperiments: {experiments}"


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m fluxdigits.run", usage=USAGE, description=__doc__,
                                   epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("experiment", help="an experiment file, e.g. experiments/mnist_cnn.py")
  parser.add_argument("--workdir", help="run directory (default: runs/<experiment file stem>)")
  parser.add_argument("--restart", action="store_true", help="start over; the previous run in WORKDIR is moved aside")
  job = parser.add_argument_group("multi-process job (one process per host; all of them run the same command)")
  job.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address ($JAX_COORDINATOR_ADDRESS)")
  job.add_argument("--num_processes", metavar="N", help="processes in the job ($JAX_NUM_PROCESSES)")
  job.add_argument("--process_id", metavar="I", help="this process, 0 to N-1 ($JAX_PROCESS_ID)")
  job.add_argument("--distributed", action="store_true",
                   help="join as the cluster says: TPU pod slice, SLURM, Open MPI (jax.distributed's detection)")
  job.add_argument("--heartbeat_timeout", metavar="SECONDS", type=int, default=60,
                   help="a process silent this long counts as dead and stops the job (60)")
  args, rest = parser.parse_known_args(argv)
  return args, config_overrides(rest, USAGE)


def config_overrides(rest, usage) -> list[str]:
  """KEY=VALUE of each --config.KEY=VALUE argument; any other argument is refused."""
  for arg in rest:
    if not arg.startswith("--config."):
      raise UserError(f"unknown argument {arg!r}; usage: {usage}")
  return [arg[len("--config."):] for arg in rest]


def train_run(config, workdir, restart=False, log=print, on_epoch=None, test=True) -> dict:
  """Trains `config` in WORKDIR (resuming what is there) and writes its report: a run, or one tuning trial.

  A trial passes `test=False`: no test pass and no report (it shows test figures) until it is the one chosen.
  """
  # Imported here so that a bad command line fails in a blink, before JAX starts.
  from fluxdigits import data, distributed, train, workdir as workdirs
  workdir = pathlib.Path(workdir).absolute()
  # In a multi-process job, process 0 holds the workdir for the job and writes its files.
  with distributed.entered_on_primary(workdirs.open_run(workdir, config, restart, log)):
    config = workdirs.with_recorded_data_dir(config, workdir)
    config = configs.override(config, [f"dataset.data_dir={data.resolved_data_dir(config)}"])
    finished = workdirs.finished_summary(workdir, config)
    if finished is not None and test and "test_accuracy" not in finished:
      finished = None  # a trial finished without its test pass, now chosen: restoring its last epoch evaluates it
    if finished is not None:
      log(f"{workdir} is finished ({finished['epochs_run']} epochs, num_epochs={config.num_epochs}): nothing to train; "
          "raise --config.num_epochs to train longer, or pass --restart to start over")
    summary = finished or train.train_and_evaluate(config, workdir, log, on_epoch, test)
    if not test:
      log(f"best validation accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_epoch']})  "
          f"({summary['epochs_run']} epochs, {summary['train_seconds']:.1f}s) -> {workdir / 'summary.json'}")
      return summary
    log(final_line(summary, config, workdir))
    if config.report and distributed.is_primary():
      if finished is None or not (workdir / "report" / "index.html").is_file():
        from fluxdigits import report
        report.write_run_report(workdir)
      log(f"report -> {workdir / 'report' / 'index.html'}")
  return summary


def final_line(summary: dict, config, workdir) -> str:
  """The run's result, saying which epoch's weights the test figures come from."""
  epochs = summary["epochs_run"]
  weights = "averaged weights" if config.ema_decay else "weights"
  chosen = "the best on validation" if summary.get("best_val_accuracy") is not None else "the last"
  return (f"test accuracy {summary['test_accuracy']:.4f}  test loss {summary['test_loss']:.4f}  with the {weights} of "
          f"epoch {summary['best_epoch']} ({chosen}; {epochs} epoch{'s' * (epochs != 1)} trained in "
          f"{summary['train_seconds']:.1f}s + {summary['compile_seconds']:.1f}s compile) -> {workdir / 'summary.json'}")


def resume_command(argv) -> str:
  """The command that resumes this run: the same one, without --restart (which would move the run aside)."""
  return shlex.join(["python", "-m", "fluxdigits.run", *(a for a in argv if a != "--restart")])


def exit_code(command, interrupted: str) -> int:
  """Runs a command's body: bad input becomes one line and its exit code, Ctrl-C the `interrupted` hint and 130."""
  try:
    command()
    return 0
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  except OSError as e:  # a folder the run cannot write to, a full disk outside the checkpoints
    print(f"error: {errors.describe_os_error(e)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"interrupted; {interrupted}", file=sys.stderr)
    return 130


def main(argv=None) -> int:
  job = None

  def command():
    nonlocal job
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = configs.smoke_budget(configs.validate(configs.override(configs.load(args.experiment), overrides)))
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / pathlib.Path(args.experiment).stem)
    from fluxdigits import distributed
    job = distributed.job_spec(args.coordinator, args.num_processes, args.process_id, args.distributed,
                               args.heartbeat_timeout)
    distributed.initialize(job)
    train_run(config, workdir, args.restart, log=print if distributed.is_primary() else _silent)

  try:
    return exit_code(command, "the last finished epoch's checkpoint is kept: re-run the same command to resume")
  except Exception as e:
    if job is None or not job.wanted:
      raise
    # In a job, a failed collective most often means another process died. Exit at once: a normal
    # exit would wait for the dead process at jax.distributed's shutdown barrier.
    from fluxdigits import distributed
    print(f"error: {distributed.describe()} stopped ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}); "
          "another process of the job has probably died (see its output): start all of them again with the same "
          "command to resume from the last checkpoint", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def _silent(*args, **kwargs):
  """The log of processes other than 0: process 0 speaks for the job."""


if __name__ == "__main__":
  # First of all: Ctrl-C or SIGTERM during the imports and compiling below is a clean stop too.
  signals.install(f"stopped; the checkpoints of finished epochs are kept: resume with {resume_command(sys.argv[1:])}")
  sys.exit(main())
