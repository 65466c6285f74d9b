"""The README's table of experiment results, generated from recorded runs, never typed.

  python benchmarks/experiments.py mnist_mlp mnist_cnn   # run these experiments, record them, rewrite the table
  python benchmarks/experiments.py                       # rewrite the table from what is recorded

Each experiment runs as `python -m fluxdigits.run experiments/NAME.py` in a fresh workdir (the report
off), timed from process start to end, and is recorded in benchmarks/results/experiments/NAME.json
with its summary.json, the date, the machine and the commit. The README's table, between the
`experiments-table` marker comments, is then rewritten from every record there.
"""

import argparse
import datetime
import json
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from step_throughput import ROOT, device_name  # noqa: E402

RECORDS = ROOT / "benchmarks" / "results" / "experiments"
README = ROOT / "README.md"
START, END = "<!-- experiments-table:start -->", "<!-- experiments-table:end -->"


def record(name: str) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, "-m", "fluxdigits.run", f"experiments/{name}.py", "--workdir", workdir, "--config.report=false"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
  result = {"experiment": name, "date": datetime.date.today().isoformat(), "machine": device_name(),
            "commit": commit or None, "wall_seconds": wall, "summary": summary,
            "source": f"python benchmarks/experiments.py {name}"}
  RECORDS.mkdir(parents=True, exist_ok=True)
  (RECORDS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
  return result


def table(records) -> str:
  rows = ["| experiment | test accuracy | test loss | epochs | parameters | train time | wall time | recorded |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in records:
    s = r["summary"]
    epochs = f"{s['epochs_run']}" + (" (early stop)" if s.get("num_epochs", s["epochs_run"]) > s["epochs_run"] else "")
    rows.append(f"| `{r['experiment']}` | {s['test_accuracy']:.2%} | {s['test_loss']:.4f} | {epochs} | {s['num_params']:,} | "
                f"{s['train_seconds']:.1f} s | {r['wall_seconds']:.1f} s | {r['date']}, {r['source']} |")
  return "\n".join(rows)


def rewrite_readme(records) -> None:
  text = README.read_text()
  head, found, rest = text.partition(START)
  _, found_end, tail = rest.partition(END)
  if not (found and found_end):
    sys.exit(f"README.md lacks the {START} ... {END} markers")
  README.write_text(f"{head}{START}\n{table(records)}\n{END}{tail}")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("experiments", nargs="*", help="experiment names to run and record, e.g. mnist_cnn")
  args = parser.parse_args()
  for name in args.experiments:
    record(name)
  # The README's order: the simplest recipe first; experiments not listed come last.
  order = ["mnist_mlp", "mnist_cnn", "mnist_cnn_dropout", "mnist_cnn_deep", "mnist_resnet", "mnist_fast"]
  records = sorted((json.loads(p.read_text()) for p in RECORDS.glob("*.json")),
                   key=lambda r: order.index(r["experiment"]) if r["experiment"] in order else len(order))
  rewrite_readme(records)
  print(f"README.md table rewritten from {len(records)} records in {RECORDS.relative_to(ROOT)}")


if __name__ == "__main__":
  main()
