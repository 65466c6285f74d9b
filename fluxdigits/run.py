"""The command line: python -m fluxdigits.run experiments/X.py [--workdir DIR] [--restart] [--config.key=value ...]

One process per host joins a multi-process job with --coordinator/--num_processes/--process_id
(or their environment variables) or --distributed; see distributed.py.
"""

import argparse
import os
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
  job = parser.add_argument_group("multi-process job (one process per host; all of them run the same command)")
  job.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address ($JAX_COORDINATOR_ADDRESS)")
  job.add_argument("--num_processes", metavar="N", help="processes in the job ($JAX_NUM_PROCESSES)")
  job.add_argument("--process_id", metavar="I", help="this process, 0 to N-1 ($JAX_PROCESS_ID)")
  job.add_argument("--distributed", action="store_true",
                   help="join as the cluster says: TPU pod slice, SLURM, Open MPI (jax.distributed's detection)")
  job.add_argument("--heartbeat_timeout", metavar="SECONDS", type=int, default=60,
                   help="a process silent this long counts as dead and stops the job (60)")
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for arg in rest:
    if not arg.startswith("--config."):
      raise UserError(f"unknown argument {arg!r}; usage: {USAGE}")
    overrides.append(arg[len("--config."):])
  return args, overrides


def train_run(config, workdir, restart=False, log=print, on_epoch=None) -> dict:
  """Trains `config` in WORKDIR (resuming what is there) and writes its report: a run, or one tuning trial."""
  # Imported here so that a bad command line fails in a blink, before JAX starts.
  from fluxdigits import checkpoint, distributed, train
  workdir = pathlib.Path(workdir)
  distributed.on_primary(checkpoint.prepare_workdir, workdir, config, restart, log)
  summary = train.train_and_evaluate(config, workdir, log, on_epoch)
  log(f"test accuracy {summary['test_accuracy']:.4f}  test loss {summary['test_loss']:.4f}  "
      f"({summary['epochs_run']} epochs, {summary['train_seconds']:.1f}s + {summary['compile_seconds']:.1f}s compile) "
      f"-> {workdir / 'summary.json'}")
  if config.report and distributed.is_primary():
    from fluxdigits import report
    report.write_run_report(workdir)
    log(f"report -> {workdir / 'report' / 'index.html'}")
  return summary


def main(argv=None) -> int:
  job = None
  try:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = configs.validate(configs.override(configs.load(args.experiment), overrides))
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / pathlib.Path(args.experiment).stem)
    from fluxdigits import distributed
    job = distributed.job_spec(args.coordinator, args.num_processes, args.process_id, args.distributed,
                               args.heartbeat_timeout)
    distributed.initialize(job)
    train_run(config, workdir, args.restart, log=print if distributed.is_primary() else _silent)
    return 0
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print("interrupted; the last finished epoch's checkpoint is kept: re-run the same command to resume", file=sys.stderr)
    return 130
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
  sys.exit(main())
