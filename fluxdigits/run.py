"""The command line: python -m fluxdigits.run experiments/X.py [--workdir DIR] [--restart] [--seeds 0-7]
[--config.key=value ...]

--seeds trains one run per seed at once, as one population (population.py): WORKDIR/seed-N/ each,
and WORKDIR/summary.json with the mean, spread and range over the seeds.

One process per host joins a multi-process job with --coordinator/--num_processes/--process_id
(or their environment variables) or --distributed; see distributed.py.
"""

import argparse
import os
import pathlib
import shlex
import sys
import textwrap

from fluxdigits import cli, config as configs, signals

USAGE = "python -m fluxdigits.run EXPERIMENT.py [--workdir DIR] [--restart] [--seeds 0-7] [--config.KEY=VALUE ...]"
DESCRIPTION = "Train an experiment in WORKDIR, resuming what is there; report at the end."
EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def _help_epilog() -> str:
  groups = {"": []}
  for key, value in configs.flatten(configs.defaults()).items():
    group, _, name = key.rpartition(".")
    groups.setdefault(group, []).append(f"{name}={value!r}")
  groups["model"].append("kwargs.NAME=... (the model's constructor arguments)")
  keys = "\n".join(
    textwrap.fill(
      " ".join(items), 100, initial_indent=f"  {group + '.' if group else '':<12}", subsequent_indent=" " * 14
    )
    for group, items in groups.items()
  )
  experiments = textwrap.fill(
    " ".join(sorted(f.stem for f in EXPERIMENTS.glob("*.py"))) or "(none found)",
    100,
    initial_indent="experiments/: ",
    subsequent_indent=" " * 14,
  )
  return (
    f"config keys, set with --config.KEY=VALUE (e.g. --config.dataset.name=fashion_mnist), and their defaults;\n"
    f"README.md, 'Training', says what each means:\n{keys}\n\n{experiments}\n\n"
    "example: python -m fluxdigits.run experiments/mnist_cnn.py --config.num_epochs=10 --seeds 0-2"
  )


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog="python -m fluxdigits.run",
    usage=USAGE,
    description=DESCRIPTION,
    epilog=_help_epilog(),
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("experiment", help="an experiment file, e.g. experiments/mnist_cnn.py")
  parser.add_argument("--workdir", help="run directory (default: runs/<experiment file stem>)")
  parser.add_argument("--restart", action="store_true", help="start over; the previous run in WORKDIR is moved aside")
  parser.add_argument(
    "--seeds",
    metavar="0-7",
    help="train these seeds of the experiment at once, one population (e.g. 0-7 or 0,3,5): "
    "WORKDIR/seed-N/ each, WORKDIR/summary.json over them",
  )
  job = parser.add_argument_group("multi-process job (one process per host; all of them run the same command)")
  job.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address ($JAX_COORDINATOR_ADDRESS)")
  job.add_argument("--num_processes", metavar="N", help="processes in the job ($JAX_NUM_PROCESSES)")
  job.add_argument("--process_id", metavar="I", help="this process, 0 to N-1 ($JAX_PROCESS_ID)")
  job.add_argument(
    "--distributed",
    action="store_true",
    help="join as the cluster says: TPU pod slice, SLURM, Open MPI (jax.distributed's detection)",
  )
  job.add_argument(
    "--heartbeat_timeout",
    metavar="SECONDS",
    type=int,
    default=60,
    help="a process silent this long counts as dead and stops the job (60)",
  )
  args, rest = parser.parse_known_args(argv)
  return args, cli.config_overrides(rest, USAGE)


def train_seeds(config, seeds, workdir, restart=False, log=print) -> dict:
  """The experiment trained once per seed, as one population; writes and returns WORKDIR/summary.json."""
  import json

  from fluxdigits import distributed, loop, population

  workdir = pathlib.Path(workdir).absolute()
  names = [f"seed-{seed}" for seed in seeds]
  summaries = loop.train(population.with_seeds(config, seeds), workdir, [workdir / n for n in names], restart, log)
  result = population.aggregate(summaries, names)
  if distributed.is_primary():
    (workdir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
  figure = "test_accuracy" if "test_accuracy" in result else "best_val_accuracy"
  log(
    f"{figure.replace('_', ' ')} over {len(seeds)} seeds: {population.describe(result.get(figure, {}))} -> "
    f"{workdir / 'summary.json'}"
  )
  return result


def resume_command(argv) -> str:
  """The command that resumes this run: the same one, without --restart (which would move the run aside)."""
  return shlex.join(["python", "-m", "fluxdigits.run", *(a for a in argv if a != "--restart")])


def main(argv=None) -> int:
  job = None

  def command():
    nonlocal job
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = configs.smoke_budget(configs.validate(configs.override(configs.load(args.experiment), overrides)))
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / pathlib.Path(args.experiment).stem)
    # Before anything starts JAX: its CPU backend gets one device per core.
    from fluxdigits import cpu, distributed, loop, population

    cpu.set_up(keep_freed_memory=args.seeds is None)
    job = distributed.job_spec(
      args.coordinator, args.num_processes, args.process_id, args.distributed, args.heartbeat_timeout
    )
    distributed.initialize(job)
    log = print if distributed.is_primary() else _silent
    if args.seeds is not None:
      train_seeds(config, population.parse_seeds(args.seeds), workdir, args.restart, log)
    else:
      loop.train([config], workdir, restart=args.restart, log=log)

  try:
    return cli.main(command, "the last finished epoch's checkpoint is kept: re-run the same command to resume")
  except Exception as e:
    if job is None or not job.wanted:
      raise
    # In a job, a failed collective most often means another process died. Exit at once: a normal
    # exit would wait for the dead process at jax.distributed's shutdown barrier.
    from fluxdigits import distributed

    print(
      f"error: {distributed.describe()} stopped ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}); "
      "another process of the job has probably died (see its output): start all of them again with the same "
      "command to resume from the last checkpoint",
      file=sys.stderr,
      flush=True,
    )
    sys.stdout.flush()
    os._exit(1)


def _silent(*args, **kwargs):
  """The log of processes other than 0: process 0 speaks for the job."""


if __name__ == "__main__":
  # First of all: Ctrl-C or SIGTERM during the imports and compiling below is a clean stop too.
  signals.install(f"resume with {resume_command(sys.argv[1:])}")
  sys.exit(main())
