"""Seed 004's CNN trained by fluxdigits, PyTorch (eager, CPU) and Keras 3 (TensorFlow): images/s and test accuracy.

Same model (conv 32 3x3 VALID + ReLU, 2x2 max-pool, Dense 64 + ReLU, Dense 10), same init scheme
(Glorot-uniform kernels, zero biases), Adam(1e-3, eps 1e-7), same real MNIST data (the first
54,000 training images, pixels scaled to [0, 1]) and epochs. Each (system, batch size) runs in a
fresh process, one after another, so no framework's thread pools compete with another's.
fluxdigits runs through its normal command, `python -m fluxdigits.run experiments/mnist_cnn.py`;
its training time includes the per-epoch validation pass on the 6,000 held-out images that the
other two skip. Compile (or tracing) time is excluded from images/s and reported on its own.

  pip install -e ".[bench]" && python benchmarks/step_throughput.py
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYSTEMS = ("fluxdigits", "pytorch", "keras")
TRAIN_IMAGES = 54_000


def mnist():
  """(train_x, train_y, test_x, test_y): float32 NHWC in [0, 1], int labels; the split fluxdigits trains on."""
  from fluxdigits import config as configs, data

  config = configs.validate(configs.load(str(ROOT / "experiments" / "mnist_cnn.py")))
  dataset = data.load(config)
  assert len(dataset.train) == TRAIN_IMAGES, len(dataset.train)
  scale = lambda images: images.astype(np.float32) / 255.0
  return scale(dataset.train.images), dataset.train.labels, scale(dataset.test.images), dataset.test.labels


def run_fluxdigits(batch_size, epochs, *overrides):
  """The seed CNN's experiment through the command line; `overrides` are more --config.KEY=VALUE arguments."""
  with tempfile.TemporaryDirectory() as workdir:
    subprocess.run(
      [
        sys.executable,
        "-m",
        "fluxdigits.run",
        str(ROOT / "experiments" / "mnist_cnn.py"),
        "--workdir",
        workdir,
        f"--config.batch_size={batch_size}",
        f"--config.num_epochs={epochs}",
        "--config.report=false",
        *overrides,
      ],
      check=True,
      cwd=ROOT,
      stdout=subprocess.DEVNULL,
    )
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
  images = TRAIN_IMAGES // batch_size * batch_size * epochs
  return {
    "train_images_per_s": images / summary["train_seconds"],
    "compile_s": summary["compile_seconds"],
    "test_accuracy": summary["test_accuracy"],
  }


def run_pytorch(batch_size, epochs):
  import torch
  from torch import nn

  torch.manual_seed(0)
  model = nn.Sequential(
    nn.Conv2d(1, 32, 3),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(13 * 13 * 32, 64),
    nn.ReLU(),
    nn.Linear(64, 10),
  )
  for layer in model:
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
      nn.init.xavier_uniform_(layer.weight)
      nn.init.zeros_(layer.bias)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
  train_x, train_y, test_x, test_y = mnist()
  # NCHW, PyTorch's native layout; it only changes the order of Dense 1's input rows.
  train_x, test_x = (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in (train_x, test_x))
  train_y = torch.from_numpy(train_y.astype(np.int64))
  steps = len(train_x) // batch_size
  start = time.perf_counter()
  for _ in range(epochs):
    order = torch.randperm(len(train_x))
    for step in range(steps):
      idx = order[step * batch_size : (step + 1) * batch_size]
      optimizer.zero_grad(set_to_none=True)
      nn.functional.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
      optimizer.step()
  seconds = time.perf_counter() - start
  with torch.no_grad():
    predictions = torch.cat([model(test_x[i : i + 1000]).argmax(1) for i in range(0, len(test_x), 1000)]).numpy()
  return {
    "train_images_per_s": steps * batch_size * epochs / seconds,
    "compile_s": 0.0,
    "test_accuracy": float((predictions == test_y).mean()),
  }


def run_keras(batch_size, epochs):
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import keras

  keras.utils.set_random_seed(0)
  model = keras.Sequential(
    [
      keras.Input((28, 28, 1)),
      keras.layers.Conv2D(32, 3, activation="relu"),
      keras.layers.MaxPooling2D(2),
      keras.layers.Flatten(),
      keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(10),
    ]
  )
  model.compile(
    optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-7),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  train_x, train_y, test_x, test_y = mnist()
  epoch_seconds = []

  class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
      epoch_seconds.append(time.perf_counter() - self.start)

  model.fit(train_x, train_y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[EpochTimer()])
  # The first epoch also traces and compiles the train step: its excess over the later epochs is that compile time.
  compile_s = max(epoch_seconds[0] - float(np.median(epoch_seconds[1:])), 0.0) if epochs > 1 else 0.0
  predictions = model.predict(test_x, batch_size=1000, verbose=0).argmax(1)
  # Keras also trains the last partial batch, so every image counts.
  return {
    "train_images_per_s": len(train_x) * epochs / (sum(epoch_seconds) - compile_s),
    "compile_s": compile_s,
    "test_accuracy": float((predictions == test_y).mean()),
  }


RUNNERS = {"fluxdigits": run_fluxdigits, "pytorch": run_pytorch, "keras": run_keras}


def device_name() -> str:
  """The accelerator JAX will use, else the CPU. Asked of nvidia-smi, not of JAX: a parent process that started JAX
  would take the GPU's memory from the children it times."""
  try:
    gpus = subprocess.run(
      ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    return f"{gpus[0].strip()} (GPU)"
  except (OSError, subprocess.CalledProcessError):
    pass
  model = platform.processor() or "cpu"
  try:
    model = re.search(r"model name\s*:\s*(.*)", pathlib.Path("/proc/cpuinfo").read_text()).group(1)
  except (OSError, AttributeError):
    pass
  return f"{model} {os.cpu_count()} cores (CPU)"


def config_overrides(parser, unknown: list[str]) -> list[str]:
  """The command line's --config.KEY=VALUE arguments as KEY=VALUE; any other unknown argument is an error."""
  if any(not a.startswith("--config.") for a in unknown):
    parser.error(f"unknown arguments {unknown}; config overrides are written --config.KEY=VALUE")
  return [a.removeprefix("--config.") for a in unknown]


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_record(record: dict, out: str, suffix: str = "", tag: str = "") -> pathlib.Path:
  """record as benchmarks/results-style JSON: OUT/DATE-DEVICE[SUFFIX][-TAG].json (a tag keeps runs of one day apart)."""
  out_dir = pathlib.Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / f"{record['date']}-{slug(record['device'])}{suffix}{f'-{tag}' if tag else ''}.json"
  path.write_text(json.dumps(record, indent=2) + "\n")
  return path


def table(results) -> str:
  by_key = {(r["system"], r["batch_size"]): r for r in results}
  rows = [
    "| system | batch | images/s | vs PyTorch | vs Keras | compile s | test accuracy |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for r in results:
    ratio = lambda other: (
      f"{r['train_images_per_s'] / by_key[(other, r['batch_size'])]['train_images_per_s']:.2f}x"
      if (other, r["batch_size"]) in by_key
      else ""
    )
    rows.append(
      f"| {r['system']} | {r['batch_size']} | {r['train_images_per_s']:,.0f} | {ratio('pytorch')} | "
      f"{ratio('keras')} | {r['compile_s']:.1f} | {r['test_accuracy']:.4f} |"
    )
  return "\n".join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--systems", default=",".join(SYSTEMS))
  parser.add_argument("--batch-sizes", default="32,128")
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--one", help=argparse.SUPPRESS)  # SYSTEM:BATCH, run in this process, JSON to stdout
  args = parser.parse_args()
  if args.one:
    system, batch_size = args.one.split(":")
    print(json.dumps(RUNNERS[system](int(batch_size), args.epochs)))
    return

  results = []
  for batch_size in map(int, args.batch_sizes.split(",")):
    for system in args.systems.split(","):
      print(f"{system}, batch {batch_size}, {args.epochs} epochs ...", file=sys.stderr, flush=True)
      out = subprocess.run(
        [sys.executable, __file__, "--one", f"{system}:{batch_size}", "--epochs", str(args.epochs)],
        check=True,
        capture_output=True,
        text=True,
      ).stdout
      result = json.loads(out.strip().splitlines()[-1])
      results.append({"system": system, "batch_size": batch_size, **result})
  device = device_name()
  record = {
    "device": device,
    "epochs": args.epochs,
    "train_images": TRAIN_IMAGES,
    "date": datetime.date.today().isoformat(),
    "results": results,
  }
  path = write_record(record, args.out)
  print(f"{device}, {args.epochs} epochs of {TRAIN_IMAGES:,} MNIST images\n")
  print(table(results))
  print(f"\n-> {path}")


if __name__ == "__main__":
  main()
