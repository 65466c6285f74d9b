"""airbench94's own PyTorch code and cifar10_fast, side by side on the shared CIFAR-10 copy, the same epochs each.

cifar10_fast ports airbench94 (Keller Jordan's net and recipe, 94% in ~10 epochs on the original CIFAR-10 and a
GPU) and stays near 91% on the shared copy. If airbench94's own code reaches what cifar10_fast reaches on the same
copy with the same budget, the gap is the data (most of the copy's images went through JPEG); if not, it is the port.

airbench94 is the `airbench` package's `train94`, run unchanged except for what a CPU needs: its net and tensors
stay on the CPU in float32 (`.cuda()` keeps a tensor where it is, `.half()` makes it float32), its CUDA timing
events read the wall clock, and torchvision's `Normalize`, all it takes from torchvision, is a stand-in. Its loader
reads the shared copy onto the CPU, written (to a scratch folder) as the train.pt and test.pt it would otherwise
download.
cifar10_fast runs as `python -m fluxdigits.run experiments/cifar10_fast.py --config.num_epochs=EPOCHS`.
Both test on all 10,000 test images; airbench94 with each of its test-time augmentations (none, mirror, mirror and
translate), cifar10_fast with its own (mirror).

  pip install -e ".[bench]" && python benchmarks/airbench_side_by_side.py --epochs 2
"""

import argparse
import datetime
import os
import pathlib
import sys
import tempfile
import time
import types

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from step_throughput import ROOT, device_name, write_record  # noqa: E402
from time_to_accuracy import time_run  # noqa: E402


def write_airbench_data(folder: pathlib.Path):
  """The shared CIFAR-10 copy (TFDS_DATA_DIR) as airbench's cifar10/{train,test}.pt: uint8 NHWC images and labels."""
  import torch

  from fluxdigits import config as configs, data

  config = configs.defaults()
  config.dataset.name = "cifar10"
  splits = data.load(config)
  (folder / "cifar10").mkdir()
  classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
  for name, split in (("train", splits.train), ("test", splits.test)):
    torch.save(
      {
        "images": torch.from_numpy(split.images),
        "labels": torch.from_numpy(split.labels.astype("int64")),
        "classes": classes,
      },
      folder / "cifar10" / f"{name}.pt",
    )


def airbench_on_cpu():
  """The airbench package, imported with the CPU stand-ins above."""
  import torch

  class WallClockEvent:
    def __init__(self, **_):
      self.time = None

    def record(self):
      self.time = time.perf_counter()

    def elapsed_time(self, end):
      return 1e3 * (end.time - self.time)

  class Normalize:
    def __init__(self, mean, std):
      self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def __call__(self, images):
      return (images - self.mean) / self.std

  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  torch.nn.Module.cuda = lambda self, *args, **kwargs: self
  torch.Tensor.half = lambda self, *args, **kwargs: self.float()
  torch.nn.Module.half = lambda self: self.float()
  torch.cuda.Event, torch.cuda.synchronize = WallClockEvent, lambda *args: None
  transforms = types.SimpleNamespace(Normalize=Normalize)
  sys.modules["torchvision"] = types.SimpleNamespace(transforms=transforms)
  sys.modules["torchvision.transforms"] = transforms
  import airbench

  # Its loader puts the data on device `gpu` (0): the CPU here.
  cpu_torch = {name: getattr(torch, name) for name in dir(torch) if not name.startswith("__")}
  airbench.utils.torch = types.SimpleNamespace(**{**cpu_torch, "device": lambda *_: torch.device("cpu")})
  return airbench


def run_airbench(epochs: float, scratch: pathlib.Path) -> dict:
  write_airbench_data(scratch)
  airbench = airbench_on_cpu()
  os.chdir(scratch)  # its loaders read cifar10/ relative to the working directory
  start = time.perf_counter()
  model = airbench.train94(epochs=epochs)
  train_s = time.perf_counter() - start
  test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
  accuracy = {f"tta_{level}": airbench.evaluate(model, test, tta_level=level) for level in (0, 1, 2)}
  return {"test_accuracy": accuracy, "train_s": train_s}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--epochs", type=int, default=2, help="epochs each system trains (airbench94's default is 9.9)")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--tag", default="")
  args = parser.parse_args()
  fluxdigits_run = time_run(ROOT / "experiments" / "cifar10_fast.py", [f"--config.num_epochs={args.epochs}"])
  print(
    f"cifar10_fast, {args.epochs} epochs: {fluxdigits_run['test_accuracy']:.4f} (mirror) "
    f"in {fluxdigits_run['train_s']:.0f} s"
  )
  with tempfile.TemporaryDirectory() as scratch:
    airbench_run = run_airbench(args.epochs, pathlib.Path(scratch))
  print(f"airbench94, {args.epochs} epochs: {airbench_run['test_accuracy']} in {airbench_run['train_s']:.0f} s")
  record = {
    "device": device_name(),
    "date": datetime.date.today().isoformat(),
    "epochs": args.epochs,
    "data": "the shared CIFAR-10 copy (most images decoded from JPEG)",
    "airbench94": airbench_run,
    "cifar10_fast": fluxdigits_run,
    "source": f"python benchmarks/airbench_side_by_side.py --epochs {args.epochs}",
  }
  print(write_record(record, args.out, "-airbench-side-by-side", args.tag))


if __name__ == "__main__":
  main()
