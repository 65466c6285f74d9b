"""Predict image files with a trained run.

python -m fluxdigits.predict RUN IMAGE|DIR|GLOB ... [--top K] [--csv FILE] [--show FILE.png] [--digits]

Each file is made into the dataset's format (fluxdigits.images: for digits, the way MNIST was
made) and classified by the run's best checkpoint. For your own handwriting, use a run of
experiments/mnist_handwriting.py, trained for other writers, pens and cameras. A file that cannot
be read gets one line naming it; the others are still predicted, and the exit code is 1.
`--digits` reads a number written on one line, digit by digit, left to right.
"""

import argparse
import csv
import glob
import os
import pathlib
import sys

import numpy as np

from fluxdigits import cli, images as image_files
from fluxdigits.errors import UserError

USAGE = "python -m fluxdigits.predict RUN IMAGE|DIR|GLOB ... [--top K] [--csv FILE] [--show FILE.png] [--digits]"
LOW_CONFIDENCE = 0.6  # below this top probability, the prediction is flagged
MAX_SHOWN = 100  # --show draws the first ones; a taller figure passes matplotlib's pixel limit
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class Classifier:
  """A finished run's best (averaged) weights, with the preprocessing its dataset needs."""

  def __init__(self, workdir):
    from fluxdigits import checkpoint, mesh as meshes, registry, report, steps

    run = report.read_run(workdir)  # one line, exit 2, unless the run has finished
    self.config, self.info, state, _ = checkpoint.load_run(run.workdir, "best")
    self.dataset = self.config.dataset.name
    self.class_names = self.info.class_names
    self.image_shape = tuple(self.info.image_shape)
    self._mesh = meshes.data_mesh()
    self._batch_size = len(self._mesh.devices.flat) * 32
    self.variables = state.evaluated_variables()  # (params, batch_stats)
    self._variables = meshes.replicate(self.variables, self._mesh)
    self._logits = steps.make_predict(
      state.apply_fn, steps.Preprocess(self.info.mean, self.info.std, registry.compute_dtype(self.config))
    )
    self.apply_fn = state.apply_fn

  def prepare(self, path) -> np.ndarray:
    """One image file (a path, or an open binary file: an upload) in the dataset's format, uint8 `image_shape`."""
    return image_files.read_photo(path, self.config.dataset.photos, self.image_shape)

  def predict(self, images) -> np.ndarray:
    """(N, classes) probabilities of image files (paths) or a uint8 array (N, *image_shape)."""
    if isinstance(images, (str, os.PathLike)):
      images = [images]
    if not isinstance(images, np.ndarray):
      images = (
        np.stack([self.prepare(p) for p in images]) if len(images) else np.zeros((0, *self.image_shape), np.uint8)
      )
    if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
      raise UserError(
        f"images must be uint8 of shape (N, {', '.join(map(str, self.image_shape))}) for a "
        f"{self.dataset} run, got {images.dtype} {images.shape}"
      )
    if not len(images):
      return np.zeros((0, len(self.class_names)), np.float32)
    from fluxdigits import mesh as meshes, steps

    logits = steps.predict_split(
      self._logits, self._variables, meshes.replicate(images, self._mesh), len(images), self._batch_size, self._mesh
    )
    shifted = logits - logits.max(-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)


def load_classifier(workdir) -> Classifier:
  return Classifier(workdir)


def expand(patterns) -> list[pathlib.Path]:
  """Files, folders (their images and their subfolders', as a folder dataset's test/ holds them, sorted) and globs,
  in the order given; a folder or glob with no image is one line (UserError)."""
  files = []
  for pattern in patterns:
    path = pathlib.Path(pattern)
    if path.is_dir():
      found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    elif glob.has_magic(pattern):
      found = [pathlib.Path(p) for p in sorted(glob.glob(pattern))]
    else:
      files.append(path)  # missing files get their error line when read
      continue
    if not found:
      raise UserError(f"{pattern}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found there")
    files += found
  return files


def _top(probs, top):
  return np.argsort(-probs)[:top]


def _flag(probability) -> str:
  return "  (low confidence)" if probability < LOW_CONFIDENCE else ""


def _describe(probs, class_names, top):
  order = _top(probs, top)
  text = "  ".join(f"{class_names[i]} {probs[i]:.3f}" for i in order)
  return text + _flag(probs[order[0]])


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog="python -m fluxdigits.predict",
    usage=USAGE,
    description=__doc__,
    epilog="example: python -m fluxdigits.predict runs/mnist_handwriting photos/ --top 3 --show seen.png",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("run", help="a finished run directory (the --workdir of python -m fluxdigits.run)")
  parser.add_argument("images", nargs="+", help="image files, folders of images, or glob patterns")
  parser.add_argument("--top", type=int, default=3, help="classes shown per image (3)")
  parser.add_argument("--csv", help="also write file, class and probability of each prediction to this CSV")
  parser.add_argument(
    "--show",
    help=f"draw each image (the first {MAX_SHOWN}), the 28x28 (or dataset-sized) input the "
    "model saw and its probabilities, the --top ones labelled, into this PNG",
  )
  parser.add_argument("--digits", action="store_true", help="each image is a number written on one line")
  args = parser.parse_args(argv)
  if args.top < 1:
    raise UserError(f"--top must be at least 1, got {args.top}")
  return args


def main(argv=None) -> int:
  return cli.main(
    lambda: predict_files(parse_args(sys.argv[1:] if argv is None else argv)), "the predictions printed so far stand"
  )


def predict_files(args) -> int:
  """Prints each file's prediction (and writes --csv, --show); 1 if a file could not be predicted."""
  files = expand(args.images)
  classifier = load_classifier(args.run)
  if args.digits and (classifier.config.dataset.photos != "digit" or classifier.image_shape != (28, 28, 1)):
    raise UserError(
      f"--digits needs a run that reads 28x28 digits (dataset.photos='digit'); {args.run} was "
      f"trained on {classifier.dataset} with dataset.photos={classifier.config.dataset.photos!r}"
    )
  names = classifier.class_names
  rows, shown, failed = [], [], 0
  for path in files:
    try:
      inputs = np.stack(image_files.read_digits(path)) if args.digits else classifier.prepare(path)[None]
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      failed += 1
      continue
    probs = classifier.predict(inputs)
    if args.digits:
      number = "".join(names[i] for i in probs.argmax(-1))
      confidences = "  ".join(f"{names[i]} {p[i]:.3f}" for p, i in zip(probs, probs.argmax(-1)))
      low = _flag(probs.max(-1).min())
      print(f"{path}: {number}  ({confidences}){low}")
    else:
      print(f"{path}: {_describe(probs[0], names, args.top)}")
    for k, p in enumerate(probs):
      rows.append([str(path), k, names[int(p.argmax())], f"{p.max():.6f}", *[f"{q:.6f}" for q in p]])
      shown.append((path, inputs[k], p))
  if args.csv and rows:
    with open(args.csv, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["file", "digit", "predicted", "probability", *names])
      writer.writerows(rows)
  if args.show and shown:
    _draw(shown[:MAX_SHOWN], names, args.show, args.top)
  if failed:
    print(f"{failed} of {len(files)} files could not be predicted", file=sys.stderr)
  return 1 if failed else 0


def _draw(shown, class_names, out, top):
  """Per prediction: the original image, the model's input, and the probabilities, the `top` highest labelled."""
  from matplotlib.figure import Figure

  height = 2.2 * len(shown)
  fig = Figure(figsize=(9, height))
  # Margins in inches, not a layout engine's: constrained layout of many rows takes longer than predicting them.
  fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.3 / height, bottom=0.35 / height, wspace=0.15, hspace=0.3)
  axes = fig.subplots(len(shown), 3, squeeze=False)
  for (path, model_input, probs), (orig, seen, bars) in zip(shown, axes):
    try:
      original = image_files.load_image(path)
      original.thumbnail((300, 300))  # a photo's millions of pixels, drawn 2 inches wide
      orig.imshow(original, cmap="gray")
    except UserError:
      pass
    orig.set_title(pathlib.Path(path).name, fontsize=8)
    seen.imshow(model_input.squeeze(), cmap="gray" if model_input.shape[-1] == 1 else None, vmin=0, vmax=255)
    seen.set_title(f"model input {model_input.shape[0]}x{model_input.shape[1]}", fontsize=8)
    for ax in (orig, seen):
      ax.set_xticks([]), ax.set_yticks([])
    best = _top(probs, top)
    colours = ["#0072B2" if i in best else "#BBBBBB" for i in range(len(class_names))]
    bars.barh(range(len(class_names)), probs, color=colours)
    for i in best:  # the label inside a long bar, beside a short one
      inside = probs[i] > 0.7
      bars.text(
        probs[i] + (-0.02 if inside else 0.02),
        i,
        f"{class_names[i]} {probs[i]:.2f}",
        va="center",
        fontsize=7,
        ha="right" if inside else "left",
        color="white" if inside else "black",
      )
    bars.set_yticks(range(len(class_names)), class_names, fontsize=7)
    bars.set_xlim(0, 1)
    bars.invert_yaxis()
    bars.set_title(f"reads {class_names[best[0]]}{_flag(probs[best[0]])}", fontsize=8)
  fig.savefig(out, dpi=100)


if __name__ == "__main__":
  sys.exit(main())
