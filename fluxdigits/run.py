"""The command line: python -m fluxdigits.run experiments/X.py [--workdir DIR] [--restart] [--seeds 0-7] [--config.key=value ...]

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
  keys = "\n".join(textwrap.fill(" ".join(items), 100, initial_indent=f"  {group + '.' if group else '':<12}",
                                 subsequent_indent=" " * 14) for group, items in groups.items())
  experiments = textwrap.fill(" ".join(sorted(f.stem for f in EXPERIMENTS.glob("*.py"))) or "(none found)", 100,
                              initial_indent="experiments/: ", subsequent_indent=" " * 14)
  return (f"config keys, set with --config.KEY=VALUE (e.g. --config.dataset.name=fashion_mnist), and their defaults;\n"
          f"README.md, 'Training', says what each means:\n{keys}\n\n{experiments}\n\n"
          "example: python -m fluxdigits.run experiments/mnist_cnn.py --config.num_epochs=10 --seeds 0-2")


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m fluxdigits.run", usage=USAGE, description=DESCRIPTION,
                                   epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("experiment", help="an experiment file, e.g. experiments/mnist_cnn.py")
  parser.add_argument("--workdir", help="run directory (default: runs/<experiment file stem>)")
  parser.add_argument("--restart", action="store_true", help="start over; the previous run in WORKDIR is moved aside")
  parser.add_argument("--seeds", metavar="0-7",
                      help="train these seeds of the experiment at once, one population (e.g. 0-7 or 0,3,5): "
                           "WORKDIR/seed-N/ each, WORKDIR/summary.json over them")
  job = parser.add_argument_group("multi-process job (one process per host; all of them run the same command)")
  job.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address ($JAX_COORDINATOR_ADDRESS)")
  job.add_argument("--num_processes", metavar="N", help="processes in the job ($JAX_NUM_PROCESSES)")
  job.add_argument("--process_id", metavar="I", help="this process, 0 to N-1 ($JAX_PROCESS_ID)")
  job.add_argument("--distributed", action="store_true",
                   help="join as the cluster says: TPU pod slice, SLURM, Open MPI (jax.distributed's detection)")
  job.add_argument("--heartbeat_timeout", metavar="SECONDS", type=int, default=60,
                   help="a process silent this long counts as dead and stops the job (60)")
  args, rest = parser.parse_known_args(argv)
  return args, cli.config_overrides(rest, USAGE)


def train_run(config, workdir, restart=False, log=print, on_epoch=None, test=True) -> dict:
  """Trains `config` in WORKDIR (resuming what is there) and writes its report: a run, or one tuning trial.

  A trial passes `test=False`: no test pass and no report (it shows test figures) until it is the one chosen.
  `on_epoch(row)` may return why the run should stop (a tuner's pruning).
  """
  member_on_epoch = None if on_epoch is None else lambda i, row: on_epoch(row)
  return train_members([config], workdir, [workdir], restart, log, member_on_epoch, test)[0]


def train_members(members, workdir, member_dirs, restart=False, log=print, on_epoch=None, test=True) -> list[dict]:
  """Trains the members (configs of one shape) as one population in WORKDIR, each member's run in its folder of
  `member_dirs` (WORKDIR itself for a single run), and writes their reports; returns their summaries.

  Members already finished are not trained again; `on_epoch(member, row)` may return why a member should stop.
  """
  # Imported here so that a bad command line fails in a blink, before JAX starts.
  from fluxdigits import data, distributed, tensorboard, train, workdir as workdirs
  workdir = pathlib.Path(workdir).absolute()
  member_dirs = [pathlib.Path(d).absolute() for d in member_dirs]
  single = len(members) == 1 and member_dirs == [workdir]
  data.check_source(members[0])
  # In a multi-process job, process 0 holds the workdir for the job and writes its files.
  with distributed.entered_on_primary(workdirs.open_run(workdir, members[0], restart, log)):
    workdirs.check_population(workdir, member_dirs)
    members = [workdirs.with_recorded_data_dir(m, d) for m, d in zip(members, member_dirs)]
    members = [configs.override(m, [f"dataset.data_dir={data.resolved_data_dir(m)}"]) for m in members]
    finished = [workdirs.finished_summary(d, m) for d, m in zip(member_dirs, members)]
    # A trial finished without its test pass, now chosen: restoring its last epoch evaluates it.
    finished = [None if f is not None and test and "test_accuracy" not in f else f for f in finished]
    if all(f is not None for f in finished):
      log(f"{workdir} is finished ({finished[0]['epochs_run']} epochs, num_epochs={members[0].num_epochs}): nothing "
          "to train; raise --config.num_epochs to train longer, or pass --restart to start over")
    boards = tensorboard.Boards(member_dirs, members, distributed.is_primary())
    try:
      if all(f is not None for f in finished):
        summaries = finished
      else:
        summaries = train.train_population(members, workdir, member_dirs, log, on_epoch, test, boards)
      _report(member_dirs, summaries, members, finished, single, test, boards, log)
    except BaseException:
      boards.close(ended=False)
      raise
    boards.close()
  return summaries


def _report(member_dirs, summaries, members, finished, single, test, boards, log):
  """Each member's final line and, unless finished before, its report (its pictures to TensorBoard too)."""
  from fluxdigits import distributed
  for i, (member_dir, summary, config) in enumerate(zip(member_dirs, summaries, members)):
    prefix = "" if single else f"[{member_dir.name}] "
    if not test:
      log(f"{prefix}best validation accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_epoch']})  "
          f"({summary['epochs_run']} epochs, {summary['train_seconds']:.1f}s) -> {member_dir / 'summary.json'}")
      continue
    log(prefix + final_line(summary, config, member_dir))
    if config.report and distributed.is_primary():
      if not (member_dir / "report" / "index.html").is_file() or not all(f is not None for f in finished):
        from fluxdigits import report
        folder = report.write_run_report(member_dir)
        boards.images(i, summary.get("train_steps", 0), {name: folder / f"{name}.png" for name in report.PICTURES})
      log(f"{prefix}report -> {member_dir / 'report' / 'index.html'}")


def train_seeds(config, seeds, workdir, restart=False, log=print) -> dict:
  """The experiment trained once per seed, as one population; writes and returns WORKDIR/summary.json."""
  import json
  from fluxdigits import distributed, population
  workdir = pathlib.Path(workdir).absolute()
  names = [f"seed-{seed}" for seed in seeds]
  summaries = train_members(population.with_seeds(config, seeds), workdir, [workdir / n for n in names], restart, log)
  result = population.aggregate(summaries, names)
  if distributed.is_primary():
    (workdir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
  figure = "test_accuracy" if "test_accuracy" in result else "best_val_accuracy"
  log(f"{figure.replace('_', ' ')} over {len(seeds)} seeds: {population.describe(result.get(figure, {}))} -> "
      f"{workdir / 'summary.json'}")
  return result


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


def main(argv=None) -> int:
  job = None

  def command():
    nonlocal job
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = configs.smoke_budget(configs.validate(configs.override(configs.load(args.experiment), overrides)))
    workdir = pathlib.Path(args.workdir or pathlib.Path("runs") / pathlib.Path(args.experiment).stem)
    # Before anything starts JAX: its CPU backend gets one device per core.
    from fluxdigits import cpu, distributed, population
    cpu.claim_cores()
    job = distributed.job_spec(args.coordinator, args.num_processes, args.process_id, args.distributed,
                               args.heartbeat_timeout)
    distributed.initialize(job)
    log = print if distributed.is_primary() else _silent
    if args.seeds is not None:
      train_seeds(config, population.parse_seeds(args.seeds), workdir, args.restart, log)
    else:
      train_run(config, workdir, args.restart, log)

  try:
    return cli.main(command, "the last finished epoch's checkpoint is kept: re-run the same command to resume")
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
