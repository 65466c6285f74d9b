"""The forms a CPU runs fastest, of what lax computes: 3x3 and 1x1 convolutions, 2x2 max-pools, batch
normalisation, dropout masks. Each picks its CPU formulation there (oneDNN's where the extension is built:
onednn.py) and lax's own on a GPU or TPU, or inside canonical(): what an exported model holds. benchmarks/NOTES.md
holds the measurements behind each choice.
"""

import contextlib
import contextvars
import functools
import math

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
from jax import lax

from fluxdigits import jax_private
from fluxdigits.cpu import onednn

_canonical = contextvars.ContextVar("fluxdigits_canonical_layers", default=False)


@contextlib.contextmanager
def canonical():
  """Models traced inside use lax's convolution, reduce_window and flax's BatchNorm formulas: an exported file's
  graph holds Conv, MaxPool and its normalisation as exporters and runtimes know them, without this extension."""
  token = _canonical.set(True)
  try:
    yield
  finally:
    _canonical.reset(token)


def _window_quarters(x):
  """The four (n, h/2, w/2, c) arrays holding each 2x2 window's top-left, top-right, bottom-left, bottom-right."""
  n, h, w, c = x.shape
  windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
  return [windows[:, :, a, :, b] for a in range(2) for b in range(2)]


@jax.custom_vjp
def _max_pool_2x2_even(x):
  a, b, c, d = _window_quarters(x)
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _max_pool_2x2_forward(x):
  y = _max_pool_2x2_even(x)
  return y, (x, y)


def _max_pool_2x2_backward(residuals, grad):
  # The whole gradient goes to the first maximum of each window, as in PyTorch and TensorFlow. JAX's
  # own rule for max splits it between ties, which costs a count and a division per window.
  x, y = residuals
  taken = jnp.zeros(y.shape, bool)
  quarters = []
  for quarter in _window_quarters(x):
    first = (quarter == y) & ~taken
    taken = taken | first
    quarters.append(jnp.where(first, grad, jnp.zeros_like(grad)))
  n, h, w, c = x.shape
  top_left, top_right, bottom_left, bottom_right = quarters
  rows = [jnp.stack([top_left, top_right], axis=3), jnp.stack([bottom_left, bottom_right], axis=3)]
  return (jnp.stack(rows, axis=2).reshape(n, h, w, c),)


_max_pool_2x2_even.defvjp(_max_pool_2x2_forward, _max_pool_2x2_backward)


def max_pool_2x2(x):
  """2x2 max-pool, stride 2, VALID: the values of nn.max_pool.

  Its gradient is one elementwise select per input, which XLA:CPU runs much faster than the select-and-scatter of
  nn.max_pool's gradient or a reshape-and-max's (benchmarks/NOTES.md).
  """
  if _canonical.get():
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  n, h, w, c = x.shape
  return _max_pool_2x2_even(x[:, : h // 2 * 2, : w // 2 * 2])


def _patches(x, strides, padding, with_ones):
  """(n, out_h, out_w, 9 * channels [+ 1]): the 3x3 windows of x, tap-major, and a channel of ones if asked."""
  n, h, w, _ = x.shape
  s = strides
  if padding == "SAME":
    out_h, out_w = -(-h // s), -(-w // s)
    pad_h, pad_w = max((out_h - 1) * s + 3 - h, 0), max((out_w - 1) * s + 3 - w, 0)
    x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  else:
    out_h, out_w = (h - 3) // s + 1, (w - 3) // s + 1
  patches = [x[:, i : i + (out_h - 1) * s + 1 : s, j : j + (out_w - 1) * s + 1 : s] for i in range(3) for j in range(3)]
  if with_ones:
    patches.append(jnp.ones((n, out_h, out_w, 1), x.dtype))
  return jnp.concatenate(patches, axis=-1)


def _conv(x, kernel, padding, strides=1):
  return lax.conv_general_dilated(x, kernel, (strides, strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def lax_ops() -> bool:
  """The layers below are formulated for XLA:CPU. On a GPU or TPU they use lax's own convolution, which cuDNN and
  the TPU's convolution units implement, compiles faster, and is as fast there (benchmarks/NOTES.md, "On a GPU");
  inside canonical() too."""
  return jax.default_backend() != "cpu" or _canonical.get()


def _onednn_runs(x) -> bool:
  """Whether a CPU convolution of `x` runs on oneDNN: the extension is there (onednn.available), x is float32 (or
  bfloat16 on a CPU with bf16 instructions), and has the channels where oneDNN's kernels beat the patches' matmul (a
  first layer keeps the matmul)."""
  wanted_dtype = x.dtype == jnp.float32 or (x.dtype == jnp.bfloat16 and onednn.native_bf16())
  return wanted_dtype and x.shape[-1] >= CONV_MIN_CHANNELS and onednn.available()


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_stride1(x, kernel, bias, padding):
  """A stride-1 3x3 convolution whose forward pass and both gradients are XLA forward convolutions."""
  y = _conv(x, kernel, padding)
  return y if bias is None else y + bias


def _conv_stride1_forward(x, kernel, bias, padding):
  return conv_stride1(x, kernel, bias, padding), (x, kernel, bias)


def _conv_stride1_backward(padding, residuals, grad):
  # Inside a while loop (the train loop's lax.scan) XLA:CPU leaves the convolutions of JAX's own
  # gradient rules in their non-canonical dimension orders and runs them far slower than the same
  # program unrolled, where they are canonicalised. Here both gradients are written as canonical
  # (NHWC, HWIO) forward convolutions: the input gradient with the flipped kernel, the kernel
  # gradient with batch and channels swapped (the output gradient as a kernel over the input).
  x, kernel, bias = residuals
  flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
  input_grad = _conv(grad, flipped, "SAME" if padding == "SAME" else ((2, 2), (2, 2)))
  kernel_grad = _conv(
    x.transpose(3, 1, 2, 0), grad.transpose(1, 2, 0, 3), ((1, 1), (1, 1)) if padding == "SAME" else "VALID"
  ).transpose(1, 2, 0, 3)
  return input_grad, kernel_grad, None if bias is None else grad.sum((0, 1, 2))


conv_stride1.defvjp(_conv_stride1_forward, _conv_stride1_backward)

# Winograd F(2x2, 3x3) (Lavin and Gray 2015): input tiles of 4x4 map to outputs of 2x2 through
# V = B^T d B, M = V U (U = G g G^T, one matmul per tile position), Y = A^T M A.
_WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def _combine(matrix, arrays):
  """[sum_j matrix[i, j] * arrays[j] for each row i], written as adds and negations where the entry is +-1."""
  rows = []
  for coefficients in matrix:
    terms = [a if c == 1 else -a if c == -1 else a * c for c, a in zip(coefficients, arrays) if c != 0]
    rows.append(functools.reduce(jnp.add, terms))
  return rows


def _tile_parts(blocks, axis: int):
  """The four parts k = 0..3 of each 4-pixel tile along `axis`, where the padded image is split into
  (blocks, 2) at `axis`: part s of tile t is position s of block t, part 2 + s position s of block t + 1."""
  tiles = blocks.shape[axis] - 1
  return [
    lax.index_in_dim(lax.slice_in_dim(blocks, start, start + tiles, axis=axis), s, axis + 1, keepdims=False)
    for start in (0, 1)
    for s in (0, 1)
  ]


def _overlap_add(tile_parts, axis: int):
  """The transpose of _tile_parts, merged back: positions 2t + s of the padded image along `axis`
  receive part s of tile t plus part 2 + s of tile t - 1."""
  pad = lambda a, before: jnp.pad(a, [(before, 1 - before) if d == axis else (0, 0) for d in range(a.ndim)])
  phases = [pad(tile_parts[s], 0) + pad(tile_parts[2 + s], 1) for s in (0, 1)]
  stacked = jnp.stack(phases, axis=axis + 1)
  return stacked.reshape(*stacked.shape[:axis], -1, *stacked.shape[axis + 2 :])


def _winograd_input_tiles(x, tiles_h: int, tiles_w: int):
  """V = B^T d B for every 4x4 tile d (stride 2) of the padded `x`: (16, tiles, channels)."""
  n, _, _, channels = x.shape
  blocks = x.reshape(n, tiles_h + 1, 2, tiles_w + 1, 2, channels)  # a tile spans two blocks each way
  transformed = []
  for row in _combine(_WINOGRAD_BT, _tile_parts(blocks, axis=1)):
    transformed += _combine(_WINOGRAD_BT, _tile_parts(row, axis=2))
  return jnp.stack(transformed).reshape(16, n * tiles_h * tiles_w, channels)


def _winograd_input_tiles_backward(tiles_h, tiles_w, _, grad):
  # JAX's autodiff of _tile_parts' slices pads each of the 16 tile gradients to the image's size
  # and adds them; written directly, the tiles' overlaps are two pad-and-add passes.
  grad = grad.reshape(4, 4, -1, tiles_h, tiles_w, grad.shape[-1])
  bt_transposed = _WINOGRAD_BT.T
  rows = [_overlap_add(_combine(bt_transposed, list(row)), axis=2) for row in grad]
  return (_overlap_add(_combine(bt_transposed, rows), axis=1),)


winograd_input_tiles = jax.custom_vjp(_winograd_input_tiles, nondiff_argnums=(1, 2))
winograd_input_tiles.defvjp(
  lambda x, tiles_h, tiles_w: (_winograd_input_tiles(x, tiles_h, tiles_w), None), _winograd_input_tiles_backward
)


def winograd_conv3x3(x, kernel, padding):
  """A stride-1 3x3 convolution as Winograd F(2x2, 3x3): the values of lax's, to float rounding.

  Fewer multiplications than a direct convolution (4 per output where it takes 9), all in 16 matmuls of (tiles,
  channels) @ (channels, features); the transforms are adds over slices, their gradients too. An
  odd output size is computed one row or column larger and cropped.
  """
  n, h, w, channels = x.shape
  out_h, out_w = (h, w) if padding == "SAME" else (h - 2, w - 2)
  tiles_h, tiles_w = -(-out_h // 2), -(-out_w // 2)
  before = 1 if padding == "SAME" else 0
  x = jnp.pad(x, ((0, 0), (before, 2 * tiles_h + 2 - h - before), (before, 2 * tiles_w + 2 - w - before), (0, 0)))
  v = winograd_input_tiles(x, tiles_h, tiles_w)
  g = jnp.asarray(_WINOGRAD_G, kernel.dtype)  # a float32 constant would promote bf16 (mixed_precision) to float32
  u = jnp.einsum("ai,ijcf,bj->abcf", g, kernel, g).reshape(16, channels, -1)
  m = jnp.einsum("tpc,tcf->tpf", v, u).reshape(4, 4, n, tiles_h, tiles_w, -1)
  out_rows = [jnp.stack(_combine(_WINOGRAD_AT, list(row)), axis=3) for row in _combine(_WINOGRAD_AT, list(m))]
  return jnp.stack(out_rows, axis=2).reshape(n, 2 * tiles_h, 2 * tiles_w, -1)[:, :out_h, :out_w]


# Stride-1 3x3 convolutions by input channels, from the measured forward-and-backward times of each
# formulation inside a lax.scan (benchmarks/NOTES.md, "Winograd"): with few channels one matmul of the
# 3x3 patches (im2col) is cheapest; Winograd's transforms pay for themselves only from 24 channels;
# `conv_stride1` between.
CONV_MIN_CHANNELS = 16
WINOGRAD_MIN_CHANNELS = 24


def conv3x3(x, kernel, bias, strides: int, padding: str):
  """The values of nn.Conv's 3x3 convolution (`bias` may be None), in the formulation this device runs fastest.

  On a CPU with the oneDNN extension built (fluxdigits/onednn.py), oneDNN's convolution. Otherwise:
  With few input channels (a first layer) or stride 2: one matmul of the 3x3 patches (im2col), with
  a column of ones appended when there is a bias, so that the bias is a row of the same matmul.
  There XLA:CPU's convolution is slower than the matmul, its kernel gradient several times
  slower, and a bias gradient (a reduction over all positions) as slow as the rest of the step;
  here both gradients are the one matmul patches^T @ grad. Otherwise `conv_stride1` or
  `winograd_conv3x3`, by channels (WINOGRAD_MIN_CHANNELS). On a GPU or TPU, lax's convolution.
  """
  with_bias = lambda y: y if bias is None else y + bias
  channels, features = kernel.shape[2:]
  if lax_ops():
    return with_bias(_conv(x, kernel, padding, strides))
  if _onednn_runs(x):
    return with_bias(onednn.conv(x, kernel, strides, padding))
  if channels >= WINOGRAD_MIN_CHANNELS and strides == 1:
    return with_bias(winograd_conv3x3(x, kernel, padding))
  if channels >= CONV_MIN_CHANNELS and strides == 1:
    return conv_stride1(x, kernel, bias, padding)
  patches = _patches(x, strides, padding, with_ones=bias is not None)
  weights = kernel.reshape(9 * channels, features)
  if bias is not None:
    weights = jnp.concatenate([weights, bias[None]])
  return (patches.reshape(-1, patches.shape[-1]) @ weights).reshape(*patches.shape[:3], features)


def conv1x1(x, kernel, strides: int):
  """The values of nn.Conv's 1x1 convolution without bias. On a CPU without oneDNN, one matmul of the strided
  pixels: XLA:CPU's convolution computes the kernel gradient of the strided 1x1 convolution far slower."""
  if lax_ops():
    return _conv(x, kernel, "VALID", strides)
  if _onednn_runs(x):
    return onednn.conv(x, kernel, strides, "VALID")
  return x[:, ::strides, ::strides] @ kernel[0, 0]


def _threefry_bits_in_one_pass(key_data, bit_width: int, shape):
  """The bits of JAX's default PRNG, threefry2x32, for `shape` (the same bits: with jax_threefry_partitionable, the
  default, its counters are a row-major iota), computed as one unrolled pass inside a one-trip loop.

  jax 0.10 lowers threefry on a CPU as a loop of five steps, each a pass over the whole array; unrolled it is
  several times faster (upstream unrolled it later, jax-ml/jax#37872). Unrolled but free to fuse, the hash would be
  copied into every fusion that reads the mask; fusion does not cross a loop whose start XLA cannot know, so the
  one-trip loop keeps it computed once (benchmarks/NOTES.md, "Dropout's masks").
  """
  size = math.prod(shape)
  if bit_width != 32 or size >= 2**32 or not jax.config.jax_threefry_partitionable:
    return _THREEFRY.random_bits(key_data, bit_width, shape)

  def one_pass(state):
    trips, _ = state
    counts = lax.iota(jnp.uint32, size).reshape(shape)
    high, low = jax_private.threefry2x32_unrolled(key_data[0], key_data[1], jnp.zeros_like(counts), counts)
    return trips + 1, high ^ low

  start = jnp.minimum(key_data[0], jnp.uint32(0))  # always 0, but no constant XLA could use to drop the loop
  return lax.while_loop(lambda state: state[0] < 1, one_pass, (start, jnp.zeros(shape, jnp.uint32)))[1]


_THREEFRY = jax.extend.random.threefry_prng_impl
_THREEFRY_IN_ONE_PASS = jax.extend.random.define_prng_impl(
  key_shape=_THREEFRY.key_shape,
  seed=_THREEFRY.seed,
  split=_THREEFRY.split,
  fold_in=_THREEFRY.fold_in,
  random_bits=_threefry_bits_in_one_pass,
  name="threefry2x32_in_one_pass",
  tag="fd1",
)


def batch_norm(x, scale, bias, epsilon: float, relu: bool):
  """(normalised x, through a ReLU when `relu`; its mean; its variance) over all axes but the last, as one oneDNN
  primitive each way, where that runs (float32 NHWC on a CPU with the extension); else None.

  XLA:CPU spends as long on a ResNet's BatchNorm and ReLU as on half its convolutions (benchmarks/NOTES.md).
  """
  if x.ndim == 4 and x.dtype == jnp.float32 and not lax_ops() and onednn.available():
    return onednn.batch_norm(x, scale, bias, epsilon, relu)
  return None


def bernoulli(rng, p, shape):
  """jax.random.bernoulli's values; on a CPU its bits come from `_threefry_bits_in_one_pass`, computed faster."""
  if not lax_ops():
    rng = jax.random.wrap_key_data(jax.random.key_data(rng), impl=_THREEFRY_IN_ONE_PASS)
  return jax.random.bernoulli(rng, p, shape)
