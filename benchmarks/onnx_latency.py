"""ONNX Runtime's latency on a run's exported model: this checkout's export beside a baseline file of the same run
(for instance one exported by an earlier fluxdigits), at batch 1 and 256, on the CPU.

  python benchmarks/onnx_latency.py RUN [--baseline OLD.onnx] [--repeats 200]

Each file runs in one InferenceSession (ONNX Runtime's default graph optimisations, all cores); each batch size is
warmed up, then timed --repeats times, median kept. Also counts each graph's nodes by operation.
"""

import argparse
import collections
import datetime
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from step_throughput import device_name, write_record  # noqa: E402

BATCHES = (1, 256)


def latency_ms(path, image_shape, batch: int, repeats: int) -> float:
  import onnxruntime

  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  name = session.get_inputs()[0].name
  images = np.random.default_rng(0).random((batch, *image_shape), np.float32)
  for _ in range(10):
    session.run(None, {name: images})
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    session.run(None, {name: images})
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def operations(path) -> dict:
  import onnx

  return dict(collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node).most_common())


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("run")
  parser.add_argument("--baseline", help="an ONNX file of the same run to compare with")
  parser.add_argument("--baseline-name", default="baseline", help="what the baseline is, for the table")
  parser.add_argument("--repeats", type=int, default=200)
  parser.add_argument("--tag", default="onnx-latency")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args()
  from fluxdigits import export, predict

  with tempfile.TemporaryDirectory() as folder:
    path, error, _ = export.export(args.run, "onnx", folder)
    image_shape = predict.load_classifier(args.run).image_shape
    files = {"this checkout": path, **({args.baseline_name: pathlib.Path(args.baseline)} if args.baseline else {})}
    results = [
      {
        "export": name,
        "nodes": sum(operations(file).values()),
        "operations": operations(file),
        **{f"batch_{batch}_ms": latency_ms(file, image_shape, batch, args.repeats) for batch in BATCHES},
      }
      for name, file in files.items()
    ]
  record = {
    "device": device_name(),
    "date": datetime.date.today().isoformat(),
    "run": str(args.run),
    "repeats": args.repeats,
    "results": results,
  }
  out = write_record(record, args.out, tag=f"{args.tag}-{pathlib.Path(args.run).name}")
  print(table([record]))
  print(f"-> {out}")


def table(records) -> str:
  """A row per export of each record's run: its nodes, whether it holds Conv and MaxPool, its latencies."""
  rows = [
    "| run | export | nodes | Conv, MaxPool | " + " | ".join(f"batch {b} ms" for b in BATCHES) + " |",
    "|---|---|---:|---|" + "---:|" * len(BATCHES),
  ]
  for record in records:
    for r in record["results"]:
      held = ", ".join(op for op in ("Conv", "MaxPool") if op in r["operations"]) or "neither"
      rows.append(
        f"| {pathlib.Path(record['run']).name} | {r['export']} | {r['nodes']} | {held} | "
        + " | ".join(f"{r[f'batch_{b}_ms']:.3f}" for b in BATCHES)
        + " |"
      )
  return "\n".join(rows)


if __name__ == "__main__":
  main()
