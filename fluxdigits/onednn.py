"""Convolutions on oneDNN's CPU primitives, called from XLA through its FFI (the extension fluxdigits/onednn_conv.cc).

`available()` says whether the extension was built and loads; `conv` is a float32 NHWC x HWIO convolution with its
gradients (a custom_vjp over three FFI targets), so jit, grad, vmap (member by member) and shard_map keep working.
FLUXDIGITS_ONEDNN=0 turns it off; without it the layers use their XLA formulations. With it, a CPU run keeps one JAX
device (mesh.claim_cpu_cores): oneDNN's OpenMP threads use every core within each convolution.
"""

import contextlib
import ctypes
import functools
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fluxdigits import mesh

DISABLE_ENV = "FLUXDIGITS_ONEDNN"
TARGETS = ("fluxdigits_conv_forward", "fluxdigits_conv_backward_data", "fluxdigits_conv_backward_kernel")


def extension() -> pathlib.Path | None:
  """The built extension beside this file (setuptools names it _onednn_conv.<abi>.so), or None."""
  return next(iter(sorted(pathlib.Path(__file__).parent.glob("_onednn_conv*.so"))), None)


@functools.cache
def available() -> bool:
  """Whether the extension is built, loads with its oneDNN, and is wanted: then its FFI targets are registered."""
  path = extension()
  # Several CPU devices calling oneDNN's all-core OpenMP team at once stall XLA's collectives (NOTES, "oneDNN").
  if os.environ.get(DISABLE_ENV, "1") == "0" or path is None or (mesh.user_cpu_device_count() or 1) > 1:
    return False
  try:
    # oneDNN's wheel puts libdnnl in the environment's lib/; loaded first, it satisfies the extension's link to it.
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
      candidate = pathlib.Path(prefix) / "lib" / "libdnnl.so.3"
      if candidate.is_file():
        ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
        break
    library = ctypes.CDLL(str(path))
  except OSError:
    return False
  for target in TARGETS:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")
  return True


_suspended = False


@contextlib.contextmanager
def suspended():
  """Models traced inside use XLA's convolutions: an exported model must run where this extension is not."""
  global _suspended
  previous, _suspended = _suspended, True
  try:
    yield
  finally:
    _suspended = previous


def in_use() -> bool:
  """Whether convolutions traced now run on oneDNN: it is available and not suspended."""
  return not _suspended and available()


def describe() -> str:
  return "oneDNN" if available() else "XLA"


def _padding(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
  """(output size, padding before) as lax pads: SAME puts the odd pixel after."""
  if padding == "VALID":
    return (size - window) // stride + 1, 0
  out = -(-size // stride)
  return out, max((out - 1) * stride + window - size, 0) // 2


def _call(target, shape, a, b, stride, pad_top, pad_left):
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="sequential")(
      a, b, stride=np.int64(stride), pad_top=np.int64(pad_top), pad_left=np.int64(pad_left))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, kernel, stride: int, padding: str):
  """The values of lax.conv_general_dilated(x, kernel, (stride, stride), padding) for NHWC x and HWIO kernel."""
  (out_h, top), (out_w, left) = (_padding(x.shape[i], kernel.shape[i - 1], stride, padding) for i in (1, 2))
  return _call(TARGETS[0], (x.shape[0], out_h, out_w, kernel.shape[3]), x, kernel, stride, top, left)


def _conv_forward(x, kernel, stride, padding):
  return conv(x, kernel, stride, padding), (x, kernel)


def _conv_backward(stride, padding, residuals, grad):
  x, kernel = residuals
  top, left = (_padding(x.shape[i], kernel.shape[i - 1], stride, padding)[1] for i in (1, 2))
  dx = _call(TARGETS[1], x.shape, grad, kernel, stride, top, left)
  dkernel = _call(TARGETS[2], kernel.shape, x, grad, stride, top, left)
  return dx, dkernel


conv.defvjp(_conv_forward, _conv_backward)
