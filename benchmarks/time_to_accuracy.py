"""Wall time of fluxdigits' fastest MNIST recipe, from process start to its test accuracy on all 10,000 test images.

Runs `python -m fluxdigits.run experiments/mnist_fast.py` as a child process and times it whole:
Python and JAX start-up, reading the decoded-array cache, compiling, training, the final checkpoint
and the test pass. Peak memory is the child's maximum resident set size.

  python benchmarks/time_to_accuracy.py [--experiment experiments/mnist_fast.py] [--config.KEY=VALUE ...]
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
from step_throughput import ROOT, device_name, slug, write_record  # noqa: E402


def time_run(experiment, overrides, target=None) -> dict:
  """Runs `python -m fluxdigits.run EXPERIMENT` in a child process: its wall time, summary and epoch times."""
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    subprocess.run(
      [
        sys.executable,
        "-m",
        "fluxdigits.run",
        str(experiment),
        "--workdir",
        workdir,
        "--config.report=false",
        *overrides,
      ],
      check=True,
      cwd=ROOT,
    )
    wall = time.perf_counter() - start
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  peak_mib = (
    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  )  # Linux reports KiB; the largest child so far
  return {
    "device": device_name(),
    "date": datetime.date.today().isoformat(),
    "experiment": str(pathlib.Path(experiment).resolve().relative_to(ROOT)),
    "overrides": overrides,
    "test_accuracy": summary["test_accuracy"],
    "target": target,
    "reached": None if target is None else summary["test_accuracy"] >= target,
    "wall_s": wall,
    "wall_without_compile_s": wall - summary["compile_seconds"],
    "compile_s": summary["compile_seconds"],
    "train_s": summary["train_seconds"],
    "epochs": summary["epochs_run"],
    "epoch_seconds": [r["epoch_seconds"] for r in rows],
    "peak_rss_mib": peak_mib,
  }


def write_run_record(record, out, kind, tag="") -> pathlib.Path:
  """benchmarks/results/DATE-DEVICE-EXPERIMENT-KIND[-TAG].json"""
  return write_record(record, out, f"-{slug(pathlib.Path(record['experiment']).stem)}-{kind}", tag)


def describe(record) -> str:
  verdict = "reached" if record["reached"] else "NOT reached"
  return (
    f"{record['experiment']}: test accuracy {record['test_accuracy']:.4f} ({verdict} {record['target']:.3f}) in "
    f"{record['wall_s']:.1f} s wall ({record['wall_without_compile_s']:.1f} s without the {record['compile_s']:.1f} s "
    f"compile; {record['train_s']:.1f} s training, {record['epochs']} epochs); "
    f"peak RSS {record['peak_rss_mib']:,.0f} MiB"
  )


def table(records) -> str:
  """One row per run: a record, or each of the runs a record lists (with the record's device and date)."""
  runs = [{**r, **run} for r in records for run in r.get("runs", [r])]
  rows = [
    "| experiment | overrides | test accuracy | epochs | wall time | compile | training | peak RSS |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for r in runs:
    settings = " ".join(f"`{o.removeprefix('--config.')}`" for o in r["overrides"])
    if r.get("xla_flags"):
      settings += f" `XLA_FLAGS={r['xla_flags']}`"
    rows.append(
      f"| `{pathlib.Path(r['experiment']).stem}` | {settings} | {r['test_accuracy']:.2%} | {r['epochs']} | "
      f"{r['wall_s']:,.1f} s | {r['compile_s']:.1f} s | {r['train_s']:,.1f} s | {r['peak_rss_mib']:,.0f} MiB |"
    )
  return "\n".join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--experiment", default=str(ROOT / "experiments" / "mnist_fast.py"))
  parser.add_argument("--target", type=float, default=0.99)
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--tag", default="", help="appended to the results file's name, so runs of one day stay apart")
  args, overrides = parser.parse_known_args()
  record = time_run(args.experiment, overrides, args.target)
  path = write_run_record(record, args.out, "time-to-accuracy", args.tag)
  print(f"{describe(record)} -> {path}")


if __name__ == "__main__":
  main()
