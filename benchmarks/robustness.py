"""MNIST-C: MNIST's test split under 15 corruptions (Mu and Gilmer, 2019), and a digit run's accuracy on each.

  python benchmarks/robustness.py runs/mnist_cnn runs/other     # accuracy per corruption of finished runs
  python benchmarks/robustness.py --samples corruptions.png     # one test digit under every corruption

The corruptions are written here after the paper's definitions, in numpy, scipy and Pillow (nothing is
downloaded), at the one severity MNIST-C uses for each, and applied to all 10,000 test images with a
fixed seed per corruption, so every run is measured on the same images. benchmarks/experiments.py
evaluates each digit experiment this way and records the figures; the robustness table in
docs/photos.md and the MNIST-C column of the README's experiments table are written from those records.
"""

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import photos  # noqa: E402  (benchmarks/, on the path above)

SEED = 20190605  # MNIST-C's paper date: one fixed seed, offset per corruption


def _affine(images, rng, matrix_of):
  """Each image resampled through its own 2x2 matrix (output to input) about the centre, bilinear."""
  centre = np.array([13.5, 13.5])
  out = np.empty_like(images)
  for k, image in enumerate(images):
    matrix = matrix_of(rng)
    out[k] = ndimage.affine_transform(image, matrix, offset=centre - matrix @ centre, order=1)
  return out


def shear(images, rng):
  """Sheared sideways by a factor of 0.2-0.8 pixels per row, either way."""
  return _affine(images, rng, lambda r: np.array([[1, 0], [r.choice([-1, 1]) * r.uniform(0.2, 0.8), 1]]))


def scale(images, rng):
  """Shrunk to 0.5-0.7 of its size, or grown to 1.2-1.4."""

  def matrix(r):
    factor = r.uniform(0.5, 0.7) if r.random() < 0.5 else r.uniform(1.2, 1.4)
    return np.eye(2) / factor

  return _affine(images, rng, matrix)


def rotate(images, rng):
  """Rotated by 20-50 degrees, either way."""

  def matrix(r):
    angle = np.deg2rad(r.choice([-1, 1]) * r.uniform(20, 50))
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

  return _affine(images, rng, matrix)


def translate(images, rng):
  """Moved 4-6 pixels in a random direction, cut by the frame."""
  out = np.empty_like(images)
  for k, image in enumerate(images):
    angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(4, 6)
    out[k] = ndimage.shift(image, (distance * np.sin(angle), distance * np.cos(angle)), order=1)
  return out


def brightness(images, rng):
  """Every pixel brightened by 0.4 (the value channel of HSV, as for a gray image)."""
  return np.clip(images + 0.4, 0, 1)


def _lines(images, rng, draw_one):
  """Strokes drawn over each image with Pillow, at full intensity."""
  out = np.empty_like(images)
  for k, image in enumerate(images):
    layer = Image.new("L", (28, 28), 0)
    draw_one(ImageDraw.Draw(layer), rng)
    out[k] = np.maximum(image, np.asarray(layer, np.float32) / 255)
  return out


def stripe(images, rng):
  """One to three vertical lines, one pixel wide, at random columns."""

  def draw(d, r):
    for column in r.choice(np.arange(2, 26), size=r.integers(1, 4), replace=False):
      d.line([(column, 0), (column, 27)], fill=255, width=1)

  return _lines(images, rng, draw)


def zigzag(images, rng):
  """A zigzag of 2-5 segments between random points, one pixel wide."""

  def draw(d, r):
    d.line([tuple(p) for p in r.uniform(0, 28, size=(r.integers(3, 7), 2))], fill=255, width=1)

  return _lines(images, rng, draw)


def dotted_line(images, rng):
  """A straight line of dots every 3 pixels across the image."""

  def draw(d, r):
    start, end = r.uniform(0, 28, 2), r.uniform(0, 28, 2)
    for t in np.linspace(0, 1, int(np.hypot(*(end - start)) / 3) + 2):
      x, y = start + t * (end - start)
      d.ellipse([x - 0.8, y - 0.8, x + 0.8, y + 0.8], fill=255)

  return _lines(images, rng, draw)


def glass_blur(images, rng):
  """ImageNet-C's glass: blurred (sigma 0.7), each pixel swapped with a random neighbour, blurred again (sigma 0.5;
  one round of swaps, not ImageNet-C's two: at 28 pixels a second round carries strokes too far to read)."""
  x = ndimage.gaussian_filter(images, (0, 0.7, 0.7))
  rows = np.arange(len(x))
  for h in range(27, 0, -1):
    for w in range(27, 0, -1):
      dh, dw = rng.integers(-1, 1, size=(2, len(x)))
      here, there = x[:, h, w].copy(), x[rows, h + dh, w + dw]
      x[:, h, w], x[rows, h + dh, w + dw] = there, here
  return np.clip(ndimage.gaussian_filter(x, (0, 0.5, 0.5)), 0, 1)


def motion_blur(images, rng):
  """Smeared along a random direction within 45 degrees of horizontal: Gaussian weights (sigma 3) over 10 pixels."""
  angles = np.round(rng.uniform(-45, 45, len(images)) / 5) * 5
  out = np.empty_like(images)
  for angle in np.unique(angles):
    kernel = np.zeros((21, 21), np.float32)
    for step in range(11):
      x = 10 + step * np.cos(np.deg2rad(angle))
      y = 10 - step * np.sin(np.deg2rad(angle))
      kernel[int(round(y)), int(round(x))] += np.exp(-(step**2) / (2 * 3.0**2))
    chosen = angles == angle
    out[chosen] = ndimage.convolve(images[chosen], kernel[None] / kernel.sum(), mode="constant")
  return out


def shot_noise(images, rng):
  """Poisson noise: each pixel a photon count of mean 60 x its value, scaled back."""
  return np.clip(rng.poisson(images * 60) / 60, 0, 1).astype(np.float32)


def impulse_noise(images, rng):
  """Salt and pepper on 10% of the pixels."""
  x = images.copy()
  hit = rng.random(x.shape) < 0.1
  x[hit] = rng.random(hit.sum()) < 0.5
  return x


def fog(images, rng):
  """A plasma fractal's haze added at 1.5x (ImageNet-C's fog), then rescaled into range."""
  top = images.max(axis=(1, 2), keepdims=True)
  x = images + 1.5 * photos.plasma(len(images), rng)[:, :28, :28]
  return np.clip(x * top / (top + 1.5), 0, 1)


def spatter(images, rng):
  """Blobs of gray: a smoothed random field, thresholded and feathered (ImageNet-C's spatter)."""
  field = ndimage.gaussian_filter(rng.normal(0.65, 0.3, images.shape), (0, 1.5, 1.5))
  blobs = ndimage.gaussian_filter((field > 0.7).astype(np.float32), (0, 0.5, 0.5))
  return np.clip(images * (1 - blobs) + 0.5 * blobs, 0, 1).astype(np.float32)


def canny_edges(images, rng):
  """Canny's edges (sigma 1, thresholds 0.1 and 0.2 of the gradient range): outlines instead of strokes."""
  x = ndimage.gaussian_filter(images, (0, 1, 1))
  gy, gx = ndimage.sobel(x, axis=1), ndimage.sobel(x, axis=2)
  magnitude = np.hypot(gx, gy)
  magnitude /= np.maximum(magnitude.max(axis=(1, 2), keepdims=True), 1e-6)
  direction = (np.round(np.arctan2(gy, gx) / (np.pi / 4)) % 4).astype(int)  # 0: across columns ... 3: diagonal
  padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))
  neighbour = lambda dy, dx: padded[:, 1 + dy : 29 + dy, 1 + dx : 29 + dx]
  peak = np.zeros_like(magnitude, bool)
  for d, (dy, dx) in enumerate([(0, 1), (1, 1), (1, 0), (1, -1)]):
    peak |= (direction == d) & (magnitude >= neighbour(dy, dx)) & (magnitude >= neighbour(-dy, -dx))
  weak, strong = peak & (magnitude >= 0.1), peak & (magnitude >= 0.2)
  within_image = np.zeros((3, 3, 3), bool)
  within_image[1] = True
  labels, _ = ndimage.label(weak, structure=within_image)
  kept = np.isin(labels, np.unique(labels[strong & (labels > 0)]))
  return kept.astype(np.float32)


CORRUPTIONS = {
  f.__name__: f
  for f in (
    shot_noise,
    impulse_noise,
    glass_blur,
    motion_blur,
    shear,
    scale,
    rotate,
    brightness,
    translate,
    stripe,
    fog,
    spatter,
    dotted_line,
    zigzag,
    canny_edges,
  )
}


def corrupt(images_uint8, name: str) -> np.ndarray:
  """(N, 28, 28, 1) uint8 test images under one corruption, the same on every call."""
  rng = np.random.default_rng(SEED + list(CORRUPTIONS).index(name))
  x = images_uint8[..., 0].astype(np.float32) / 255
  return np.round(CORRUPTIONS[name](x, rng) * 255).clip(0, 255).astype(np.uint8)[..., None]


PHOTOS_PER_KIND = 300  # test digits rendered in each kind of benchmarks/photos.py, each through predict's preparation
SMOKE_PHOTOS_PER_KIND = 20  # under FLUXDIGITS_SMOKE=1 (fluxdigits.config.smoke): the command runs end to end


def photo_accuracy(classifier, images, labels) -> dict:
  """Top-1 of a run's prediction (its own preparation of each file) on the first PHOTOS_PER_KIND test digits rendered
  as each kind of file of benchmarks/photos.py; a file in which no digit is found is a miss."""
  from fluxdigits import config as configs

  n = SMOKE_PHOTOS_PER_KIND if configs.smoke() else PHOTOS_PER_KIND
  with tempfile.TemporaryDirectory() as folder:
    return {
      kind: float(np.mean(_read(classifier, photos.write(kind, images[:n], folder)) == labels[:n]))
      for kind in photos.KINDS
    }


def _read(classifier, paths) -> np.ndarray:
  """The class predicted for each file, -1 (a miss) where the preparation finds no digit."""
  from fluxdigits.errors import UserError

  prepared, read = [], np.full(len(paths), -1)
  for path in paths:
    try:
      prepared.append(classifier.prepare(path))
    except UserError:
      prepared.append(None)
  found = [k for k, image in enumerate(prepared) if image is not None]
  if found:
    read[found] = classifier.predict(np.stack([prepared[k] for k in found])).argmax(-1)
  return read


def _drawn_over(images, labels, digit, seed, draw_one):
  """The test split's images of `digit`, each with strokes drawn over it by Pillow: draw_one(draw, ink, rng)."""
  rng = np.random.default_rng(seed)
  out = []
  for image in images[labels == digit]:
    layer = Image.new("L", (28, 28), 0)
    draw_one(ImageDraw.Draw(layer), image[..., 0] > 128, rng)
    out.append(np.maximum(image[..., 0], np.asarray(layer))[..., None])
  return np.stack(out)


def european_ones(images, labels) -> np.ndarray:
  """The test split's 1s written the European way: a flag down-left from the stem's top and a base stroke under it,
  of random lengths (augment.european_ones draws its own, differently)."""

  def draw_one(draw, ink, rng):
    rows = np.flatnonzero(ink.any(1))
    top, bottom = rows[0], rows[-1]
    top_col, bottom_col = np.flatnonzero(ink[top]).mean(), np.flatnonzero(ink[bottom]).mean()
    flag, base = rng.uniform(3, 7), rng.uniform(2.5, 6)
    draw.line([(top_col, top), (top_col - flag, top + 0.7 * flag)], fill=255, width=2)
    draw.line([(bottom_col - base, bottom), (bottom_col + base, bottom)], fill=255, width=2)

  return _drawn_over(images, labels, 1, SEED - 2, draw_one)


def closed_fours(images, labels) -> np.ndarray:
  """The test split's 4s with a closed top: a line from the top of the left arm to the stem, a little above or below
  (augment.closed_fours draws its own, differently)."""

  def draw_one(draw, ink, rng):
    stem = int(np.argmax(ink[14:].sum(0)))  # the column with the most ink in the lower half
    arm = ink[:, : max(stem - 3, 0)]
    if arm.any():
      row = int(np.flatnonzero(arm.any(1))[0])
      end_row = row + rng.uniform(-1.5, 1.0)
      draw.line([(np.flatnonzero(arm[row]).mean(), row), (stem + rng.uniform(0, 1), end_row)], fill=255, width=2)

  return _drawn_over(images, labels, 4, SEED - 3, draw_one)


def flagged_ones(images, labels) -> np.ndarray:
  """The test split's 1s with a long flag down-left from the stem's top and no base stroke, as a 7 read in their
  place looks (augment.european_ones draws its own, differently)."""

  def draw_one(draw, ink, rng):
    rows = np.flatnonzero(ink.any(1))
    top_col = np.flatnonzero(ink[rows[0]]).mean()
    flag, angle = rng.uniform(6, 9), np.deg2rad(rng.uniform(25, 45))
    draw.line([(top_col, rows[0]), (top_col - flag * np.cos(angle), rows[0] + flag * np.sin(angle))], fill=255, width=2)

  return _drawn_over(images, labels, 1, SEED - 4, draw_one)


def crossed_sevens(images, labels) -> np.ndarray:
  """The test split's 7s with a bar across the stem half way down (augment.crossed_sevens draws its own,
  differently)."""

  def draw_one(draw, ink, rng):
    rows = np.flatnonzero(ink.any(1))
    row = int(rows[0] + rng.uniform(0.45, 0.6) * (rows[-1] - rows[0]))
    if ink[row].any():
      stem, half = np.flatnonzero(ink[row]).mean(), rng.uniform(3, 5)
      draw.line([(stem - half, row + rng.uniform(-1, 1)), (stem + half, row)], fill=255, width=2)

  return _drawn_over(images, labels, 7, SEED - 5, draw_one)


# Digits in a style MNIST's writers rarely used: the class each should read as, and how they are drawn.
WRITTEN_OTHERWISE = {
  "european_ones": (1, european_ones),
  "flagged_ones": (1, flagged_ones),
  "crossed_sevens": (7, crossed_sevens),
  "closed_fours": (4, closed_fours),
}


def mnist_test():
  """MNIST's 10,000 test images and labels, read as the runs read them (TFDS_DATA_DIR)."""
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from fluxdigits import config as configs, data

  config = configs.defaults()
  config.dataset.name = "mnist"
  test = data.load(config).test
  return test.images, test.labels


def evaluate(classifier, images, labels) -> dict:
  """Accuracy of a loaded run on the clean test split ('clean'), under each corruption, their 'mean', on test digits
  rendered as photos and drawings ('photos', per kind, and their 'photos_mean', not in the mean: files through
  predict's preparation, not 28x28 arrays), and on digits written as MNIST's writers rarely did (WRITTEN_OTHERWISE)."""
  accuracy = lambda x: float((classifier.predict(x).argmax(-1) == labels).mean())
  result = {"clean": accuracy(images)}
  result.update({name: accuracy(corrupt(images, name)) for name in CORRUPTIONS})
  result["mean"] = float(np.mean([result[name] for name in CORRUPTIONS]))
  result["photos"] = photo_accuracy(classifier, images, labels)
  result["photos_mean"] = float(np.mean(list(result["photos"].values())))
  for name, (digit, draw) in WRITTEN_OTHERWISE.items():
    result[name] = float((classifier.predict(draw(images, labels)).argmax(-1) == digit).mean())
  return result


def table(records) -> str:
  """Per corruption, the accuracy of each record that has MNIST-C figures; the mean last, the best of each row bold."""
  records = [r for r in records if r.get("mnist_c")]
  if not records:
    return "No experiment has MNIST-C figures recorded yet."
  rows = [
    "| corruption | " + " | ".join(f"`{r['experiment']}`" for r in records) + " |",
    "| --- |" + " ---: |" * len(records),
  ]
  for name in ["clean", *CORRUPTIONS, "mean", *photos.KINDS, "photos_mean", *WRITTEN_OTHERWISE]:
    # None: recorded before this row was measured
    values = [
      r["mnist_c"].get("photos", {}).get(name) if name in photos.KINDS else r["mnist_c"].get(name) for r in records
    ]
    best = max(v for v in values if v is not None) if any(v is not None for v in values) else None
    cells = ["" if v is None else f"**{v:.1%}**" if v == best and len(records) > 1 else f"{v:.1%}" for v in values]
    label = {
      "mean": "**mean**",
      "photos_mean": "**photos: mean**",
      "european_ones": "European 1s (the 1,135 test 1s, flag and base added)",
      "flagged_ones": "flagged 1s (the test 1s, a long flag, no base)",
      "crossed_sevens": "crossed 7s (the 1,028 test 7s, stem crossed)",
      "closed_fours": "closed-top 4s (the 982 test 4s, top closed)",
    }.get(
      name, f"photos: {name.replace('_', ' ')} ({PHOTOS_PER_KIND})" if name in photos.KINDS else name.replace("_", " ")
    )
    rows.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def draw_samples(images, labels, out):
  """One test digit of each class under every corruption, a row per corruption."""
  from matplotlib.figure import Figure

  picks = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)]
  names = ["clean", *CORRUPTIONS]
  fig = Figure(figsize=(6, 0.62 * len(names)), layout="constrained")
  axes = fig.subplots(len(names), 10)
  for row, name in zip(axes, names):
    shown = images[picks] if name == "clean" else corrupt(images, name)[picks]
    for ax, image in zip(row, shown):
      ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([]), ax.set_yticks([])
    row[0].set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center", fontsize=7)
  fig.savefig(out, dpi=72)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs", nargs="*", help="finished digit runs (their --workdir)")
  parser.add_argument("--samples", help="draw one test digit per class under every corruption into this PNG")
  parser.add_argument("--photo-samples", help="draw one test digit per class in every kind of photo into this PNG")
  args = parser.parse_args()
  images, labels = mnist_test()
  if args.samples:
    draw_samples(images, labels, args.samples)
  if args.photo_samples:
    photos.draw_samples(images, labels, args.photo_samples)
  import fluxdigits

  for run in args.runs:
    start = time.perf_counter()
    result = evaluate(fluxdigits.load_classifier(run), images, labels)
    kinds = {f"photos {kind}": value for kind, value in result.pop("photos").items()}
    print(
      f"{run}: "
      + ", ".join(f"{name} {value:.1%}" for name, value in {**result, **kinds}.items())
      + f" ({time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
  main()
