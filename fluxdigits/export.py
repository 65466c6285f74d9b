"""Export a finished run's model: ONNX (through jax2onnx) or a serialised jax.export artifact (StableHLO).

python -m fluxdigits.export RUN --format onnx|stablehlo [--out DIR]

The exported model takes a batch of images in the dataset's layout (N, H, W, C), float32 scaled to
[0, 1], and returns logits; the dataset's normalisation is inside it. Beside it, `model.json` gives
the input shape, dtype and class names. Each export is checked on the run's first test images:
ONNX Runtime's logits (or the reloaded artifact's) must equal the JAX model's within 1e-4.
`pip install -e '.[export]'` adds jax2onnx and onnxruntime.
"""

import argparse
import json
import logging
import pathlib
import sys

import numpy as np

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


def export_onnx(fn, image_shape, out: pathlib.Path):
  # jax2onnx 0.13.0 logs a traceback for its dm_pix plugin (which jax 0.10 cannot import and these
  # models never use) and onnx_ir a warning per untyped constant: noise to a user.
  for name in ("jax2onnx.plugins.plugin_system", "onnx_ir.serde"):
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    import jax2onnx
  except ImportError:
    raise UserError("ONNX export needs jax2onnx and onnxruntime: pip install -e '.[export]'") from None
  jax2onnx.to_onnx(fn, [("N", *image_shape)], model_name="fluxdigits", return_mode="file", output_path=str(out),
                   input_names=["images"], output_names=["logits"])


def run_onnx(path, images):
  import onnxruntime
  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return session.run(None, {session.get_inputs()[0].name: images})[0]


def export_stablehlo(fn, image_shape, out: pathlib.Path):
  import jax
  batch, = jax.export.symbolic_shape("n")
  exported = jax.export.export(jax.jit(fn))(jax.ShapeDtypeStruct((batch, *image_shape), np.float32))
  out.write_bytes(exported.serialize())


def run_stablehlo(path, images):
  import jax
  return np.asarray(jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes())).call(images))


EXPORTERS = {"onnx": (export_onnx, run_onnx), "stablehlo": (export_stablehlo, run_stablehlo)}


def export(workdir, fmt: str, out=None) -> tuple[pathlib.Path, float, int]:
  """Writes DIR/model.onnx or DIR/model.jax_export and DIR/model.json; returns (model path, largest logit difference, images checked)."""
  from fluxdigits import data, onednn, predict
  if fmt not in EXPORTERS:
    raise UserError(f"unknown --format {fmt!r}; choose one of {', '.join(EXPORTERS)}")
  classifier = predict.load_classifier(workdir)
  out = pathlib.Path(out or pathlib.Path(workdir) / "export")
  out.mkdir(parents=True, exist_ok=True)
  fn = model_fn(classifier)
  write, run = EXPORTERS[fmt]
  path = out / FILES[fmt]
  with onednn.suspended():  # the file runs without fluxdigits' extension
    write(fn, classifier.image_shape, path)
  (out / "model.json").write_text(json.dumps({
      "file": path.name, "format": fmt, "input_shape": [None, *classifier.image_shape], "input_dtype": "float32",
      "input_range": [0.0, 1.0], "layout": "NHWC", "output": "logits", "class_names": list(classifier.class_names),
      "dataset": classifier.dataset}, indent=2) + "\n")
  images = data.load(classifier.config).test.images[:CHECK_IMAGES].astype(np.float32) / 255.0
  expected, got = np.asarray(fn(images)), run(path, images)
  error = float(np.abs(expected - got).max())
  if not error <= TOLERANCE:
    raise UserError(f"{path}: exported logits differ from the JAX model's by {error:.2e} (> {TOLERANCE:g}) on "
                    f"{len(images)} test images; the export is not faithful, please report it")
  return path, error, len(images)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fluxdigits.export", usage=USAGE, description=__doc__,
                                   epilog="example: python -m fluxdigits.export runs/mnist_cnn --format onnx",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("run", help="a finished run directory")
  parser.add_argument("--format", required=True, choices=sorted(EXPORTERS), help="onnx or stablehlo (jax.export)")
  parser.add_argument("--out", help="output folder (default RUN/export)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    path, error, n = export(args.run, args.format, args.out)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
  print(f"{path} (+ model.json): logits match the JAX model's within {error:.1e} on {n} test images")
  return 0


if __name__ == "__main__":
  sys.exit(main())
