"""What TensorBoard's event files cost a run: an experiment trained with them and without, alternating.

Each round runs `python -m fluxdigits.run EXPERIMENT` twice in child processes (benchmarks/time_to_accuracy.py's
timing), once with --config.tensorboard=true and once with false, in alternating order; the record keeps every run's
wall and training seconds and the medians.

  python benchmarks/tensorboard_cost.py [--experiment experiments/mnist_cnn.py] [--rounds 5]
"""

import argparse
import datetime
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from step_throughput import ROOT, device_name, write_record  # noqa: E402
from time_to_accuracy import time_run  # noqa: E402

SETTINGS = ("true", "false")


def table(record) -> str:
  rows = [
    "| tensorboard | runs | median wall time | median training time | median test accuracy |",
    "|---|---:|---:|---:|---:|",
  ]
  for setting in SETTINGS:
    runs = [r for r in record["runs"] if r["tensorboard"] == setting]
    rows.append(
      f"| {setting} | {len(runs)} | {statistics.median(r['wall_s'] for r in runs):.1f} s | "
      f"{statistics.median(r['train_s'] for r in runs):.1f} s | "
      f"{statistics.median(r['test_accuracy'] for r in runs):.2%} |"
    )
  on, off = ([r["train_s"] for r in record["runs"] if r["tensorboard"] == s] for s in SETTINGS)
  return (
    "\n".join(rows)
    + f"\n\nTraining time with the event files over without: {statistics.median(on) / statistics.median(off):.3f}x."
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--experiment", default=str(ROOT / "experiments" / "mnist_cnn.py"))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args()
  runs = []
  for round_ in range(args.rounds):
    # Alternate which goes first, so that a drift of the machine's speed falls on both.
    for setting in SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]:
      run = time_run(args.experiment, [f"--config.tensorboard={setting}"])
      runs.append(
        {
          "round": round_ + 1,
          "tensorboard": setting,
          **{k: run[k] for k in ("wall_s", "train_s", "compile_s", "test_accuracy")},
        }
      )
      print(
        f"round {round_ + 1}, tensorboard={setting}: {run['train_s']:.1f} s training, {run['wall_s']:.1f} s wall",
        file=sys.stderr,
        flush=True,
      )
  record = {
    "device": device_name(),
    "date": datetime.date.today().isoformat(),
    "experiment": str(pathlib.Path(args.experiment).resolve().relative_to(ROOT)),
    "runs": runs,
  }
  print(table(record))
  print(f"-> {write_record(record, args.out, '-tensorboard-cost')}")


if __name__ == "__main__":
  main()
