"""The README's table of experiment results, generated from recorded runs, never typed.

  python benchmarks/experiments.py mnist_mlp mnist_cnn   # run these experiments, record them, rewrite the table
  python benchmarks/experiments.py                       # rewrite the table from what is recorded
  python benchmarks/experiments.py --reevaluate mnist_cnn  # measure the run --keep kept again, without training

Each experiment runs as `python -m fluxdigits.run experiments/NAME.py` in a scratch workdir (the report
off; `--keep` trains in runs/NAME and keeps it), timed from process start to end, and is recorded in
benchmarks/results/experiments/NAME.json with its summary.json, the date, the machine and the commit.
A digit experiment (dataset mnist or idx) is then, before a scratch workdir is deleted, evaluated on
the photos and drawings of ../shared/data/real-digits (--real-digits DIR or FLUXDIGITS_REAL_DIGITS to use
another folder) with
`fluxdigits.load_classifier(workdir)`: each file's label is the first character of its name, its
source the part after the first underscore (`4_krisut_1.png`: a 4, from krisut); the record gets
top-1 overall and per source, the counts and every misclassified or unreadable file. Without the
folder nothing is recorded for it (a line on stderr says so). A digit experiment is also measured on
MNIST-C's 15 corruptions of the test split (benchmarks/robustness.py).

The tables are then rewritten from every record there (`benchmarks/tables.py`): the experiments
table, and the real-digits and robustness tables from the records that have their figures.
"""

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from step_throughput import ROOT, device_name  # noqa: E402

RECORDS = ROOT / "benchmarks" / "results" / "experiments"
REAL_DIGITS = pathlib.Path(os.environ.get("FLUXDIGITS_REAL_DIGITS", ROOT.parent / "shared" / "data" / "real-digits"))
DIGIT_DATASETS = ("mnist", "idx")
# What each source of ../shared/data/real-digits holds, for the table's header; a source not named
# here is shown by its name and count only.
SOURCE_KINDS = {"ashishdasu": "photos", "dfak0": "drawings", "krisut": "photos, coloured paper"}


def record(name: str, real_digits: pathlib.Path = REAL_DIGITS, keep: bool = False) -> dict:
  with tempfile.TemporaryDirectory() as scratch:
    workdir = str(ROOT / "runs" / name) if keep else scratch
    if keep and pathlib.Path(workdir).exists():
      sys.exit(f"experiments.py: --keep would train into {workdir}, which exists; move it away first")
    command = [
      sys.executable,
      "-m",
      "fluxdigits.run",
      f"experiments/{name}.py",
      "--workdir",
      workdir,
      "--config.report=false",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    result = {
      "experiment": name,
      "date": datetime.date.today().isoformat(),
      "machine": device_name(),
      "commit": _commit(),
      "wall_seconds": wall,
      "summary": summary,
      "source": f"python benchmarks/experiments.py {name}",
    }
    result.update(_measures(workdir, summary, real_digits))
  return _write(result)


def reevaluate(name: str, real_digits: pathlib.Path = REAL_DIGITS) -> dict:
  """The record of `name` with its measures beyond its own test split taken again, on the run `--keep` left in
  runs/NAME (after a change to the preparation or to the measures), its training figures as they were."""
  path, workdir = RECORDS / f"{name}.json", ROOT / "runs" / name
  if not path.exists():
    sys.exit(f"experiments.py: {name} has no record to evaluate again; record it first (--keep)")
  if not (workdir / "summary.json").exists():
    sys.exit(
      f"experiments.py: --reevaluate measures the run kept in {workdir}, which is absent; record {name} with --keep"
    )
  result = json.loads(path.read_text())
  if json.loads((workdir / "summary.json").read_text()) != result["summary"]:
    sys.exit(
      f"experiments.py: {workdir} is not the recorded run (its summary differs); record {name} again with --keep"
    )
  result.update(_measures(str(workdir), result["summary"], real_digits))
  result["evaluated"] = {"date": datetime.date.today().isoformat(), "machine": device_name(), "commit": _commit()}
  return _write(result)


def _measures(workdir: str, summary: dict, real_digits: pathlib.Path) -> dict:
  """A digit run's (dataset mnist or idx) real-digit figures, and MNIST-C with the photo renderings; {} for others."""
  config = json.loads((pathlib.Path(workdir) / "config.json").read_text())  # flat: "dataset.name": "mnist"
  if config.get("dataset.name", summary.get("dataset")) not in DIGIT_DATASETS:
    return {}
  import robustness

  import fluxdigits

  measures = {"mnist_c": robustness.evaluate(fluxdigits.load_classifier(workdir), *robustness.mnist_test())}
  digits = evaluate_real_digits(workdir, real_digits)
  return measures if digits is None else {"real_digits": digits, **measures}


def _commit() -> str | None:
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
  return commit.stdout.strip() or None


def _write(result: dict) -> dict:
  RECORDS.mkdir(parents=True, exist_ok=True)
  (RECORDS / f"{result['experiment']}.json").write_text(json.dumps(result, indent=2) + "\n")
  return result


def _shown_path(folder: pathlib.Path) -> str:
  """The folder as the README names it: relative to the repository (../shared/...) when it can be."""
  try:
    return os.path.relpath(folder.resolve(), ROOT)
  except ValueError:  # another drive
    return str(folder)


def evaluate_real_digits(workdir, folder: pathlib.Path) -> dict | None:
  """Top-1 of the finished run in `workdir` on the labelled images of `folder`, overall and per source.

  None, with a line on stderr, when the folder is absent. A file that cannot be read counts as a
  miss and is listed under "errors"; a file whose name does not start with a class name is left out
  and listed under "unlabelled".
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    print(f"experiments.py: {folder} is absent, so no real-digit accuracy is recorded", file=sys.stderr)
    return None
  sys.path.insert(0, str(ROOT))
  import numpy as np

  import fluxdigits
  from fluxdigits.errors import UserError
  from fluxdigits.predict import expand

  classifier = fluxdigits.load_classifier(workdir)
  names = classifier.class_names
  labelled, unlabelled, errors, prepared = [], [], [], []
  for path in expand([folder]):
    if path.name[:1] not in names:
      unlabelled.append(path.name)
      continue
    try:
      prepared.append((path, classifier.prepare(path)))
    except UserError as e:
      errors.append({"file": path.name, "label": path.name[0], "error": str(e)})
    labelled.append(path)
  if not labelled:
    print(
      f"experiments.py: {folder} has no image whose name starts with a class name, so no real-digit accuracy is "
      "recorded",
      file=sys.stderr,
    )
    return None
  probs = classifier.predict(np.stack([image for _, image in prepared])) if prepared else np.zeros((0, len(names)))
  correct = {path.name: False for path in labelled}
  misclassified = []
  for (path, _), p in zip(prepared, probs):
    label, predicted = path.name[0], names[int(p.argmax())]
    correct[path.name] = predicted == label
    if predicted != label:
      misclassified.append(
        {
          "file": path.name,
          "label": label,
          "predicted": predicted,
          "probability": round(float(p.max()), 4),
          "label_probability": round(float(p[names.index(label)]), 4),
        }
      )
  sources = {}
  for path in labelled:
    counts = sources.setdefault(source_of(path.name), {"files": 0, "correct": 0})
    counts["files"] += 1
    counts["correct"] += correct[path.name]
  for counts in sources.values():
    counts["top1"] = counts["correct"] / counts["files"]
  if errors:
    print(
      f"experiments.py: {len(errors)} of {len(labelled)} files in {folder} could not be read (counted as misses): "
      + ", ".join(e["file"] for e in errors),
      file=sys.stderr,
    )
  hits = sum(correct.values())
  return {
    "folder": _shown_path(folder),
    "files": len(labelled),
    "correct": hits,
    "top1": hits / len(labelled),
    "sources": dict(sorted(sources.items())),
    "misclassified": misclassified,
    "errors": errors,
    "unlabelled": unlabelled,
  }


def source_of(file_name: str) -> str:
  """`4_krisut_1.png` -> `krisut`: the part of the name after the first underscore, up to the next."""
  parts = pathlib.Path(file_name).stem.split("_")
  return parts[1] if len(parts) > 1 and parts[1] else "(no source)"


def table(records) -> str:
  rows = [
    "| experiment | test accuracy | MNIST-C mean | photos | test loss | epochs | parameters | train time | wall time "
    "| recorded |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in records:
    s = r["summary"]
    epochs = f"{s['epochs_run']}" + (" (early stop)" if s.get("num_epochs", s["epochs_run"]) > s["epochs_run"] else "")
    mnist_c = f"{r['mnist_c']['mean']:.1%}" if r.get("mnist_c") else ""
    photos = f"{r['mnist_c']['photos_mean']:.1%}" if "photos_mean" in (r.get("mnist_c") or {}) else ""
    rows.append(
      f"| `{r['experiment']}` | {s['test_accuracy']:.2%} | {mnist_c} | {photos} | {s['test_loss']:.4f} | {epochs} "
      f"| {s['num_params']:,} | "
      f"{s['train_seconds']:.1f} s | {r['wall_seconds']:.1f} s | {r['date']}, {r['source']} |"
    )
  return "\n".join(rows)


def _count_header(label: str, counts: set, kind: str = "") -> str:
  """`all 59`, `krisut (10 photos)`; a count that differs between records goes in the cells instead."""
  count = f"{next(iter(counts))}" if len(counts) == 1 else ""
  if label == "all":
    return f"all {count}".strip()
  inside = " ".join(filter(None, (count, kind)))
  return f"{label} ({inside})" if inside else label


def digits_table(records) -> str:
  """Top-1 on the real digits of every record that has it: overall, then each source with its count."""
  records = [r for r in records if r.get("real_digits")]
  if not records:
    return "No experiment has real-digit figures recorded yet."
  sources = sorted({s for r in records for s in r["real_digits"]["sources"]})
  totals = {r["real_digits"]["files"] for r in records}
  per_source = {
    s: {r["real_digits"]["sources"][s]["files"] for r in records if s in r["real_digits"]["sources"]} for s in sources
  }
  header = ["run", "MNIST test", _count_header("all", totals)] + [
    _count_header(s, per_source[s], SOURCE_KINDS.get(s, "")) for s in sources
  ]
  best = max(r["real_digits"]["top1"] for r in records)

  def cell(top1, files, counts):
    return f"{top1:.1%}" + (f" of {files}" if len(counts) > 1 else "")

  rows = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
  for r in records:
    d = r["real_digits"]
    overall = cell(d["top1"], d["files"], totals)
    if len(records) > 1 and d["top1"] == best:
      overall = f"**{overall}**"
    cells = [f"`{r['experiment']}`", f"{r['summary']['test_accuracy']:.2%}", overall]
    for s in sources:
      c = d["sources"].get(s)
      cells.append(cell(c["top1"], c["files"], per_source[s]) if c else "")
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("experiments", nargs="*", help="experiment names to run and record, e.g. mnist_cnn")
  parser.add_argument(
    "--keep", action="store_true", help="train in runs/NAME and keep it, rather than in a scratch folder"
  )
  parser.add_argument(
    "--real-digits",
    type=pathlib.Path,
    default=REAL_DIGITS,
    help=f"folder of labelled digit images a digit experiment is evaluated on ({_shown_path(REAL_DIGITS)}; "
    "or set FLUXDIGITS_REAL_DIGITS)",
  )
  parser.add_argument(
    "--reevaluate",
    action="store_true",
    help="measure the runs kept in runs/NAME again (real digits, MNIST-C, photos) and update their records, "
    "without training",
  )
  args = parser.parse_args()
  for name in args.experiments:
    if args.reevaluate:
      reevaluate(name, args.real_digits)
    else:
      record(name, args.real_digits, args.keep)
  import tables  # it renders this script's tables: imported here, not at the top, to keep the two apart

  records = read_records()
  changed = tables.rewrite()
  measured = sum(1 for r in records if r.get("real_digits"))
  print(
    f"{len(records)} records in {RECORDS.relative_to(ROOT)} ({measured} with real-digit figures); rewrote "
    f"{', '.join(str(p.relative_to(ROOT)) for p in changed) or 'no table'}"
  )


# The README's order: the simplest recipe first; experiments not listed come last.
ORDER = ["mnist_mlp", "mnist_cnn", "mnist_cnn_dropout", "mnist_cnn_deep", "mnist_resnet", "mnist_fast"]


def read_records(folder: pathlib.Path = RECORDS) -> list[dict]:
  return sorted(
    (json.loads(p.read_text()) for p in folder.glob("*.json")),
    key=lambda r: ORDER.index(r["experiment"]) if r["experiment"] in ORDER else len(ORDER),
  )


if __name__ == "__main__":
  main()
