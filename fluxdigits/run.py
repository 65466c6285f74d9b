"""The command line: python -m fluxdigits.run experiments/X.py [--workdir DIR] [--restart] [--config.key=value ...]"""

import argparse
import pathlib
import sys

from fluxdigits import config as configs
from fluxdigits.errors import UserError

USAGE = "python -m fluxdigits.run EXPERIMENT.py [--workdir DIR] [--restart] [--config.KEY=VALUE ...]"


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m fluxdigits.run", usage=USAGE, description=__doc__)
  parser.add_argument("experiment", help="an experiment file, e.g. experiments/mnist_cnn.py")
  parser.add_argument("--workdir", help="run directory (default: runs/<experiment file stem>)")
  parser.add_argument("--restart", action="store_true", help="start over; the previous run in WORKDIR is moved aside")
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
  from fluxdigits import checkpoint, train
  workdir = checkpoint.prepare_workdir(workdir, config, restart, log)
  summary = train.train_and_evaluate(config, workdir, log, on_epoch, test)
  if not test:
    log(f"best validation accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_epoch']})  "
        f"({summary['epochs_run']} epochs, {summary['train_seconds']:.1f}s) -> {workdir / 'summary.json'}")
    return summary
  log(f"test accuracy {summary['test_accuracy']:.4f}  test loss {summary['test_loss']:.4f}  "
      f"({summary['epochs_run']} epochs, {summary['train_seconds']:.1f}s + {summary['compile_seconds']:.1f}s compile) "
      f"-> {workdir / 'summary.json'}")
  if config.report:
    from fluxdigits import report
    report.write_run_report(workdir)
    log(f"report -> {workdir / 'report' / 'index.html'}")
  return summary


def exit_code(command, interrupted: str) -> int:
  """Runs a command's body: bad input becomes one line and its exit code, Ctrl-C the `interrupted` hint and 130."""
  try:
    command()
    return 0
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print(f"interrupted; {interrupted}", file=sys.stderr)
    return 130


def main(argv=None) -> int:
  def command():
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = configs.validate(configs.override(configs.load(args.experiment), overrides))
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / pathlib.Path(args.experiment).stem)
    train_run(config, workdir, args.restart)

  return exit_code(command, "the last finished epoch's checkpoint is kept: re-run the same command to resume")


if __name__ == "__main__":
  sys.exit(main())
