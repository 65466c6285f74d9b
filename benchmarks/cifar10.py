"""CIFAR-10 on this machine: cifar10_fast from process start to its test accuracy, and cifar10_resnet's projected run.

cifar10_fast runs whole (benchmarks/time_to_accuracy.py's timing). cifar10_resnet (ResNet-18, 40
epochs) would take a day on a CPU, so it trains on its first `--resnet-examples` images for one
epoch; the full run is projected as that run's fixed costs (start-up, data, compile, test pass)
plus 40 full epochs at the measured seconds per training image.

  python benchmarks/cifar10.py [--resnet-examples 1280] [--skip-fast] [--skip-resnet] [--tag TAG]
      [--config.KEY=VALUE ...]

Overrides apply to cifar10_fast.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from step_throughput import ROOT  # noqa: E402
from time_to_accuracy import describe, time_run, write_run_record  # noqa: E402

from fluxdigits import config as configs  # noqa: E402


def project_full_run(partial, experiment) -> dict:
  """Seconds of a full run from a one-epoch run on the first `n` training images."""
  config = configs.validate(configs.load(str(experiment)))
  n = next(int(o.split("=")[1]) for o in partial["overrides"] if o.startswith("--config.dataset.max_train_examples="))
  seconds_per_image = partial["epoch_seconds"][0] / (n // config.batch_size * config.batch_size)
  full_epoch_images = int(50_000 * (1 - config.validation_fraction)) // config.batch_size * config.batch_size
  epoch_s = seconds_per_image * full_epoch_images
  fixed_s = partial["wall_s"] - partial["train_s"]
  return {
    "measured_images": n,
    "images_per_s": 1 / seconds_per_image,
    "projected_epoch_s": epoch_s,
    "fixed_s": fixed_s,
    "projected_epochs": config.num_epochs,
    "projected_run_s": fixed_s + config.num_epochs * epoch_s,
  }


def projected_table(records) -> str:
  rows = [
    "| experiment | measured on | training images/s | projected epoch | projected run |",
    "|---|---|---:|---:|---:|",
  ]
  for r in records:
    rows.append(
      f"| `{pathlib.Path(r['experiment']).stem}` | {r['measured_images']:,} images, 1 epoch | "
      f"{r['images_per_s']:,.1f} | {r['projected_epoch_s'] / 60:,.1f} min | "
      f"{r['projected_run_s'] / 3600:,.1f} h ({r['projected_epochs']} epochs) |"
    )
  return "\n".join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--target", type=float, default=0.90)
  parser.add_argument("--resnet-examples", type=int, default=1280)
  parser.add_argument("--skip-fast", action="store_true")
  parser.add_argument("--skip-resnet", action="store_true")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--tag", default="", help="appended to the results files' names, so runs of one day stay apart")
  args, overrides = parser.parse_known_args()
  if not args.skip_fast:
    fast = time_run(ROOT / "experiments" / "cifar10_fast.py", overrides, args.target)
    print(f"{describe(fast)} -> {write_run_record(fast, args.out, 'time-to-accuracy', args.tag)}")
  if args.skip_resnet:
    return
  experiment = ROOT / "experiments" / "cifar10_resnet.py"
  partial = time_run(
    experiment,
    [
      "--config.num_epochs=1",
      "--config.schedule.warmup_epochs=0.5",
      f"--config.dataset.max_train_examples={args.resnet_examples}",
    ],
  )
  resnet = {**partial, **project_full_run(partial, experiment)}
  path = write_run_record(resnet, args.out, "projected", args.tag)
  print(
    f"{resnet['experiment']}: {resnet['images_per_s']:.1f} training images/s, "
    f"{resnet['projected_epoch_s'] / 60:.0f} min "
    f"per epoch; {resnet['projected_epochs']} epochs projected to {resnet['projected_run_s'] / 3600:.1f} h -> {path}"
  )


if __name__ == "__main__":
  main()
