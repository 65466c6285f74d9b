"""K members of one recipe trained at once (a population) against K runs one after another: the same total work.

For each model and K, a child process trains a population of K seeds through fluxdigits' own loop
(`loop.build`, `loop.train_epoch`) for one warm-up epoch and one timed epoch of --examples
training images; K = 1 is the sequential run's epoch. The ratio is the population's member-images/s
over the single run's images/s. Memory per member: the growth of the child's peak memory from K = 1
to K, per added member (the state, its optimizer moments and activations; the accelerator's own
memory on a GPU or TPU, the resident set on CPU), and the state's own size.

With --whole-runs, the commands a user types instead: `python -m fluxdigits.run experiments/E.py --seeds 0-(K-1)`
against K runs of E one after another (`--config.seed=i`), each command a fresh process from start to report, their
wall seconds (the population's start, data, compilation and reports paid once, its epochs as they train).

  python benchmarks/population.py [--models cnn,cnn_deep] [--members 8] [--examples 6400] [--tag NAME]
      [--config.KEY=VALUE ...]
  python benchmarks/population.py --whole-runs [--models cnn] [--members 8] [--rounds 3] [--tag NAME]
"""

import argparse
import datetime
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from step_throughput import ROOT, config_overrides, device_name, write_record  # noqa: E402

EXPERIMENTS = {"mlp": "mnist_mlp", "cnn": "mnist_cnn", "cnn_deep": "mnist_cnn_deep"}


def measure(model: str, members: int, examples: int, overrides: list[str]) -> dict:
  """One population's timed epoch, in this process."""
  import jax
  import numpy as np

  from fluxdigits import config as configs, loop, population

  base = configs.validate(
    configs.override(
      configs.load(str(ROOT / "experiments" / f"{EXPERIMENTS[model]}.py")),
      [f"dataset.max_train_examples={examples}", *overrides],
    )
  )
  trainer, state = loop.build(population.with_seeds(base, range(members)), log=lambda *_: None)
  active = [True] * members
  state, _, _ = loop.train_epoch(trainer, state, 1, active)
  jax.block_until_ready(state)
  start = time.perf_counter()
  state, rows, _ = loop.train_epoch(trainer, state, 2, active)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  member_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(population.member(state, 0)))
  device_stats = jax.devices()[0].memory_stats() or {}  # an accelerator's own memory; none on CPU
  return {
    "model": model,
    "members": members,
    "batch_size": base.batch_size,
    "member_images_per_s": members * trainer.steps_per_epoch * base.batch_size / seconds,
    "epoch_s": seconds,
    "compile_s": trainer.calls.compile_seconds,
    "state_mib_per_member": member_bytes / 2**20,
    "train_accuracy": float(np.mean([r["train_accuracy"] for r in rows])),
    "peak_memory": "device" if "peak_bytes_in_use" in device_stats else "host RSS",
    "peak_mib": (
      device_stats["peak_bytes_in_use"] / 2**20
      if "peak_bytes_in_use" in device_stats
      else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ),
  }


def child(model: str, members: int, examples: int, overrides: list[str]) -> dict:
  out = subprocess.run(
    [
      sys.executable,
      __file__,
      "--one",
      f"{model}:{members}",
      "--examples",
      str(examples),
      *(f"--config.{o}" for o in overrides),
    ],
    check=True,
    capture_output=True,
    text=True,
    cwd=ROOT,
  ).stdout
  return json.loads(out.strip().splitlines()[-1])


def whole_runs(model: str, members: int, overrides: list[str], rounds: int = 1) -> dict:
  """Wall seconds of K runs one after another and of the same K seeds as one population, as a user runs them: in each
  round the population runs between the first and the second half of the runs, so that a drift of the machine's
  speed falls on both."""
  command = [sys.executable, "-m", "fluxdigits.run", f"experiments/{EXPERIMENTS[model]}.py"]
  command += [f"--config.{o}" for o in overrides]

  def timed(*args) -> float:
    start = time.perf_counter()
    subprocess.run([*command, *args], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start

  measured = []
  for _ in range(rounds):
    with tempfile.TemporaryDirectory() as workdirs:
      run = lambda seed: timed("--workdir", f"{workdirs}/seed-{seed}", f"--config.seed={seed}")
      first = [run(seed) for seed in range(members // 2)]
      population = timed("--workdir", f"{workdirs}/population", "--seeds", f"0-{members - 1}")
      sequential = first + [run(seed) for seed in range(members // 2, members)]
      summary = json.loads(pathlib.Path(f"{workdirs}/population/summary.json").read_text())
      alone = [json.loads(pathlib.Path(f"{workdirs}/seed-{s}/summary.json").read_text()) for s in range(members)]
    measured.append(
      {
        "sequential_s": sum(sequential),
        "each_run_s": sequential,
        "population_s": population,
        "vs_sequential": sum(sequential) / population,
      }
    )
  sequential_s, population_s = (sum(r[key] for r in measured) for key in ("sequential_s", "population_s"))
  return {
    "model": model,
    "experiment": EXPERIMENTS[model],
    "members": members,
    "sequential_s": sequential_s,
    "population_s": population_s,
    "vs_sequential": sequential_s / population_s,
    "rounds": measured,
    "population_test_accuracy": summary["test_accuracy"]["mean"],
    "sequential_test_accuracy": float(sum(r["test_accuracy"] for r in alone) / members),
  }


def whole_runs_table(results) -> str:
  rows = [
    "| experiment | seeds | K runs one after another, s | one population, s | population vs runs | test accuracy, "
    "mean (runs / population) |",
    "|---|---:|---:|---:|---:|---|",
  ]
  for r in results:
    rows.append(
      f"| `{r['experiment']}` | 0-{r['members'] - 1} | {r['sequential_s']:.0f} | {r['population_s']:.0f} | "
      f"{r['vs_sequential']:.2f}x{_each_round(r)} | {r['sequential_test_accuracy']:.2%} / "
      f"{r['population_test_accuracy']:.2%} |"
    )
  return "\n".join(rows)


def _each_round(result) -> str:
  """Each round's ratio, where there were several."""
  rounds = result.get("rounds", [])
  ratios = ", ".join(f"{r['vs_sequential']:.2f}x" for r in rounds)
  return f" ({ratios})" if len(rounds) > 1 else ""


def table(results) -> str:
  rows = [
    "| model | batch | members | member-images/s | vs one run | compile s | state MiB/member | peak MiB/added member |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in results:
    added = "" if r["mib_per_added_member"] is None else f"{r['mib_per_added_member']:.0f}"
    rows.append(
      f"| {r['model']} | {r['batch_size']} | {r['members']} | {r['member_images_per_s']:,.0f} | "
      f"{r['vs_one_run']:.2f}x | {r['compile_s']:.1f} | {r['state_mib_per_member']:.1f} | {added} |"
    )
  return "\n".join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="cnn,cnn_deep")
  parser.add_argument("--members", default="8", help="population sizes to compare with one run, e.g. 8 or 8,64,256")
  parser.add_argument("--examples", type=int, default=6400, help="training images of the timed epoch")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--tag", default="", help="appended to the results file's name, so runs of one day stay apart")
  parser.add_argument("--whole-runs", action="store_true", help="time the commands a user types (above)")
  parser.add_argument("--rounds", type=int, default=1, help="--whole-runs: rounds of K runs and one population")
  parser.add_argument("--one", help=argparse.SUPPRESS)  # MODEL:K, run in this process, JSON to stdout
  args, unknown = parser.parse_known_args()
  overrides = config_overrides(parser, unknown)
  if args.whole_runs:
    results = [whole_runs(model, int(args.members), overrides, args.rounds) for model in args.models.split(",")]
    record = {"device": device_name(), "date": datetime.date.today().isoformat(), "overrides": overrides}
    path = write_record({**record, "results": results}, args.out, "-population-whole-runs", args.tag)
    print(whole_runs_table(results))
    print(f"-> {path}")
    return
  if args.one:
    from fluxdigits import cpu

    model, members = args.one.split(":")
    cpu.set_up(keep_freed_memory=int(members) == 1)  # before JAX starts, as fluxdigits' command lines do
    print(json.dumps(measure(model, int(members), args.examples, overrides)))
    return
  results = []
  for model in args.models.split(","):
    # Side by side: the single run, then each population, then the single run again (the machine drifts).
    single = [child(model, 1, args.examples, overrides)]
    populations = [child(model, int(k), args.examples, overrides) for k in args.members.split(",")]
    single.append(child(model, 1, args.examples, overrides))
    one = max(single, key=lambda r: r["member_images_per_s"])
    for r in [one, *populations]:
      r["vs_one_run"] = r["member_images_per_s"] / one["member_images_per_s"]
      r["mib_per_added_member"] = (r["peak_mib"] - one["peak_mib"]) / (r["members"] - 1) if r["members"] > 1 else None
      results.append(r)
      print(json.dumps(r), flush=True)
  record = {
    "device": device_name(),
    "date": datetime.date.today().isoformat(),
    "examples": args.examples,
    "overrides": overrides,
    "results": results,
  }
  path = write_record(record, args.out, "-population", args.tag)
  print(table(results))
  print(f"-> {path}")


if __name__ == "__main__":
  main()
