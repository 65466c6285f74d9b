"""Every model family the experiments use, trained by fluxdigits and by PyTorch on the same CPU (or GPU): PyTorch
eager in its default NCHW layout, eager in channels_last (its documented CPU layout for convolutions) and
torch.compile'd in channels_last (--systems picks; the ratio is against the fastest).

For each row (model, dataset, batch size) both systems train the same architecture from the same
init family (Glorot-uniform for the Keras-style digit models; LeCun-normal convolutions and Dense
for the ResNets, BatchNorm scale 1 and bias 0, momentum 0.9, epsilon 1e-5) with the experiment's
optimizer at its peak rate held constant (fluxdigits also with the experiment's `microbatches`: the
same gradient of the same batch, computed in slices), on the same real images already in memory (standardised
as fluxdigits standardises them), in the same order (fluxdigits' `data.train_batches`), without
augmentation or label smoothing. Each system runs WARM-UP steps, then TIMED steps; images/s counts
the timed steps only. fluxdigits runs its own compiled train chunk (`loop.train_calls`: the
batch gathered on the device, the weights' moving average updated every step), compiled ahead of
time; its compile time is reported on its own. After the same number of steps both evaluate their
raw weights (BatchNorm with running statistics) on the whole test split. Each (system, row) runs in
a fresh process, one after another, so no framework's thread pool competes with another's; the two
systems alternate --repeats times (3) and each keeps its median images/s (all runs are in the JSON).

  pip install -e ".[bench]" && python benchmarks/model_throughput.py
"""

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from step_throughput import config_overrides, device_name, write_record  # noqa: E402  (one home for the machine's name and the JSON)


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  experiment: str  # the experiments/ file whose model, optimizer and peak rate the row uses
  batch_size: int
  warmup_steps: int
  timed_steps: int
  dataset: str = ""  # '' keeps the experiment's dataset
  depth: int = 0  # 0 keeps the experiment's ResNet depth
  overrides: tuple = ()  # KEY=VALUE config overrides from the command line, e.g. microbatches=1 on a GPU


ROWS = [
  Row("mlp", "mnist_mlp", 32, 200, 1500),
  Row("mlp", "mnist_mlp", 128, 100, 400),
  Row("cnn", "mnist_cnn", 32, 200, 1500),
  Row("cnn", "mnist_cnn", 128, 50, 400),
  Row("cnn_deep", "mnist_cnn_deep", 128, 10, 50),
  Row("resnet20", "mnist_resnet", 128, 4, 16),
  Row("resnet20", "mnist_resnet", 128, 4, 16, dataset="cifar10", depth=20),
  Row("resnet18", "cifar10_resnet", 128, 2, 6, dataset="cifar10", depth=18),
]
# PyTorch as the careful user runs it too: channels_last is its documented CPU layout for convolutions.
PEERS = {
  "pytorch": "PyTorch eager",
  "pytorch_channels_last": "PyTorch eager, channels_last",
  "pytorch_compiled": "torch.compile, channels_last",
}
SYSTEMS = ("fluxdigits", *PEERS)


def row_config(row: Row):
  from fluxdigits import config as configs

  config = configs.load(str(ROOT / "experiments" / f"{row.experiment}.py"))
  config.batch_size = row.batch_size
  config.augment.name = "none"
  config.label_smoothing = 0.0
  config.schedule.name = "constant"
  config.validation_fraction = 0.0
  config.patience = 0
  config.ema_decay = 0.999  # the framework's default cost; the raw weights are evaluated below
  if row.dataset:
    config.dataset.name = row.dataset
    config.dataset.standardize = True  # the rows that change dataset are CIFAR-10's, standardised as its experiments do
  if row.depth:
    config.model.kwargs.depth = row.depth
  return configs.validate(configs.override(config, list(row.overrides)))


def order(row: Row, n: int) -> np.ndarray:
  """(warm-up + timed steps, batch) indices: fluxdigits' epoch orders, epoch after epoch."""
  steps = row.warmup_steps + row.timed_steps
  from fluxdigits import data

  epochs = -(-steps // (n // row.batch_size))
  return np.concatenate([data.train_batches(0, epoch, n, row.batch_size) for epoch in range(1, epochs + 1)])[:steps]


def run_fluxdigits(row: Row) -> dict:
  import jax

  from fluxdigits import augment, cpu, data, loop, mesh as meshes, optim, population, registry, steps

  config = row_config(row)
  dataset = data.load(config)
  batches = order(row, len(dataset.train))
  model = registry.create(config, len(dataset.class_names))
  mesh = loop.data_mesh_for(config, model, cpu.calls_onednn(model, dataset.train.images.shape[1:]))
  state = meshes.replicate(
    steps.create_states(
      [config], model, dataset.train.images.shape[1:], optim.create(config, len(dataset.train) // row.batch_size)
    ),
    mesh,
  )
  preprocess = steps.preprocess_for(config, dataset)
  chunk = loop.train_calls(config, model, len(dataset.class_names), preprocess, augment.make(config))
  images, labels = meshes.replicate((dataset.train.images, dataset.train.labels), mesh)
  hyperparams, active = meshes.replicate((steps.member_hyperparams([config]), np.ones(1, bool)), mesh)
  # Calls of equal length, as the training loop's calls of about a second each.
  length = np.gcd(row.warmup_steps, row.timed_steps)
  count = meshes.replicate(np.int32(length), mesh)
  start = time.perf_counter()
  compiled = chunk.lower(
    state, images, labels, meshes.shard_batches(batches[None, :length], mesh), hyperparams, active, count
  ).compile()
  compile_s = time.perf_counter() - start

  def train_steps(state, steps):
    for i in range(0, len(steps), length):
      state, sums = compiled(
        state, images, labels, meshes.shard_batches(steps[None, i : i + length], mesh), hyperparams, active, count
      )
    jax.block_until_ready(sums)
    return state

  state = train_steps(state, batches[: row.warmup_steps])
  start = time.perf_counter()
  state = train_steps(state, batches[row.warmup_steps :])
  seconds = time.perf_counter() - start
  predict = steps.make_predict(model.apply, preprocess)
  logits = steps.predict_split(
    predict,
    population.member((state.params, state.batch_stats), 0),
    meshes.replicate(dataset.test.images, mesh),
    len(dataset.test),
    config.eval_batch_size,
    mesh,
  )
  return {
    "train_images_per_s": row.timed_steps * row.batch_size / seconds,
    "compile_s": compile_s,
    "microbatches": config.microbatches,
    "test_accuracy": float((logits.argmax(-1) == dataset.test.labels).mean()),
  }


def pytorch_model(config, channels: int, image_size: int):
  import torch
  from torch import nn

  def keras_init(model):
    for layer in model.modules():
      if isinstance(layer, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return model

  name = config.model.name
  if name == "mlp":
    return keras_init(
      nn.Sequential(
        nn.Flatten(),
        nn.Linear(image_size**2 * channels, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
      )
    )
  if name == "cnn":
    side = (image_size - 2) // 2
    return keras_init(
      nn.Sequential(
        nn.Conv2d(channels, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(side * side * 32, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
      )
    )
  if name == "cnn_deep":
    rate = config.model.dropout_rate
    side = ((image_size - 4) // 2 - 4) // 2
    return keras_init(
      nn.Sequential(
        nn.Conv2d(channels, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(rate),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(rate),
        # NCHW flattens channel-first; fluxdigits flattens NHWC. Same function, rows of Dense 1 permuted.
        nn.Flatten(),
        nn.Linear(side * side * 64, 128),
        nn.ReLU(),
        nn.Dropout(2 * rate),
        nn.Linear(128, 10),
      )
    )

  def conv_bn(cin, cout, kernel, stride):
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)]

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.residual = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3, 1))
      self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
      return torch.relu(self.residual(x) + self.shortcut(x))

  widths, blocks = {20: ((16, 32, 64), 3), 18: ((64, 128, 256, 512), 2)}[config.model.kwargs.depth]
  layers = [*conv_bn(channels, widths[0], 3, 1), nn.ReLU()]
  cin = widths[0]
  for stage, width in enumerate(widths):
    for block in range(blocks):
      layers.append(Block(cin, width, 2 if stage > 0 and block == 0 else 1))
      cin = width
  model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))
  for layer in model.modules():  # flax's defaults: LeCun-normal kernels (truncated at 2 std), zero Dense bias
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
      std = layer.weight[0].numel() ** -0.5 / 0.87962566103423978  # flax's correction for the truncation
      nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    if isinstance(layer, nn.Linear):
      nn.init.zeros_(layer.bias)
  return model


def pytorch_optimizer(config, model):
  import torch

  o = config.optimizer
  # fluxdigits decays kernels only (not biases or BatchNorm scales), as an L2 gradient term.
  groups = [
    {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": o.weight_decay},
    {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
  ]
  if o.name == "adam":
    return torch.optim.Adam(groups, lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  if o.name == "momentum":
    return torch.optim.SGD(groups, lr=o.learning_rate, momentum=o.momentum, nesterov=o.nesterov)
  raise ValueError(o.name)


def run_pytorch(row: Row, channels_last: bool = False, compiled: bool = False) -> dict:
  import torch

  from fluxdigits import data

  torch.manual_seed(0)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  config = row_config(row)
  dataset = data.load(config)
  batches = order(row, len(dataset.train))

  def standardised_nchw(images):
    x = (images.astype(np.float32) / 255.0 - np.asarray(dataset.mean, np.float32)) / np.asarray(dataset.std, np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)

  train_x, test_x = standardised_nchw(dataset.train.images), standardised_nchw(dataset.test.images)
  train_y = torch.from_numpy(dataset.train.labels.astype(np.int64)).to(device)
  layout = torch.channels_last if channels_last else torch.contiguous_format
  model = pytorch_model(config, train_x.shape[1], train_x.shape[2]).to(device, memory_format=layout)
  optimizer = pytorch_optimizer(config, model)
  forward = torch.compile(model) if compiled else model  # compiled in the warm-up steps
  batches = torch.from_numpy(batches.astype(np.int64)).to(device)

  def train_steps(steps):
    model.train()
    for idx in steps:
      optimizer.zero_grad(set_to_none=True)
      x = train_x[idx].contiguous(memory_format=layout)
      torch.nn.functional.cross_entropy(forward(x), train_y[idx]).backward()
      optimizer.step()
    if device.type == "cuda":
      torch.cuda.synchronize()  # a GPU's steps are queued: the clock stops when they are done

  train_steps(batches[: row.warmup_steps])
  start = time.perf_counter()
  train_steps(batches[row.warmup_steps :])
  seconds = time.perf_counter() - start
  model.eval()
  with torch.no_grad():
    test_batches = (test_x[i : i + 500].contiguous(memory_format=layout) for i in range(0, len(test_x), 500))
    predictions = torch.cat([model(x).argmax(1) for x in test_batches]).cpu().numpy()
  return {
    "train_images_per_s": row.timed_steps * row.batch_size / seconds,
    "compile_s": 0.0,
    "test_accuracy": float((predictions == dataset.test.labels).mean()),
  }


RUNNERS = {
  "fluxdigits": run_fluxdigits,
  "pytorch": run_pytorch,
  "pytorch_channels_last": functools.partial(run_pytorch, channels_last=True),
  "pytorch_compiled": functools.partial(run_pytorch, channels_last=True, compiled=True),
}


def adapted(row: Row, steps_scale: int, overrides: list[str]) -> Row:
  """The row with steps_scale times the steps (an accelerator's step takes milliseconds: CPU counts time too little)
  and the command line's config overrides."""
  return dataclasses.replace(
    row,
    warmup_steps=row.warmup_steps * steps_scale,
    timed_steps=row.timed_steps * steps_scale,
    overrides=tuple(overrides),
  )


def label(row: Row) -> str:
  return f"{row.name} {row.dataset or 'mnist'} bs{row.batch_size}"


def table(results) -> str:
  """One row per result; a column per PyTorch peer every result has, the ratio against the fastest of them."""
  peers = [peer for peer in PEERS if all(peer in r for r in results)]
  lines = [
    "| model | data | batch | steps timed | fluxdigits images/s | "
    + "".join(f"{PEERS[peer]} images/s | " for peer in peers)
    + "ratio to the fastest | compile s | fluxdigits accuracy | PyTorch accuracy |",
    "|---|---|---:|---:|---:|" + "---:|" * len(peers) + "---:|---:|---:|---:|",
  ]
  for r in results:
    f, speeds = r["fluxdigits"], [r[peer]["train_images_per_s"] for peer in peers]
    lines.append(
      f"| {r['model']} | {r['dataset']} | {r['batch_size']} | {r['timed_steps']} | {f['train_images_per_s']:,.0f} | "
      + "".join(f"{speed:,.0f} | " for speed in speeds)
      + f"{f['train_images_per_s'] / max(speeds):.2f}x | {f['compile_s']:.1f} | {f['test_accuracy']:.4f} | "
      f"{r['pytorch']['test_accuracy']:.4f} |"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", default="all", help="comma-separated row numbers (0-based) of ROWS, or 'all'")
  parser.add_argument(
    "--repeats", type=int, default=3, help="runs of each system per row, alternating; the median is kept"
  )
  parser.add_argument(
    "--steps-scale", type=int, default=1, help="multiply each row's warm-up and timed steps (GPU: 20)"
  )
  parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--tag", default="", help="appended to the results file's name, so runs of one day stay apart")
  parser.add_argument("--one", help=argparse.SUPPRESS)  # SYSTEM:ROW, run in this process, JSON to stdout
  args, unknown = parser.parse_known_args()
  overrides = config_overrides(parser, unknown)
  if args.one:
    from fluxdigits import cpu

    cpu.set_up()  # before JAX starts, as fluxdigits' command lines do
    system, index = args.one.split(":")
    print(json.dumps(RUNNERS[system](adapted(ROWS[int(index)], args.steps_scale, overrides))))
    return

  systems = args.systems.split(",")
  if not {"fluxdigits", "pytorch"} <= set(systems) <= set(SYSTEMS):
    parser.error(f"--systems {args.systems!r}: fluxdigits, pytorch and any of {', '.join(SYSTEMS[2:])}")
  indices = range(len(ROWS)) if args.rows == "all" else map(int, args.rows.split(","))
  results = []
  for index in indices:
    row = adapted(ROWS[index], args.steps_scale, overrides)
    result = {
      "model": row.name,
      "dataset": row.dataset or "mnist",
      "experiment": row.experiment,
      "batch_size": row.batch_size,
      "warmup_steps": row.warmup_steps,
      "timed_steps": row.timed_steps,
    }
    runs = {system: [] for system in systems}
    # The systems alternate, so that a drift of the machine's speed (20-40% over an hour here) falls on both.
    for repeat in range(args.repeats):
      for system in systems:
        print(
          f"{system}: {label(row)}, {row.warmup_steps} + {row.timed_steps} steps, "
          f"run {repeat + 1} of {args.repeats} ...",
          file=sys.stderr,
          flush=True,
        )
        out = subprocess.run(
          [sys.executable, __file__, "--one", f"{system}:{index}", "--steps-scale", str(args.steps_scale), *unknown],
          check=True,
          capture_output=True,
          text=True,
          cwd=ROOT,
        ).stdout
        runs[system].append(json.loads(out.strip().splitlines()[-1]))
    for system in systems:
      speeds = [run["train_images_per_s"] for run in runs[system]]
      result[system] = {**runs[system][0], "train_images_per_s": float(np.median(speeds)), "runs_images_per_s": speeds}
    results.append(result)
    print(table([result]).splitlines()[-1], file=sys.stderr, flush=True)
  device = device_name()
  record = {
    "device": device,
    "date": datetime.date.today().isoformat(),
    "repeats": args.repeats,
    "steps_scale": args.steps_scale,
    "overrides": overrides,
    # A peer's speed is its release's: the record names the ones measured.
    "versions": {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "torch")},
    "results": results,
  }
  path = write_record(record, args.out, "-model-throughput", args.tag)
  print(f"{device}\n\n{table(results)}\n\n-> {path}")


if __name__ == "__main__":
  main()
