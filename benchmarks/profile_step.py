"""Where a train step's time goes: a jax.profiler trace of fluxdigits' compiled train chunk, summed per op.

Runs a row of `model_throughput.py` (same config, data and compiled chunk), traces one call of STEPS
steps, and prints the thread time per step of each compiled op, grouped by the op's kind and by the
model layer that emitted it (from the op's metadata in the compiled HLO), forward and backward apart.
Thread times add over XLA's threads, so their sum can pass the wall time.

  python benchmarks/profile_step.py 5            # ResNet-20 on MNIST, 4 steps
  python benchmarks/profile_step.py 4 --steps 8  # cnn_deep
"""

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import model_throughput  # noqa: E402  (the rows and their configs)


def op_times(trace_dir) -> collections.Counter:
  path = next(pathlib.Path(trace_dir).rglob("*.trace.json.gz"))
  totals = collections.Counter()
  for event in json.load(gzip.open(path))["traceEvents"]:
    if event.get("ph") == "X" and "dur" in event:
      totals[event["name"]] += event["dur"]
  return totals


def layer_of(hlo: str, op: str) -> str:
  """'fwd LAYER' or 'bwd LAYER' from the op's metadata: the flax module path that emitted it."""
  found = re.search(r"\n\s*%?" + re.escape(op) + r" = [^\n]*?op_name=\"([^\"]*)\"", hlo)
  if not found:
    return "(no metadata)"
  name = found.group(1)
  direction = "bwd" if "transpose(jvp(" in name else "fwd"
  path = re.sub(r"^.*?jvp\(\w+\)\)?/?", "", name)
  return f"{direction} {'/'.join(path.split('/')[:2])}"


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("row", type=int, help="index into model_throughput.ROWS")
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args()

  import jax

  from fluxdigits import augment, cpu, data, loop, mesh as meshes, optim, registry, steps

  cpu.set_up()  # before JAX starts, as model_throughput's child processes do
  row = model_throughput.ROWS[args.row]
  config = model_throughput.row_config(row)
  dataset = data.load(config)
  model = registry.create(config, len(dataset.class_names))
  # the mesh model_throughput times the row on
  mesh = loop.data_mesh_for(config, model, cpu.calls_onednn(model, dataset.train.images.shape[1:]))
  state = meshes.replicate(
    steps.create_states([config], model, dataset.train.images.shape[1:], optim.create(config, 100)), mesh
  )
  chunk = loop.train_calls(
    config, model, len(dataset.class_names), steps.preprocess_for(config, dataset), augment.make(config)
  )
  inputs = (
    *meshes.replicate((dataset.train.images, dataset.train.labels), mesh),
    meshes.shard_batches(model_throughput.order(row, len(dataset.train))[None, : args.steps], mesh),
    *meshes.replicate((steps.member_hyperparams([config]), np.ones(1, bool), np.int32(args.steps)), mesh),
  )
  compiled = chunk.lower(state, *inputs).compile()
  hlo = compiled.as_text()

  def call(state):  # the state is donated: each call takes the one the last returned
    state, outputs = compiled(state, *inputs)
    jax.block_until_ready(outputs)
    return state

  state = call(state)
  start = time.perf_counter()
  state = call(state)
  print(f"{model_throughput.label(row)}: {(time.perf_counter() - start) / args.steps * 1e3:.1f} ms a step (wall)")
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    call(state)
    jax.profiler.stop_trace()
    times = op_times(trace_dir)

  ops = {name: t for name, t in times.items() if name in hlo and not name.startswith("$")}
  by_kind, by_layer = collections.Counter(), collections.Counter()
  for name, t in ops.items():
    by_kind[re.sub(r"\.\d+$", "", name)] += t
    by_layer[layer_of(hlo, name)] += t
  for title, counts in (("op kind", by_kind), ("layer", by_layer)):
    print(f"\n{title:<50} ms a step (thread time)")
    for key, t in counts.most_common(args.top):
      print(f"{key:<50} {t / args.steps / 1e3:8.2f}")
  print(f"{'all ops':<50} {sum(ops.values()) / args.steps / 1e3:8.2f}")


if __name__ == "__main__":
  main()
