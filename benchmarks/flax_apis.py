"""Seed 004's CNN written three ways, trained by fluxdigits' own command on MNIST: the built-in `cnn`
(fluxdigits.layers), and benchmarks/models/seed_cnn.py's LinenCNN and NNXCNN (flax's own nn.Conv / nnx.Conv,
max_pool and Dense, as a user writes them). images/s counts the training epochs of `summary.json`'s train_seconds
(validation passes included, compile excluded). Beside it, each model's compiled train step is counted by XLA
operation (`compiled_operations`): models that compile to the same program differ only by the machine's noise.

Each (model, batch) runs in a fresh process; the models alternate --repeats times and each keeps its median.

  python benchmarks/flax_apis.py [--epochs 2] [--repeats 3] [--batch-sizes 32,128] [--tag TAG]
"""

import argparse
import datetime
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from step_throughput import TRAIN_IMAGES, device_name, run_fluxdigits, write_record  # noqa: E402

MODELS = {
  "built-in cnn (Linen, fluxdigits.layers)": "cnn",
  "LinenCNN (flax.linen layers)": f"{ROOT / 'benchmarks' / 'models' / 'seed_cnn.py'}:LinenCNN",
  "NNXCNN (flax.nnx layers)": f"{ROOT / 'benchmarks' / 'models' / 'seed_cnn.py'}:NNXCNN",
}


def train(model: str, batch_size: int, epochs: int) -> dict:
  return run_fluxdigits(batch_size, epochs, f"--config.model.name={model}", "--config.tensorboard=false")


def compiled_operations(model: str) -> dict:
  """{XLA operation: count} of the model's train step as fluxdigits compiles it on this machine (4 steps a call)."""
  import collections
  import re

  import numpy as np

  from fluxdigits import augment, config as configs, data, loop, mesh as meshes, optim, registry, steps

  config = configs.validate(
    configs.override(configs.load(str(ROOT / "experiments" / "mnist_cnn.py")), [f"model.name={model}"])
  )
  dataset = data.load(config, log=lambda line: None)
  module = registry.create(config, len(dataset.class_names))
  state = steps.create_states([config], module, dataset.info.image_shape, optim.create(config, 100))
  chunk = loop.train_calls(
    config, module, len(dataset.class_names), steps.preprocess_for(config, dataset), augment.make(config)
  )
  indices = meshes.shard_batches(np.zeros((1, 4, config.batch_size), np.int32), meshes.data_mesh())
  text = (
    chunk.lower(
      state,
      dataset.train.images,
      dataset.train.labels,
      indices,
      steps.member_hyperparams([config]),
      np.ones(1, bool),
      np.int32(4),
    )
    .compile()
    .as_text()
  )
  return dict(collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", text)))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch-sizes", default="32,128")
  parser.add_argument("--tag", default="flax-apis")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args()
  results = []
  for batch_size in map(int, args.batch_sizes.split(",")):
    runs = {name: [] for name in MODELS}
    for repeat in range(args.repeats):
      for name, model in MODELS.items():
        print(f"{name}, batch {batch_size}, repeat {repeat + 1} ...", file=sys.stderr, flush=True)
        runs[name].append(train(model, batch_size, args.epochs))
    for name, model_runs in runs.items():
      median = statistics.median(r["train_images_per_s"] for r in model_runs)
      results.append(
        {
          "model": name,
          "batch_size": batch_size,
          "train_images_per_s": median,
          "compile_s": statistics.median(r["compile_s"] for r in model_runs),
          "test_accuracy": model_runs[0]["test_accuracy"],
          "runs": model_runs,
        }
      )
  operations = {name: compiled_operations(model) for name, model in MODELS.items()}
  for r in results:
    r["compiled_operations"] = sum(operations[r["model"]].values())
    r["same_program_as_built_in"] = operations[r["model"]] == operations[next(iter(MODELS))]
  record = {
    "device": device_name(),
    "epochs": args.epochs,
    "repeats": args.repeats,
    "train_images": TRAIN_IMAGES,
    "date": datetime.date.today().isoformat(),
    "results": results,
  }
  path = write_record(record, args.out, tag=args.tag)
  print(table(results))
  print(f"\n-> {path}")


def table(results) -> str:
  builtin = {r["batch_size"]: r["train_images_per_s"] for r in results if r["model"].startswith("built-in")}
  linen = {r["batch_size"]: r["train_images_per_s"] for r in results if r["model"].startswith("LinenCNN")}
  rows = [
    "| model | batch | images/s | vs built-in | vs LinenCNN | XLA operations | test accuracy |",
    "|---|---:|---:|---:|---:|---|---:|",
  ]
  for r in results:
    rate, batch = r["train_images_per_s"], r["batch_size"]
    program = f"{r['compiled_operations']:,}" + (", the built-in's program" if r["same_program_as_built_in"] else "")
    rows.append(
      f"| {r['model']} | {batch} | {rate:,.0f} | {rate / builtin[batch]:.2f}x | {rate / linen[batch]:.2f}x | "
      f"{program} | {r['test_accuracy']:.4f} |"
    )
  return "\n".join(rows)


if __name__ == "__main__":
  main()
