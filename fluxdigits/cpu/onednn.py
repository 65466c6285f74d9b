"""oneDNN's CPU primitives, called from XLA through its FFI (the extension fluxdigits/cpu/onednn_kernels.cc).

`available()` says whether the extension was built and loads; `conv` is a float32 or bfloat16 NHWC x HWIO
convolution and `batch_norm` a training-mode batch normalisation with an optional fused ReLU, each with its
gradients (a custom_vjp over FFI targets), so jit, grad, vmap (member by member) and shard_map keep working.
FLUXDIGITS_ONEDNN=0 turns it off; without it the layers use their XLA formulations. A model that calls it keeps to one
JAX device (cpu.calls_onednn): oneDNN's OpenMP threads use every core within each call.
"""

import ctypes
import functools
import os
import pathlib
import sys

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from fluxdigits.cpu import cores

DISABLE_ENV = "FLUXDIGITS_ONEDNN"
TARGETS = (
  "fluxdigits_conv_forward",
  "fluxdigits_conv_backward_data",
  "fluxdigits_conv_backward_kernel",
  "fluxdigits_batch_norm_forward",
  "fluxdigits_batch_norm_backward",
)


def extension() -> pathlib.Path | None:
  """The built extension beside this file (setuptools names it _onednn_kernels.<abi>.so), or None."""
  return next(iter(sorted(pathlib.Path(__file__).parent.glob("_onednn_kernels*.so"))), None)


@functools.cache
def _library() -> ctypes.CDLL | None:
  """The extension, loaded with its oneDNN and its FFI targets registered, when it is built and wanted."""
  path = extension()
  # Several CPU devices calling oneDNN's all-core OpenMP team at once stall XLA's collectives (NOTES, "oneDNN").
  if os.environ.get(DISABLE_ENV, "1") == "0" or path is None or (cores.user_device_count() or 1) > 1:
    return None
  try:
    # oneDNN's wheel puts libdnnl in the environment's lib/; loaded first, it satisfies the extension's link to it.
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
      candidate = pathlib.Path(prefix) / "lib" / "libdnnl.so.3"
      if candidate.is_file():
        ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
        break
    library = ctypes.CDLL(str(path))
  except OSError:
    return None
  for target in TARGETS:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")
  workspace_bytes = library.fluxdigits_batch_norm_workspace_bytes
  workspace_bytes.argtypes, workspace_bytes.restype = [ctypes.c_int64] * 4 + [ctypes.c_float], ctypes.c_int64
  return library


def available() -> bool:
  """Whether the extension is built, loads with its oneDNN, and is wanted: then its FFI targets are registered."""
  return _library() is not None


def called_in(jaxpr) -> bool:
  """Whether `jaxpr`, or one nested in its equations (a custom_vjp's, a jit's, a loop's), calls an FFI target of
  this extension."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "ffi_call" and eqn.params["target_name"] in TARGETS:
      return True
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr's, or a Jaxpr itself
        if isinstance(inner, jax.extend.core.Jaxpr) and called_in(inner):
          return True
  return False


def _padding(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
  """(output size, padding before) as lax pads: SAME puts the odd pixel after."""
  if padding == "VALID":
    return (size - window) // stride + 1, 0
  out = -(-size // stride)
  return out, max((out - 1) * stride + window - size, 0) // 2


@functools.cache
def native_bf16() -> bool:
  """Whether this CPU has bfloat16 instructions (AVX512-BF16, AMX), where oneDNN's bf16 convolutions beat float32's."""
  return available() and bool(_library().fluxdigits_native_bf16())


def _call(target, shape, a, b, stride, pad_top, pad_left):
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, a.dtype), vmap_method="sequential")(
    a, b, stride=np.int64(stride), pad_top=np.int64(pad_top), pad_left=np.int64(pad_left)
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, kernel, stride: int, padding: str):
  """The values of lax.conv_general_dilated(x, kernel, (stride, stride), padding) for NHWC x and HWIO kernel, both
  float32 or both bfloat16."""
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


def _norm_call(target, outputs, *arrays, epsilon, relu):
  return jax.ffi.ffi_call(target, outputs, vmap_method="sequential")(*arrays, epsilon=np.float32(epsilon), relu=relu)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm(x, scale, shift, epsilon: float, relu: bool):
  """(y, mean, variance): NHWC float32 x normalised by its own mean and (biased) variance over N, H and W, times
  scale plus shift, through a ReLU when `relu`. The statistics are outputs for the running averages only: gradients
  do not flow back through them."""
  return _batch_norm_forward(x, scale, shift, epsilon, relu)[0]


def _batch_norm_forward(x, scale, shift, epsilon, relu):
  n, h, w, c = x.shape
  # The fused ReLU keeps a mask for the backward pass, in a buffer of the size oneDNN asks for.
  workspace = _library().fluxdigits_batch_norm_workspace_bytes(n, h, w, c, epsilon) if relu else 1
  channel = jax.ShapeDtypeStruct((c,), jnp.float32)
  outputs = (
    jax.ShapeDtypeStruct(x.shape, jnp.float32),
    channel,
    channel,
    jax.ShapeDtypeStruct((workspace,), jnp.uint8),
  )
  y, mean, variance, mask = _norm_call(TARGETS[3], outputs, x, scale, shift, epsilon=epsilon, relu=relu)
  return (y, mean, variance), (x, scale, mean, variance, mask)


def _batch_norm_backward(epsilon, relu, residuals, grads):
  x, scale, mean, variance, mask = residuals
  outputs = (jax.ShapeDtypeStruct(x.shape, jnp.float32), *[jax.ShapeDtypeStruct(scale.shape, jnp.float32)] * 2)
  return _norm_call(TARGETS[4], outputs, x, grads[0], scale, mean, variance, mask, epsilon=epsilon, relu=relu)


batch_norm.defvjp(_batch_norm_forward, _batch_norm_backward)
