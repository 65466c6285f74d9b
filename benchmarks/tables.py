"""Every measurement table of README.md and docs/*.md, generated from the records in benchmarks/results/.

A generated table sits between two marker comments that name what renders it and from which records:

  <!-- table: model-throughput 2026-12-03-intel-r-xeon-r-processor-2-cores-cpu-model-throughput-after-registry.json -->
  ... (written by this script)
  <!-- end of table -->

  python benchmarks/tables.py           # rewrite every table from its records
  python benchmarks/tables.py --check   # exit 1, naming them, if any table differs from its records

Each benchmark script renders its own records (its `table` function); file names are relative to
benchmarks/results/.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import cifar10  # noqa: E402
import flax_apis  # noqa: E402
import model_throughput  # noqa: E402
import onnx_latency  # noqa: E402
import population  # noqa: E402
import robustness  # noqa: E402
import step_throughput  # noqa: E402
import tensorboard_cost  # noqa: E402
import time_to_accuracy  # noqa: E402
import weight_averaging  # noqa: E402

ROOT = step_throughput.ROOT
# By its path: the name `experiments` is also the repository's folder of experiment files.
_spec = importlib.util.spec_from_file_location("benchmarks_experiments", ROOT / "benchmarks" / "experiments.py")
experiments = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(experiments)
RESULTS = ROOT / "benchmarks" / "results"
MARKED = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end of table -->)", re.DOTALL)


def _records(files):
  return [json.loads((RESULTS / f).read_text()) for f in files]


def _caption(records, files, link: str) -> str:
  """Where and when the rows were measured, and the files that hold them (`link`: the results folder, as the
  document links to it)."""
  where = sorted({f"{r['device']}, {r['date']}" for r in records})
  links = ", ".join(f"[`{f}`]({link}/{f})" for f in files)
  return f"\n\n<sub>{'; '.join(where)}: {links}</sub>"


def headline(step_record: dict, *model_records: dict) -> str:
  """The README's few rows: each conv model against the fastest PyTorch peer its record measured (named), and the
  seed CNN against Keras (step_record)."""
  rows = [
    "| model | batch | fluxdigits images/s | fastest PyTorch | its images/s | fluxdigits vs it | vs Keras "
    "| measured on |",
    "|---|---:|---:|---|---:|---:|---:|---|",
  ]
  speed = {(r["system"], r["batch_size"]): r["train_images_per_s"] for r in step_record["results"]}
  order = [row.name for row in model_throughput.ROWS]
  results = [(r, record["device"]) for record in model_records for r in record["results"]]
  for r, device in sorted(results, key=lambda rd: (order.index(rd[0]["model"]), rd[0]["dataset"], rd[0]["batch_size"])):
    peer = max((p for p in model_throughput.PEERS if p in r), key=lambda p: r[p]["train_images_per_s"])
    flux, fastest = r["fluxdigits"]["train_images_per_s"], r[peer]["train_images_per_s"]
    keras = (
      f"{speed[('fluxdigits', r['batch_size'])] / speed[('keras', r['batch_size'])]:.2f}x"
      if r["model"] == "cnn" and ("keras", r["batch_size"]) in speed
      else ""
    )
    rows.append(
      f"| {r['model']}, {r['dataset']} | {r['batch_size']} | {flux:,.0f} | {model_throughput.PEERS[peer]} | "
      f"{fastest:,.0f} | {flux / fastest:.2f}x | {keras} | {device} |"
    )
  return "\n".join(rows)


def render(spec: str, link: str = "benchmarks/results") -> str:
  kind, *files = spec.split()
  records = _records(files)
  caption = _caption(records, files, link)
  if kind == "experiments":
    return experiments.table(experiments.read_records())
  if kind == "real-digits":
    return experiments.digits_table(experiments.read_records())
  if kind == "robustness":
    return robustness.table(experiments.read_records())
  if kind in ("step-throughput", "model-throughput", "population"):
    rows = [row for r in records for row in r["results"]]
    return {"step-throughput": step_throughput, "model-throughput": model_throughput, "population": population}[
      kind
    ].table(rows) + caption
  if kind == "population-whole-runs":
    return population.whole_runs_table([row for r in records for row in r["results"]]) + caption
  if kind == "flax-apis":
    return flax_apis.table([row for r in records for row in r["results"]]) + caption
  if kind == "onnx-latency":
    return onnx_latency.table(records) + caption
  if kind == "time-to-accuracy":
    return time_to_accuracy.table(records) + caption
  if kind == "projected":
    return cifar10.projected_table(records) + caption
  if kind == "headline":
    return headline(*records) + caption
  if kind == "tensorboard-cost":
    return tensorboard_cost.table(*records) + caption
  if kind == "weight-averaging":
    return weight_averaging.table(*records) + caption
  raise SystemExit(f"unknown table kind {kind!r} in <!-- table: {spec} -->")


def documents() -> list[pathlib.Path]:
  return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _link(path: pathlib.Path) -> str:
  return os.path.relpath(RESULTS, path.parent)


def regenerated(path: pathlib.Path) -> str:
  return MARKED.sub(lambda m: f"{m.group(1)}{render(m.group('spec'), _link(path))}\n{m.group(4)}", path.read_text())


def stale() -> list[str]:
  """`file: spec` of every generated table that differs from what its records render."""
  found = []
  for path in documents():
    for m in MARKED.finditer(path.read_text()):
      if m.group("body") != render(m.group("spec"), _link(path)) + "\n":
        found.append(f"{path.relative_to(ROOT)}: {m.group('spec')}")
  return found


def rewrite() -> list[pathlib.Path]:
  changed = []
  for path in documents():
    text = regenerated(path)
    if text != path.read_text():
      path.write_text(text)
      changed.append(path)
  return changed


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--check", action="store_true", help="only say which tables differ from their records")
  if parser.parse_args().check:
    differing = stale()
    if differing:
      sys.exit("tables that differ from their records (run python benchmarks/tables.py):\n  " + "\n  ".join(differing))
    return
  changed = rewrite()
  print(f"rewrote {', '.join(str(p.relative_to(ROOT)) for p in changed) or 'nothing: every table matches its records'}")


if __name__ == "__main__":
  main()
