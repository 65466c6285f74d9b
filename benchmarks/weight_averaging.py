"""Raw weights against moving averages of them, over seeds: how `ema_decay`'s default was chosen.

Trains an experiment (default seed 004's recipe, `experiments/mnist_cnn.py`) once per seed with the
raw weights evaluated (ema_decay=0) while it carries one moving average per candidate decay in the
same compiled scan (`steps.update_average`, as training does), then scores the final epoch's
raw weights and every average on the validation and test splits. The decay is chosen on mean
validation accuracy; the test column only reports what that choice gives. The warm-up caps the
decay at (1 + step) / (10 + step), which passes 0.999 only after 8,991 steps: in runs as short as
seed 004's (8,435 steps) the two largest decays give the same average.

  python benchmarks/weight_averaging.py [--seeds 12] [--experiment experiments/mnist_cnn.py]
"""

import argparse
import datetime
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fluxdigits import config as configs, data, mesh as meshes, registry, steps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from step_throughput import ROOT, device_name, write_record  # noqa: E402

DECAYS = (0.99, 0.995, 0.998, 0.999, 0.9995)


def final_accuracies(config, dataset, mesh):
  """{'val': [...], 'test': [...]}: accuracy of the raw weights, then of each DECAYS average."""
  steps_per_epoch = len(dataset.train) // config.batch_size
  model = registry.create(config, len(dataset.class_names))
  state = steps.create_state(config, model, dataset.train.images.shape[1:], steps_per_epoch)
  preprocess = steps.preprocess_for(config, dataset)
  step = functools.partial(
    steps.train_step,
    hyperparams=steps.hyperparams_of(config),
    config=config,
    num_classes=len(dataset.class_names),
    preprocess=preprocess,
    augment_fn=None,
  )

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_chunk(state, averages, images, labels, batch_indices):
    def body(carry, idx):
      state, averages = carry
      state, _ = step(state, idx, images=images, labels=labels)
      averages = tuple(
        steps.update_average(average, state.evaluated_variables(), state.step, decay)
        for decay, average in zip(DECAYS, averages)
      )
      return (state, averages), None

    return jax.lax.scan(body, (state, averages), batch_indices)[0]

  averages = tuple(jax.tree.map(jnp.copy, state.evaluated_variables()) for _ in DECAYS)
  images, labels = meshes.replicate((dataset.train.images, dataset.train.labels), mesh)
  for epoch in range(1, config.num_epochs + 1):
    batches = data.train_batches(config.seed, epoch, len(dataset.train), config.batch_size)
    for start in range(0, steps_per_epoch, config.steps_per_call):
      idx = meshes.shard_batches(batches[start : start + config.steps_per_call], mesh)
      state, averages = train_chunk(state, averages, images, labels, idx)

  predict = steps.make_predict(model.apply, preprocess)
  candidates = (state.evaluated_variables(), *averages)
  accuracies = {}
  for name, split in (("val", dataset.validation), ("test", dataset.test)):
    split_images = meshes.replicate(split.images, mesh)
    accuracies[name] = [
      steps.classification_metrics(
        steps.predict_split(predict, v, split_images, len(split), config.eval_batch_size, mesh), split.labels
      )["accuracy"]
      for v in candidates
    ]
  return accuracies


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--experiment", default=str(ROOT / "experiments" / "mnist_cnn.py"))
  parser.add_argument("--seeds", type=int, default=12)
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args()
  config = configs.validate(configs.override(configs.load(args.experiment), ["ema_decay=0.0"]))
  dataset = data.load(config)
  mesh = meshes.data_mesh()
  runs = []
  for seed in range(args.seeds):
    seeded = configs.validate(configs.override(config, [f"seed={seed}"]))
    runs.append({"seed": seed, **final_accuracies(seeded, dataset, mesh)})
    print(
      seed,
      " ".join(f"{a:.4f}" for a in runs[-1]["val"]),
      "|",
      " ".join(f"{a:.4f}" for a in runs[-1]["test"]),
      flush=True,
    )

  record = {
    "device": device_name(),
    "date": datetime.date.today().isoformat(),
    "experiment": str(pathlib.Path(args.experiment).resolve().relative_to(ROOT)),
    "weights": ["raw", *(f"ema {d:g}" for d in DECAYS)],
    "runs": runs,
  }
  print(table(record))
  path = write_record(record, args.out, "-weight-averaging")
  print(f"-> {path}")


def table(record) -> str:
  """Each set of weights evaluated, over the record's seeds: mean validation and test accuracy, the lowest test."""
  runs = record["runs"]
  val, test = (np.array([r[k] for r in runs]) for k in ("val", "test"))
  rows = [
    "| weights evaluated | mean validation accuracy | mean test accuracy | lowest test accuracy "
    "| seeds with test ≥ 98.5% |",
    "| --- | ---: | ---: | ---: | ---: |",
  ]
  for i, name in enumerate(record["weights"]):
    rows.append(
      f"| {name} | {val[:, i].mean():.2%} | {test[:, i].mean():.2%} | {test[:, i].min():.2%} | "
      f"{int((test[:, i] >= 0.985).sum())} of {len(runs)} |"
    )
  return "\n".join(rows)


if __name__ == "__main__":
  main()
