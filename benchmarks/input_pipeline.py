"""What the input pipeline costs: an epoch of fluxdigits' training loop against the same steps on one batch
already on the device.

The loop as train_and_evaluate runs it: per call, the host slices the epoch's index array, puts it
on the devices, runs `steps_per_call` steps (each gathers its batch from the dataset held on the
devices) and reads the losses back. The reference runs the same step function, in the same
chunks, on the same batches gathered beforehand and already on the devices (scanned over, so
that XLA cannot hoist any per-batch work out of the loop). The difference is the pipeline's cost.

  python benchmarks/input_pipeline.py [--batch-sizes 32,128]
"""

import argparse
import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fluxdigits import augment, config as configs, data, loop, mesh as meshes, optim, population, registry, steps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from step_throughput import ROOT  # noqa: E402


def epoch_seconds(batch_size):
  config = configs.validate(
    configs.override(configs.load(str(ROOT / "experiments" / "mnist_cnn.py")), [f"batch_size={batch_size}"])
  )
  dataset = data.load(config)
  mesh = meshes.data_mesh()
  n_steps = len(dataset.train) // batch_size
  model = registry.create(config, len(dataset.class_names))
  preprocess = steps.preprocess_for(config, dataset)
  state = meshes.replicate(
    steps.create_states([config], model, dataset.train.images.shape[1:], optim.create(config, n_steps)), mesh
  )
  images, labels = meshes.replicate((dataset.train.images, dataset.train.labels), mesh)
  chunk = min(config.steps_per_call, n_steps)
  chunk_starts = range(0, n_steps // chunk * chunk, chunk)  # whole chunks only: one compiled shape for both loops

  hyperparams, active, count = meshes.replicate(
    (steps.member_hyperparams([config]), np.ones(1, bool), np.int32(chunk)), mesh
  )
  gathered = loop.train_calls(config, model, len(dataset.class_names), preprocess, augment.make(config))
  indices = meshes.shard_batches(np.zeros((1, chunk, batch_size), np.int32), mesh)
  gathered = gathered.lower(state, images, labels, indices, hyperparams, active, count).compile()
  step = functools.partial(
    steps.train_step,
    hyperparams=steps.hyperparams_of(config),
    config=config,
    num_classes=len(dataset.class_names),
    preprocess=preprocess,
    augment_fn=None,
  )

  @functools.partial(jax.jit, donate_argnums=0)
  def on_device_chunk(state, chunk_images, chunk_labels):
    take = lambda s, batch: step(s, jnp.arange(len(batch[0])), images=batch[0], labels=batch[1])
    one, outputs = jax.lax.scan(take, population.member(state, 0), (chunk_images, chunk_labels))
    return population.stack([one]), outputs

  batches = data.train_batches(config.seed, 1, len(dataset.train), batch_size)
  batch_sharding = NamedSharding(mesh, P(None, "data"))
  on_device_batches = [
    jax.device_put(
      (dataset.train.images[batches[start : start + chunk]], dataset.train.labels[batches[start : start + chunk]]),
      batch_sharding,
    )
    for start in chunk_starts
  ]
  on_device = on_device_chunk.lower(state, *on_device_batches[0]).compile()

  def pipeline_epoch(state):
    for start in chunk_starts:
      indices = meshes.shard_batches(batches[None, start : start + chunk], mesh)
      state, sums = gathered(state, images, labels, indices, hyperparams, active, count)
      float(np.asarray(sums["loss"]).sum()), int(np.asarray(sums["accuracy"]).sum())
    return state

  def on_device_epoch(state):
    for chunk_images, chunk_labels in on_device_batches:
      state, sums = on_device(state, chunk_images, chunk_labels)
      float(np.asarray(sums["loss"]).sum()), int(np.asarray(sums["accuracy"]).sum())
    return state

  timings = {}
  for name, run in (("pipeline", pipeline_epoch), ("on_device", on_device_epoch)) * 2:  # the second round counts
    start = time.perf_counter()
    state = jax.block_until_ready(run(state))
    timings[name] = time.perf_counter() - start
  return len(chunk_starts) * chunk, timings


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch-sizes", default="32,128")
  args = parser.parse_args()
  for batch_size in map(int, args.batch_sizes.split(",")):
    n_steps, t = epoch_seconds(batch_size)
    share = (t["pipeline"] - t["on_device"]) / t["pipeline"]
    print(
      json.dumps(
        {
          "batch_size": batch_size,
          "steps": n_steps,
          "pipeline_s": round(t["pipeline"], 3),
          "on_device_s": round(t["on_device"], 3),
          "pipeline_share": round(share, 4),
        }
      )
    )


if __name__ == "__main__":
  main()
