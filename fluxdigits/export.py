"""Export a finished run's model: ONNX (through jax2onnx) or a serialised jax.export artifact (StableHLO).

python -m fluxdigits.export RUN --format onnx|stablehlo [--out DIR]

The exported model takes a batch of images in the dataset's layout (N, H, W, C), float32 scaled to
[0, 1], and returns logits; the dataset's normalisation is inside it. Beside it, `model.json` gives
the input shape, dtype and class names. Each export is checked on the run's first test images:
ONNX Runtime's logits (or the reloaded artifact's) must equal the JAX model's within 1e-4.
`pip install -e '.[export]'` adds jax2onnx and onnxruntime.
"""

import argparse
import contextlib
import io
import json
import logging
import pathlib
import sys

import numpy as np

from fluxdigits import cli
from fluxdigits.errors import UserError

USAGE = "python -m fluxdigits.export RUN --format onnx|stablehlo [--out DIR]"
FILES = {"onnx": "model.onnx", "stablehlo": "model.jax_export"}
TOLERANCE = 1e-4
CHECK_IMAGES = 256


def model_fn(classifier):
  """float32 (N, H, W, C) in [0, 1] -> float32 logits, weights and normalisation baked in."""
  from fluxdigits import augment

  mean, std = classifier.info.mean, classifier.info.std
  variables = {"params": classifier.variables[0], "batch_stats": classifier.variables[1]}

  def logits(images):
    return classifier.apply_fn(variables, augment.standardize(images, mean, std), train=False).astype("float32")

  return logits


def traced(fn, image_shape):
  """`fn` as a jaxpr of lax's own operations, for any batch size N: what the exporters convert."""
  import jax

  from fluxdigits import cpu

  (batch,) = jax.export.symbolic_shape("N")
  images = jax.ShapeDtypeStruct((batch, *image_shape), np.float32)
  with cpu.canonical():  # the file runs without fluxdigits' extension, with the operations runtimes know
    return jax.make_jaxpr(fn)(images), images


def _primitives(jaxpr) -> set[str]:
  import jax.extend.core as jcore

  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for inner in jcore.jaxprs_in_params(eqn.params):
      names |= _primitives(inner)
  return names


def export_onnx(fn, image_shape, out: pathlib.Path):
  """Converts the traced jaxpr, not `fn` itself: jax2onnx's Flax plugins patch flax's functions while it traces, and
  some of those patches refuse Flax's own calls (nn.max_pool(x, (2, 2), (2, 2))); lax operations any model reduces to
  convert alike."""
  import jax.extend.core as jcore

  try:
    import jax2onnx
    from jax2onnx.plugins import plugin_system
  except ImportError:
    raise UserError("ONNX export needs jax2onnx and onnxruntime: pip install -e '.[export]'") from None
  plugin_system.import_all_plugins()
  _register_nhwc_max_pool(plugin_system)
  closed, images = traced(fn, image_shape)
  missing = sorted(_primitives(closed.jaxpr) - set(plugin_system.PLUGIN_REGISTRY))
  if missing:
    raise UserError(
      f"ONNX export cannot convert the model's {', '.join(missing)} operation{'s' * (len(missing) > 1)} "
      "(jax2onnx has no rule for it); export --format stablehlo instead, or build the model without it"
    )
  as_function = jcore.jaxpr_as_fun(closed)
  logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)  # a warning per untyped shape constant: noise to a user
  with contextlib.redirect_stdout(io.StringIO()):  # converters' debug prints are not the user's output
    jax2onnx.to_onnx(
      lambda x: as_function(x)[0],
      [images],
      model_name="fluxdigits",
      return_mode="file",
      output_path=str(out),
      input_names=["images"],
      output_names=["logits"],
    )


def _register_nhwc_max_pool(plugin_system):
  """jax2onnx lowers lax.reduce_window_max to a MaxPool over every axis, a 4-D pool ONNX Runtime cannot run; an NHWC
  pool over H and W becomes Transpose, 2-D MaxPool, Transpose, the graph a Flax model's nn.max_pool means."""
  import onnx_ir as ir
  from jax2onnx.plugins._ir_shapes import _ensure_value_metadata, _stamp_type_and_shape
  from jax2onnx.plugins.jax.lax.reduce_window_max import ReduceWindowMaxPrimitivePlugin

  name = "reduce_window_max"
  if type(plugin_system.PLUGIN_REGISTRY.get(name)).__name__ == "NHWCMaxPool":
    return

  class NHWCMaxPool(ReduceWindowMaxPrimitivePlugin):
    def lower(self, ctx, eqn):
      p = eqn.params
      x, y = eqn.invars[0], eqn.outvars[0]
      spatial = lambda values: len(values) == 4 and values[0] == values[3] == 1
      if not (
        spatial(p["window_dimensions"])
        and spatial(p["window_strides"])
        and spatial(p["base_dilation"])
        and spatial(p["window_dilation"])
        and p["padding"][0] == p["padding"][3] == (0, 0)
      ):
        return super().lower(ctx, eqn)

      def node(op, value, shape, **attributes):
        result = getattr(ctx.builder, op)(value, _outputs=[ctx.fresh_name(op.lower())], **attributes)
        result.type = ir.TensorType(value.type.dtype)
        _stamp_type_and_shape(result, shape)
        _ensure_value_metadata(ctx, result)
        return result

      nchw = lambda shape: (shape[0], shape[3], shape[1], shape[2])
      value = node("Transpose", ctx.get_value_for_var(x), nchw(x.aval.shape), perm=[0, 3, 1, 2])
      (top, bottom), (left, right) = p["padding"][1:3]
      pads = {"pads": [top, left, bottom, right]} if any((top, bottom, left, right)) else {}
      value = node(
        "MaxPool",
        value,
        nchw(y.aval.shape),
        kernel_shape=list(p["window_dimensions"][1:3]),
        strides=list(p["window_strides"][1:3]),
        **pads,
      )
      ctx.bind_value_for_var(y, node("Transpose", value, y.aval.shape, perm=[0, 2, 3, 1]))

  plugin = NHWCMaxPool()
  plugin.primitive, plugin.metadata = name, plugin_system.PLUGIN_REGISTRY[name].metadata
  plugin_system.PLUGIN_REGISTRY[name] = plugin


def run_onnx(path, images):
  import onnxruntime

  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return session.run(None, {session.get_inputs()[0].name: images})[0]


def export_stablehlo(fn, image_shape, out: pathlib.Path):
  import jax
  import jax.extend.core as jcore

  closed, images = traced(fn, image_shape)
  as_function = jcore.jaxpr_as_fun(closed)
  out.write_bytes(jax.export.export(jax.jit(lambda x: as_function(x)[0]))(images).serialize())


def run_stablehlo(path, images):
  import jax

  return np.asarray(jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes())).call(images))


EXPORTERS = {"onnx": (export_onnx, run_onnx), "stablehlo": (export_stablehlo, run_stablehlo)}


def export(workdir, fmt: str, out=None) -> tuple[pathlib.Path, float, int]:
  """Writes DIR/model.onnx or DIR/model.jax_export and DIR/model.json.

  Returns (model path, largest logit difference, images checked)."""
  from fluxdigits import data, predict

  if fmt not in EXPORTERS:
    raise UserError(f"unknown --format {fmt!r}; choose one of {', '.join(EXPORTERS)}")
  classifier = predict.load_classifier(workdir)
  out = pathlib.Path(out or pathlib.Path(workdir) / "export")
  out.mkdir(parents=True, exist_ok=True)
  fn = model_fn(classifier)
  write, run = EXPORTERS[fmt]
  path = out / FILES[fmt]
  write(fn, classifier.image_shape, path)
  (out / "model.json").write_text(
    json.dumps(
      {
        "file": path.name,
        "format": fmt,
        "input_shape": [None, *classifier.image_shape],
        "input_dtype": "float32",
        "input_range": [0.0, 1.0],
        "layout": "NHWC",
        "output": "logits",
        "class_names": list(classifier.class_names),
        "dataset": classifier.dataset,
      },
      indent=2,
    )
    + "\n"
  )
  images = data.load(classifier.config).test.images[:CHECK_IMAGES].astype(np.float32) / 255.0
  expected, got = np.asarray(fn(images)), run(path, images)
  error = float(np.abs(expected - got).max())
  if not error <= TOLERANCE:
    raise UserError(
      f"{path}: exported logits differ from the JAX model's by {error:.2e} (> {TOLERANCE:g}) on "
      f"{len(images)} test images; the export is not faithful, please report it"
    )
  return path, error, len(images)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m fluxdigits.export",
    usage=USAGE,
    description=__doc__,
    epilog="example: python -m fluxdigits.export runs/mnist_cnn --format onnx",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("run", help="a finished run directory")
  parser.add_argument("--format", required=True, choices=sorted(EXPORTERS), help="onnx or stablehlo (jax.export)")
  parser.add_argument("--out", help="output folder (default RUN/export)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)

  def command():
    path, error, n = export(args.run, args.format, args.out)
    print(f"{path} (+ model.json): logits match the JAX model's within {error:.1e} on {n} test images")

  return cli.main(command, "nothing was exported")


if __name__ == "__main__":
  sys.exit(main())
