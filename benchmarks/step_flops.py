"""A train step's floating-point operations against this CPU's peak: how far each model_throughput row runs from the
physical limit.

The FLOPs are XLA's cost analysis of the step's loss and gradients, compiled with lax's own convolutions
(`cpu.canonical()`, the same arithmetic whichever kernels run it), per image. The peak is the cores' fused
multiply-adds: FLOP_PER_CYCLE (two 256-bit FMA pipes, as on AVX2 cores since Haswell and Zen 2) at the clock
/proc/cpuinfo reports (the base clock in a VM; a boost runs faster). The images/s of a results record give each
system's achieved share.

  python benchmarks/step_flops.py benchmarks/results/2026-12-07-amd-epyc-2-cores-cpu-model-throughput-peers-rest.json
"""

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import model_throughput  # noqa: E402  (the rows and their configs)

FLOP_PER_CYCLE = 32  # float32: 2 FMA pipes x 8 lanes x 2 operations


def cpu_peak_gflops() -> float:
  mhz = next(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz"))
  return len(os.sched_getaffinity(0)) * FLOP_PER_CYCLE * mhz / 1e3


def step_flops_per_image(row) -> float:
  import jax
  import jax.numpy as jnp

  from fluxdigits import cpu, data, registry, steps

  config = model_throughput.row_config(row)
  dataset = data.load(config)
  model = registry.create(config, len(dataset.class_names))
  image_shape = dataset.train.images.shape[1:]
  x = jax.ShapeDtypeStruct((row.batch_size, *image_shape), jnp.float32)
  labels = jax.ShapeDtypeStruct((row.batch_size,), jnp.int32)
  variables = registry.check_output(model, config, image_shape, len(dataset.class_names))

  def loss(params, batch_stats, x, labels):
    variables = {"params": params, "batch_stats": batch_stats}
    rngs = {"dropout": jax.random.key(0)}
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return steps.cross_entropy(logits, labels, 0.0).mean()

  with cpu.canonical():
    compiled = jax.jit(jax.grad(loss)).lower(variables["params"], variables.get("batch_stats", {}), x, labels).compile()
  return compiled.cost_analysis()["flops"] / row.batch_size


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("record", help="a model_throughput results JSON: its images/s per row and system")
  args = parser.parse_args()
  record = json.loads(pathlib.Path(args.record).read_text())
  peak = cpu_peak_gflops()
  print(f"peak {peak:.0f} GFLOP/s ({len(os.sched_getaffinity(0))} cores x {FLOP_PER_CYCLE} FLOP a cycle)\n")
  print("| model | dataset | batch | MFLOP an image | system | images/s | GFLOP/s | of peak |")
  print("|---|---|---:|---:|---|---:|---:|---:|")
  for result in record["results"]:
    row = next(
      r
      for r in model_throughput.ROWS
      if (r.name, r.dataset or "mnist", r.batch_size) == (result["model"], result["dataset"], result["batch_size"])
    )
    flops = step_flops_per_image(row)
    for system in ("fluxdigits", *model_throughput.PEERS):
      if system in result:
        rate = result[system]["train_images_per_s"]
        achieved = rate * flops / 1e9
        print(
          f"| {row.name} | {result['dataset']} | {row.batch_size} | {flops / 1e6:.1f} | {system} | {rate:,.0f} | "
          f"{achieved:.1f} | {achieved / peak:.0%} |"
        )


if __name__ == "__main__":
  main()
