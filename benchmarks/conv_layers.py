"""One 3x3 convolution layer, forward and backward, in each formulation fluxdigits has, against PyTorch.

For each layer shape the experiments' models use (batch 128), every formulation computes the output,
the input gradient and the kernel and bias gradients, and takes a tiny SGD step, inside a `lax.scan`
of 10 steps, the way the train loop runs it (XLA:CPU compiles a while loop's body differently from a
program called once): ms per step. PyTorch eager runs the same layer (forward, backward) in NCHW, its
default, and channels_last. Numbers are ms per step of one layer; GFLOP/s counts a direct
convolution's multiply-adds (3 x forward), so Winograd's figure is an effective rate.

  python benchmarks/conv_layers.py                       # every shape
  python benchmarks/conv_layers.py --shapes 0,3          # some of them

Formulations (`fluxdigits/layers.py`): `lax` is `lax.conv_general_dilated` with JAX's own gradient
rules; `conv_stride1` its custom VJP whose three convolutions are canonical forward convolutions;
`im2col` one matmul of the 3x3 patches; `winograd` Winograd F(2x2, 3x3); `onednn` oneDNN's primitives
through XLA's FFI (`fluxdigits/cpu/onednn.py`), where the extension is built.
"""

import argparse
import json
import subprocess
import sys
import time

SHAPES = [  # (height, in channels, out channels, padding): where the models use them
  (26, 32, 32, "VALID"),  # cnn_deep, second conv
  (12, 32, 64, "VALID"),  # cnn_deep, third
  (10, 64, 64, "VALID"),  # cnn_deep, fourth
  (28, 16, 16, "SAME"),  # ResNet-20 on MNIST, first stage
  (14, 32, 32, "SAME"),  # second stage
  (7, 64, 64, "SAME"),  # third stage (odd: Winograd computes 8x8 and crops)
  (32, 16, 16, "SAME"),  # ResNet-20 on CIFAR-10, by stage
  (16, 32, 32, "SAME"),
  (8, 64, 64, "SAME"),
  (32, 64, 64, "SAME"),  # ResNet-18 on CIFAR-10, by stage
  (16, 128, 128, "SAME"),
  (8, 256, 256, "SAME"),
  (4, 512, 512, "SAME"),
]
BATCH, STEPS = 128, 10


def jax_times(height, channels, features, padding) -> dict:
  import jax
  import jax.numpy as jnp
  from jax import lax

  from fluxdigits.cpu import forms, onednn

  x = jax.random.normal(jax.random.key(0), (BATCH, height, height, channels))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, channels, features)) * 0.1
  bias = jnp.zeros((features,))

  def im2col(x, kernel, bias):
    patches = forms._patches(x, 1, padding, with_ones=True)
    weights = jnp.concatenate([kernel.reshape(9 * channels, features), bias[None]])
    return (patches.reshape(-1, patches.shape[-1]) @ weights).reshape(*patches.shape[:3], features)

  formulations = {
    "lax": lambda x, k, b: forms._conv(x, k, padding) + b,
    "conv_stride1": lambda x, k, b: forms.conv_stride1(x, k, b, padding),
    "im2col": im2col,
    "winograd": lambda x, k, b: forms.winograd_conv3x3(x, k, padding) + b,
  }
  if onednn.available():
    formulations["onednn"] = lambda x, k, b: onednn.conv(x, k, 1, padding) + b
  reference = formulations["lax"](x, kernel, bias)
  times = {}
  for name, layer in formulations.items():
    gradient = jax.grad(lambda x, k, b: jnp.vdot(layer(x, k, b), jnp.ones_like(reference)), (0, 1, 2))

    def step(variables, _):
      return jax.tree.map(lambda v, g: v - 1e-6 * g, variables, gradient(*variables)), None

    steps = jax.jit(lambda variables: lax.scan(step, variables, None, length=STEPS)[0])
    jax.block_until_ready(steps((x, kernel, bias)))
    start = time.perf_counter()
    jax.block_until_ready(steps((x, kernel, bias)))
    times[name] = (time.perf_counter() - start) / STEPS * 1e3
  return times


def torch_times(height, channels, features, padding) -> dict:
  import torch

  conv = torch.nn.Conv2d(channels, features, 3, padding=1 if padding == "SAME" else 0)
  times = {}
  for layout in ("nchw", "channels_last"):
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(BATCH, channels, height, height).to(memory_format=memory_format).requires_grad_()
    layer = conv.to(memory_format=memory_format)
    for i in range(STEPS + 3):
      if i == 3:
        start = time.perf_counter()
      y = layer(x)
      y.backward(torch.ones_like(y))
    times[f"pytorch {layout}"] = (time.perf_counter() - start) / STEPS * 1e3
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", default="all", help="comma-separated indices of SHAPES, or 'all'")
  parser.add_argument("--one", help=argparse.SUPPRESS)  # SYSTEM:SHAPE, in this process, a dict to stdout
  args = parser.parse_args()
  if args.one:
    system, index = args.one.split(":")
    print(json.dumps({"jax": jax_times, "torch": torch_times}[system](*SHAPES[int(index)])))
    return
  indices = range(len(SHAPES)) if args.shapes == "all" else map(int, args.shapes.split(","))
  columns = ("lax", "conv_stride1", "im2col", "winograd", "onednn", "pytorch nchw", "pytorch channels_last")
  print("| layer (batch 128) | " + " | ".join(columns) + " |")
  print("|---|" + "---:|" * len(columns))
  for index in indices:
    height, channels, features, padding = SHAPES[index]
    times = {}
    for system in ("jax", "torch"):  # separate processes: no thread pool competes with the other's
      out = subprocess.run(
        [sys.executable, __file__, "--one", f"{system}:{index}"], check=True, capture_output=True, text=True
      ).stdout
      times.update(json.loads(out.strip().splitlines()[-1]))
    out_size = height if padding == "SAME" else height - 2
    flops = 3 * 2 * BATCH * out_size**2 * 9 * channels * features
    cells = [f"{times[k]:.1f} ({flops / times[k] / 1e6:.0f})" if k in times else "" for k in columns]
    print(f"| {height}x{height}, {channels}->{features} {padding} | " + " | ".join(cells) + " |", flush=True)
  print("\nms per forward-and-backward step (effective GFLOP/s in brackets)")


if __name__ == "__main__":
  main()
