"""MNIST test digits rendered as the files people give predict: phone photos of a digit written on paper, and drawings
saved with transparency. benchmarks/robustness.py measures runs on them; tests/test_images.py checks the preparation
keeps their strokes.

  python benchmarks/robustness.py --photo-samples samples.png   # one test digit of each class in every kind

Every kind is rendered from one 28x28 test digit (ink bright) and a numpy Generator, as a PIL image with the format
it is saved in; all are drawn with numpy, scipy, Pillow and scikit-image's skeleton, nothing is downloaded.
"""

import pathlib

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from fluxdigits import images

SEED = 20190604  # one fixed seed, offset per kind, so every run is measured on the same files


def plasma(count, rng, size=32, decay=2.0):
  """ImageNet-C's plasma fractal (diamond-square), `count` maps at once, each rescaled to [0, 1]."""
  maps = np.zeros((count, size, size), np.float32)
  step, wibble = size, 100.0
  noisy = lambda a: a / 4 + rng.uniform(-wibble, wibble, a.shape)
  while step >= 2:
    half = step // 2
    corners = maps[:, 0::step, 0::step]
    squares = corners + np.roll(corners, -1, axis=1)
    squares = squares + np.roll(squares, -1, axis=2)
    maps[:, half::step, half::step] = noisy(squares)
    centres = maps[:, half::step, half::step]
    maps[:, 0::step, half::step] = noisy(centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2))
    maps[:, half::step, 0::step] = noisy(centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1))
    step, wibble = half, wibble / decay
  maps -= maps.min(axis=(1, 2), keepdims=True)
  return maps / maps.max(axis=(1, 2), keepdims=True)


def _texture(shape, rng) -> np.ndarray:
  """A plasma fractal of `shape` (up to 512 a side), mean about 0, range 1."""
  return plasma(1, rng, size=512)[0, : shape[0], : shape[1]] - 0.5


def _placed(ink: np.ndarray, shape, top: int, left: int) -> np.ndarray:
  page = np.zeros(shape, np.float32)
  page[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
  return page


def _light(shape, rng, low: float) -> np.ndarray:
  """Light falling off across the frame in a random direction, from 1 down to `low`."""
  h, w = shape
  angle = rng.uniform(0, 2 * np.pi)
  ramp = np.cos(angle) * np.linspace(0, 1, h)[:, None] + np.sin(angle) * np.linspace(0, 1, w)[None, :]
  ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
  return 1 - (1 - low) * ramp


def _cast_shadow(shape, rng) -> np.ndarray:
  """A phone's or a hand's shadow: the frame beyond a random line (sometimes two, a corner) dimmed by 25-55%, its
  edge soft over 1-4% of the frame."""
  h, w = shape
  rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
  inside = np.ones(shape, bool)
  for _ in range(int(rng.integers(1, 3))):
    angle = rng.uniform(0, 2 * np.pi)
    through = rng.uniform(0.15, 0.85, 2) * (h, w)
    inside &= (rows - through[0]) * np.cos(angle) + (cols - through[1]) * np.sin(angle) > 0
  soft = ndimage.gaussian_filter(inside.astype(np.float32), rng.uniform(0.01, 0.04) * max(h, w))
  return 1 - rng.uniform(0.25, 0.55) * soft


def _perspective(image: Image.Image, rng, amount: float, fill) -> Image.Image:
  """Seen from a little aside: each corner moved by up to `amount` of the side."""
  w, h = image.size
  corners = np.array([[0, 0], [0, h], [w, h], [w, 0]], np.float64)
  moved = corners + rng.uniform(-amount, amount, (4, 2)) * (w, h)
  return image.transform(
    (w, h), Image.Transform.QUAD, moved.ravel().tolist(), Image.Resampling.BILINEAR, fillcolor=fill
  )


def _jpeg(rng) -> dict:
  """How a phone saves a photo: JPEG at a quality of 40-90."""
  return {"format": "JPEG", "quality": int(rng.integers(40, 91))}


def _rgb(values: np.ndarray) -> Image.Image:
  return Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8), "RGB")


# Ballpoint inks as the fraction of each colour they let through: blue, black, red, green.
INKS = np.array([[0.25, 0.32, 0.7], [0.18, 0.18, 0.22], [0.7, 0.2, 0.22], [0.2, 0.45, 0.3]], np.float32)


def _ink_on_paper(shape, ink, rng, paper_level) -> np.ndarray:
  """RGB: `ink` (0-1 coverage) in a ballpoint colour of uneven pressure on textured paper of brightness about
  `paper_level`, slightly warm or cool."""
  paper = paper_level * (1 + 0.08 * _texture(shape, rng))[..., None] * (1 + rng.uniform(-0.05, 0.05, 3))
  pressure = 0.6 + 0.4 * (_texture(shape, rng) + 0.5)
  colour = INKS[rng.integers(len(INKS))] * rng.uniform(0.85, 1.15, 3)
  cover = (ink * pressure)[..., None]
  return paper * (1 - cover * (1 - colour))


def _camera(rgb: np.ndarray, rng) -> Image.Image:
  """A phone's sensor noise and slight blur on a linear RGB frame."""
  noisy = rgb + rng.normal(0, 0.015, rgb.shape)
  return _rgb(noisy).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))


def ballpoint(digit_uint8, rng) -> tuple[Image.Image, dict]:
  """A thin ballpoint line (blue, black, red or green) on grey paper, under strong light falling off to one side and a
  cast shadow, slightly askew, as a JPEG."""
  h, w = int(rng.integers(240, 400)), int(rng.integers(240, 400))
  size = int(min(h, w) * rng.uniform(0.4, 0.65))
  ink = images.pen_line(digit_uint8, size, rng.uniform(1.5, 3.5))
  ink = _placed(ink, (h, w), int(rng.integers(0, h - size)), int(rng.integers(0, w - size)))
  rgb = _ink_on_paper((h, w), ink, rng, rng.uniform(0.6, 0.88))
  rgb *= (_light((h, w), rng, rng.uniform(0.4, 0.7)) * _cast_shadow((h, w), rng))[..., None]
  image = _perspective(_camera(rgb, rng), rng, 0.05, (128, 128, 128))
  return image, _jpeg(rng)


# Table tops around a page: dark wood, grey, light wood.
TABLES = np.array([[0.25, 0.15, 0.08], [0.3, 0.3, 0.32], [0.6, 0.45, 0.3]], np.float32)


def page_edge(digit_uint8, rng) -> tuple[Image.Image, dict]:
  """A digit written with a pen of any width on a page photographed in perspective, the table showing along one to
  three of its edges, light falling off across it, as a JPEG."""
  h, w = int(rng.integers(260, 400)), int(rng.integers(260, 400))
  page = np.ones((h, w), bool)
  edges = rng.permutation(4)[: rng.integers(1, 4)]
  for edge in edges:  # the page ends 3-15% of the frame in from this edge
    cut = int(rng.uniform(0.03, 0.15) * (h if edge < 2 else w))
    page[{0: np.s_[:cut], 1: np.s_[h - cut :], 2: np.s_[:, :cut], 3: np.s_[:, w - cut :]}[edge]] = False
  rows, cols = np.nonzero(page)
  size = int(min(np.ptp(rows), np.ptp(cols)) * rng.uniform(0.35, 0.6))
  if rng.random() < 0.5:
    ink = images.pen_line(digit_uint8, size, rng.uniform(2, 6))
  else:
    ink = images.enlarged(digit_uint8, size)
  top = int(rng.integers(rows.min() + 0.1 * size, rows.max() - 1.1 * size))
  left = int(rng.integers(cols.min() + 0.1 * size, cols.max() - 1.1 * size))
  rgb = _ink_on_paper((h, w), _placed(ink, (h, w), top, left), rng, rng.uniform(0.75, 0.95))
  table = TABLES[rng.integers(len(TABLES))] * (1 + 0.2 * _texture((h, w), rng))[..., None]
  rgb = np.where(page[..., None], rgb, table)
  rgb *= _light((h, w), rng, rng.uniform(0.5, 0.8))[..., None]
  image = _perspective(_camera(rgb, rng), rng, 0.08, tuple(int(255 * v) for v in TABLES[0]))
  return image, _jpeg(rng)


def photographed(digit_uint8, rng) -> tuple[Image.Image, dict]:
  """Dark ink of uneven pressure on textured paper, half of it thinned towards a pen's line, off-centre, a shadow
  across, in perspective, slightly out of focus, as a grayscale JPEG."""
  side = int(rng.integers(120, 257))
  size = int(side * rng.uniform(0.35, 0.7))
  ink = images.enlarged(digit_uint8, size)
  if rng.random() < 0.5:  # a thin pen or pencil: strokes down to a third of their width
    ink = ndimage.grey_erosion(ink, size=int(rng.integers(2, max(3, size // 28 + 1))))
  top, left = rng.integers(0, side - size, size=2)
  page = _placed(ink, (side, side), top, left)
  pressure = 0.55 + 0.45 * plasma(1, rng, size=256)[0, :side, :side]
  paper = rng.uniform(0.7, 0.95) + 0.08 * (plasma(1, rng, size=256)[0, :side, :side] - 0.5)
  shadow = 1 - rng.uniform(0, 0.6) * np.clip(
    np.linspace(-0.5, 1.5, side)[:, None] * np.cos(rng.uniform(0, np.pi))
    + np.linspace(-0.5, 1.5, side)[None, :] * np.sin(rng.uniform(0, np.pi)),
    0,
    1,
  )
  ink_level = rng.uniform(0.05, 0.5)
  gray = (paper + page * pressure * (ink_level - paper)) * shadow + rng.normal(0, 0.02, (side, side))
  image = Image.fromarray(np.round(np.clip(gray, 0, 1) * 255).astype(np.uint8), "L")
  image = _perspective(image, rng, 0.08, int(255 * 0.8))
  return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * side / 140)), _jpeg(rng)


def drawing_area(digit_uint8, rng) -> tuple[Image.Image, dict]:
  """A drawing program's export: white strokes on an opaque black drawing area, with transparent margins whose colour
  is black too (RGB 0, alpha 0), as a PNG."""
  h, w = int(rng.integers(200, 400)), int(rng.integers(200, 400))
  area = rng.uniform(0.05, 0.25, 4) * (h, w, h, w)  # the margins: top, left, bottom, right
  top, left, bottom, right = int(area[0]), int(area[1]), h - int(area[2]), w - int(area[3])
  size = int(min(bottom - top, right - left) * rng.uniform(0.6, 0.9))
  ink = images.enlarged(digit_uint8, size)
  y, x = int(rng.integers(top, bottom - size + 1)), int(rng.integers(left, right - size + 1))
  strokes = _placed(ink, (h, w), y, x)
  rgba = np.zeros((h, w, 4), np.uint8)
  rgba[..., :3] = np.round(strokes * 255).astype(np.uint8)[..., None]
  rgba[top:bottom, left:right, 3] = 255
  return Image.fromarray(rgba, "RGBA"), {"format": "PNG"}


def transparent(digit_uint8, rng) -> tuple[Image.Image, dict]:
  """Dark strokes (black or a dark colour) on a fully transparent canvas, the ink in the alpha channel, as a PNG."""
  h, w = int(rng.integers(200, 400)), int(rng.integers(200, 400))
  size = int(min(h, w) * rng.uniform(0.4, 0.8))
  ink = _placed(
    images.enlarged(digit_uint8, size), (h, w), int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
  )
  rgba = np.zeros((h, w, 4), np.uint8)
  rgba[..., :3] = (np.array([0, 0, 0]) if rng.random() < 0.5 else rng.integers(0, 90, 3)).astype(np.uint8)
  rgba[..., 3] = np.round(ink * 255).astype(np.uint8)
  return Image.fromarray(rgba, "RGBA"), {"format": "PNG"}


# Printed lines: light blue, grey.
RULE_COLOURS = np.array([[0.55, 0.7, 0.95], [0.6, 0.6, 0.6]], np.float32)


def ruled_paper(digit_uint8, rng) -> tuple[Image.Image, dict]:
  """A pen of any width on ruled paper (half of them with the digit written on a line) or squared paper, its printed
  lines light blue or grey, light falling off across it, slightly askew, as a JPEG."""
  h, w = int(rng.integers(240, 400)), int(rng.integers(240, 400))
  size = int(min(h, w) * rng.uniform(0.4, 0.65))
  ink = images.pen_line(digit_uint8, size, rng.uniform(1.5, 5.0))
  top, left = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
  step, width = size * rng.uniform(0.3, 0.6), rng.uniform(0.8, 2.0)
  rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
  line = lambda at, start: np.clip(width / 2 + 0.5 - np.abs((at - start + step / 2) % step - step / 2), 0, 1)
  if rng.random() < 0.5:  # ruled: half of the digits sit on a line
    on_line = top + np.flatnonzero(ink.max(1) > 0.5)[-1]
    printed = line(rows, on_line if rng.random() < 0.5 else rng.uniform(0, step))
  else:
    printed = np.maximum(line(rows, rng.uniform(0, step)), line(cols, rng.uniform(0, step)))
  rgb = _ink_on_paper((h, w), _placed(ink, (h, w), top, left), rng, rng.uniform(0.75, 0.95))
  rgb *= 1 - rng.uniform(0.3, 0.8) * printed[..., None] * (1 - RULE_COLOURS[rng.integers(len(RULE_COLOURS))])
  rgb *= _light((h, w), rng, rng.uniform(0.6, 0.9))[..., None]
  image = _perspective(_camera(rgb, rng), rng, 0.04, (128, 128, 128))
  return image, _jpeg(rng)


# Each kind of file: how it is rendered. 'photographed' is the grayscale photo measured before the others were added.
KINDS = {f.__name__: f for f in (ballpoint, page_edge, photographed, drawing_area, transparent, ruled_paper)}


def render(kind: str, digits_uint8, start: int = 0):
  """(image, Image.save's options) for each of `digits_uint8` in one kind, the same on every call; `start` is the first
  digit's index in the test split, so that a subset renders as it does in the whole."""
  for k, digit in enumerate(digits_uint8):
    rng = np.random.default_rng([SEED, list(KINDS).index(kind), start + k])
    yield KINDS[kind](digit, rng)


def write(kind: str, digits_uint8, folder, start: int = 0) -> list[pathlib.Path]:
  """The files of `render`, saved in `folder` as KIND_INDEX.jpg or .png."""
  paths = []
  for k, (image, options) in enumerate(render(kind, digits_uint8, start)):
    paths.append(pathlib.Path(folder) / f"{kind}_{start + k}.{options['format'].lower().replace('jpeg', 'jpg')}")
    image.save(paths[-1], **options)
  return paths


def stroke_overlap(prepared_uint8, digit_uint8) -> float:
  """How well a prepared 28x28 keeps the digit's strokes: the F1 of its ink (>= 128) against the digit's own ink as
  the preparation makes it from a clean enlargement, each pixel counting as matched within one pixel."""
  reference = images.mnist_digit(images.enlarged(digit_uint8, 280) > 0.5)[..., 0] >= 128
  got = prepared_uint8[..., 0] >= 128
  if not got.any():
    return 0.0
  near = lambda mask: ndimage.binary_dilation(mask, np.ones((3, 3), bool))
  precision, recall = (got & near(reference)).sum() / got.sum(), (reference & near(got)).sum() / reference.sum()
  return float(2 * precision * recall / max(precision + recall, 1e-9))


def draw_samples(images, labels, out):
  """One test digit of each class in every kind, a row per kind, on a checkerboard where transparent."""
  from matplotlib.figure import Figure

  picks = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)]
  fig = Figure(figsize=(10, 1.1 * len(KINDS)), layout="constrained")
  axes = fig.subplots(len(KINDS), 10)
  for row, kind in zip(axes, KINDS):
    for ax, pick in zip(row, picks):
      image, _ = next(render(kind, images[pick : pick + 1], pick))
      if image.mode == "RGBA":
        board = np.indices(image.size[::-1]).sum(0) // 16 % 2
        ax.imshow(board, cmap="gray", vmin=-2, vmax=2)
      ax.imshow(image, cmap="gray" if image.mode == "L" else None)
      ax.set_xticks([]), ax.set_yticks([])
    row[0].set_ylabel(kind.replace("_", " "), rotation=0, ha="right", va="center", fontsize=8)
  fig.savefig(out, dpi=72)
