"""Image files into a run's format: uint8 (H, W, C) arrays its model takes as they are.

How a photo is made into an input is the run's dataset.photos: 'digit' makes it the way MNIST was
made (the ink isolated as a binary mask, its stroke brought near MNIST's width, cropped, the longer
side scaled to 20 px by area averaging, which anti-aliases as MNIST's resampling did, and placed in
28x28 by its centre of mass); 'object' the way Fashion-MNIST was (the object on black, longer side
28); 'fit' crops the centre to the run's aspect ratio and resizes, as a folder dataset's images are.
"""

import concurrent.futures
import contextlib
import os
import pathlib
import warnings

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError
from scipy import ndimage
from skimage import filters

from fluxdigits.errors import UserError

# Larger images are reduced on load, before any conversion, to a longer side of REDUCED_SIDE to
# 2*REDUCED_SIDE-1: JPEGs while decoding (1/2 to 1/8), then any format by averaging blocks of pixels
# a strip at a time, so memory stays near the image decoded in its own mode (1 byte a pixel for
# grayscale and palettes, 2 for 16-bit grayscale, 4 for colour, alpha and 32-bit). An image whose
# decoded pixels would take more than MAX_DECODED_BYTES is refused (2 GiB: about 2 gigapixels of
# grayscale, 500 megapixels of colour).
MAX_DECODED_PIXELS = 40_000_000
REDUCED_SIDE = 2048  # twice WORK_SIDE: reducing loses nothing the ink finder would see
MAX_DECODED_BYTES = 2 << 30
STRIP_BYTES = 64 << 20  # a strip of a large image converted at once, in its working mode
WORK_SIDE = 1024  # longer side the ink is found at: enough for a thin pen line, cheap to filter
MIN_WORK_SIDE = 256  # tiny images (e.g. 28x28) are enlarged so the filters have room
BOX = 20  # MNIST: the digit's longer side
CANVAS = 28
SUPERSAMPLE = 8  # the mask is shaped at 8x the 20 px box before area averaging
MNIST_STROKE = 2.9  # median stroke width of MNIST digits in the 28x28 images (binarised at 128)
MIN_CONTRAST = 0.08  # ink darker/lighter than its background by less than this is no ink
MIN_PART = 0.08  # ink components smaller than this share of the largest are noise
MIN_SPAN = 0.1  # marks clear of the image's edge spanning under this share of its shorter side are not a digit
MARK_GAP = 0.01  # ink this close (a share of the image's shorter side) to a mark belongs to it
POLARITY_SIDE = 256  # the ink's polarity is judged on the image reduced to about this longer side
EDGE_BAND = 0.03  # ink this close to the image's edge (a share of its shorter side) is cut by the edge
PAPER_SPREAD = 4  # contrast within this many of the paper's robust standard deviations is the paper's texture
STAND_OUT = 10  # ink stands out from the contrast around it by this many of its robust standard deviations
PAGE_SHARE = 0.4  # ink lies on paper at least this bright, as a share of the image's brighter paper (not a table)
MIN_PAPER = 0.1  # paper darker than this (a table, deep shadow) is taken as this bright, so noise is not ink
RULE_SHARE = 0.4  # a ruled or squared paper's printed line is faint ink along at least this share of the image
RULE_REACH = 0.8  # and reaches across this share of it, however much of it a digit hides
RULE_SPREAD = 2  # it stands out from the paper either side by this many of the paper's robust standard deviations
RULE_TILT = 12  # degrees from the image's axes it may lie at (the page askew, or in perspective)
RULE_WIDTH = 6  # pixels across, at most, at the working size


class NoInk(UserError):
  pass


# --- decoding ------------------------------------------------------------------------------------


def load_image(path) -> Image.Image:
  """An L or RGB image: EXIF orientation applied, transparency shown on its paper (_backdrop); one line naming the file
  if unreadable.
  `path` may also be an open binary file (an upload), whose str() names it in that line."""
  return _load(path)


def fitted(image: Image.Image, height: int, width: int, channels: int) -> np.ndarray:
  """uint8 (height, width, channels): the centre cropped to that aspect ratio and resized (0 keeps the image's own)."""
  image = image.convert({1: "L", 3: "RGB"}.get(channels, image.mode))
  size = (width or image.width, height or image.height)
  if image.size != size:
    image = ImageOps.fit(image, size, Image.Resampling.LANCZOS)
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


@contextlib.contextmanager
def _no_bomb_check():
  # Pillow refuses very large images at open(); we decide after draft() has reduced them.
  limit = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    yield
  finally:
    Image.MAX_IMAGE_PIXELS = limit


def _load(path) -> Image.Image:
  path = path if hasattr(path, "read") else pathlib.Path(path)
  try:
    with _no_bomb_check(), warnings.catch_warnings():
      warnings.simplefilter("ignore")
      image = Image.open(path)
      image = next(ImageSequence.Iterator(image))  # animated GIF/PNG/WebP: the first frame
      large = image.width * image.height > MAX_DECODED_PIXELS
      factor = _reduction(image) if large else 1
      if factor > 1:  # JPEG only: decoded at 1/2-1/8, no smaller than the reduction asks; others unchanged
        image.draft(image.mode, ((image.width + factor - 1) // factor, (image.height + factor - 1) // factor))
      need = image.width * image.height * _bytes_per_pixel(image.mode)
      if need > MAX_DECODED_BYTES:
        raise UserError(
          f"{path}: {image.width}x{image.height} pixels ({image.mode}) would take "
          f"{need / 2**30:.1f} GiB to decode, over the {MAX_DECODED_BYTES >> 30} GiB limit; save it smaller"
        )
      image.load()
      factor = _reduction(image) if large else 1  # what JPEG's decoding left to do
      if factor > 1:
        exif = image.getexif()
        image = _reduce(image, factor)
        image.info["exif"] = exif.tobytes()  # so that exif_transpose below turns the reduced image too
  except FileNotFoundError:
    raise UserError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise UserError(f"{path}: is a directory, not an image") from None
  except UnidentifiedImageError:
    raise UserError(f"{path}: not an image Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP ...)") from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise UserError(f"{path}: truncated or corrupt image ({e}); save it again") from None
  return _flatten_modes(ImageOps.exif_transpose(image))


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16/32-bit grayscale: scaled to 8-bit
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _reduction(image) -> int:
  """The factor that brings a large image's longer side to REDUCED_SIDE..2*REDUCED_SIDE-1."""
  return max(1, max(image.size) // REDUCED_SIDE)


def _bytes_per_pixel(mode) -> int:
  """Pillow's in-memory pixel size of a decoded image."""
  return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def _reduce(image: Image.Image, factor: int) -> Image.Image:
  """The image averaged over factor x factor blocks, as L, RGB or RGBA (16/32-bit scaled as
  _flatten_modes does), converting one strip of rows at a time so no full-size copy is made."""
  if image.mode in _WIDE_MODES:
    scale = 255.0 / (65535.0 if image.getextrema()[1] > 255 else 255.0)
    working, final = "F", "L"
  elif image.mode in _ALPHA_MODES or "transparency" in image.info:
    working, final = "RGBa", "RGBA"  # premultiplied, so transparent pixels' colour does not bleed in
  else:
    working, final = ("L", "L") if image.mode in ("1", "L") else ("RGB", "RGB")  # palette, CMYK, YCbCr ...
  width, height = image.size
  rows = max(1, STRIP_BYTES // (4 * width) // factor) * factor
  reduced = Image.new(working, ((width + factor - 1) // factor, (height + factor - 1) // factor))
  for top in range(0, height, rows):
    strip = image.crop((0, top, width, min(top + rows, height)))
    if working == "F":
      strip = Image.fromarray(np.asarray(strip, np.float32) * np.float32(scale), "F")
    elif working == "RGBa":
      strip = strip.convert("RGBA").convert("RGBa")
    elif strip.mode != working:
      strip = strip.convert(working)
    reduced.paste(strip.reduce(factor), (0, top // factor))
  if working == "F":
    return Image.fromarray(np.clip(np.round(np.asarray(reduced)), 0, 255).astype(np.uint8), "L")
  return reduced.convert(final) if final != working else reduced


def _flatten_modes(image: Image.Image) -> Image.Image:
  """RGB or L: 16/32-bit scaled to 8-bit, CMYK and palettes converted, transparency composited on its paper."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    values = np.asarray(image, np.float64)
    top = 65535.0 if values.max() > 255 else 255.0
    return Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
  if image.mode == "P" or "transparency" in image.info:
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = image.convert("RGBA")
    backdrop = Image.new("RGBA", rgba.size, _backdrop(np.asarray(rgba)))
    return Image.alpha_composite(backdrop, rgba).convert("RGB")
  if image.mode not in ("RGB", "L"):
    return image.convert("RGB")  # CMYK, YCbCr, LAB, 1, ...
  return image


def _backdrop(rgba: np.ndarray) -> tuple:
  """The colour transparent pixels are shown on: where the opaque pixels hold both ink and paper (a drawing area, a
  photo), their commonest shade, so transparent margins join the paper whatever colour they store; where they are all
  one colour (strokes on a clear canvas, the ink in the alpha), the opposite shade, so the strokes stand out."""
  opaque = rgba[..., :3][rgba[..., 3] > 127].astype(np.float32)
  if len(opaque) == 0 or len(opaque) == rgba.shape[0] * rgba.shape[1]:
    return (255, 255, 255, 255)
  shade = opaque.mean(-1)
  paper = np.abs(shade - np.median(shade)) <= 32
  if paper.mean() < 0.995:  # thin strokes may cover well under 1% of a large drawing area
    colour = np.median(opaque[paper], axis=0)
  else:
    colour = np.full(3, 0.0 if np.median(shade) > 127 else 255.0)
  return (*(int(round(c)) for c in colour), 255)


# --- digits --------------------------------------------------------------------------------------


def _work_size(pixels: np.ndarray) -> np.ndarray:
  """(H, W) or (H, W, C) float32 resized to the working size."""
  h, w = pixels.shape[:2]
  # Enlarged small images still stay within WORK_SIDE, however elongated.
  scale = min(max(1.0, MIN_WORK_SIDE / min(h, w)), WORK_SIDE / max(h, w))
  if scale == 1.0:
    return pixels
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
  resize = lambda channel: np.asarray(Image.fromarray(channel, "F").resize(size, resample), np.float32)
  if pixels.ndim == 2:
    return resize(pixels)
  return np.stack([resize(np.ascontiguousarray(pixels[..., c])) for c in range(pixels.shape[2])], -1)


def _range(gray: np.ndarray) -> tuple[float, float]:
  """The image's darkest and lightest values, but for the 1% at each end (noise), unless the ink is less than 1% of
  it (a thin stroke drawn on a large clean canvas)."""
  low, high = np.percentile(gray, [1, 99])
  return (low, high) if high - low >= MIN_CONTRAST else (gray.min(), gray.max())


def _ink_is_dark(gray: np.ndarray) -> bool:
  """Whether the ink is darker than its paper: the frame of the image is mostly background, and lies nearer the
  bright end of the image's range."""
  h, w = gray.shape
  b = max(1, min(h, w) // 20)
  frame = np.concatenate([gray[:b].ravel(), gray[-b:].ravel(), gray[:, :b].ravel(), gray[:, -b:].ravel()])
  low, high = _range(gray)
  return bool(np.median(frame) > (low + high) / 2)


def _paper_is_light(gray: np.ndarray) -> bool:
  """Whether a digit's paper is lighter than its ink: unless the image's frame, its median (the paper, as the ink is
  a small part of it) and the shape of its light parts all say otherwise. The first two alone mislead: a table along
  three edges of a photo makes its frame dark, a shadow over most of it its median."""
  low, high = _range(gray)
  if _ink_is_dark(gray) or np.median(gray) > (low + high) / 2:
    return True
  # Light ink is narrow: most of the image's light pixels go under an opening a fifth of it wide, where a lit part
  # of the page beside a shadow stays.
  small = np.asarray(Image.fromarray(gray, "F").reduce(max(1, max(gray.shape) // POLARITY_SIDE)), np.float32)
  light = small > (low + high) / 2
  narrow = small - ndimage.grey_opening(small, size=(max(3, min(small.shape) // 5),) * 2) > (high - low) / 4
  return bool((light & narrow).sum() < 0.5 * light.sum())


def _ink_bright(gray: np.ndarray) -> np.ndarray:
  """The image with ink bright: dark ink on light paper is inverted."""
  return 1.0 - gray if _ink_is_dark(gray) else gray


def _otsu(values: np.ndarray) -> float:
  hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
  p = hist.astype(np.float64) / max(hist.sum(), 1)
  omega, mu = np.cumsum(p), np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
  between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
  return float(edges[np.argmax(between) + 1])


def _stroke_width(mask: np.ndarray) -> float:
  dt = ndimage.distance_transform_edt(mask)
  ridge = mask & (dt == ndimage.maximum_filter(dt, 3))
  return float(2 * dt[ridge].mean()) if ridge.any() else 1.0


def _luma(rgb: np.ndarray) -> np.ndarray:
  return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _ink_contrast(rgb: np.ndarray, dark: bool, background_size: int) -> np.ndarray:
  """How much each pixel stands out as ink from the paper around it: its shortfall from the paper's brightness as a
  share of that brightness (the paper's, a morphological closing wider than the strokes, keeps the steps of shadows
  and page edges, so light falling off and shadows divide out), or, where more, its colour above the paper's (ink is
  usually more saturated than paper)."""
  rgb = 1.0 - rgb if not dark else rgb  # light ink on dark paper: inverted, so that ink is the darker
  gray = _luma(rgb)
  size = (background_size, background_size)
  paper = np.maximum(ndimage.grey_closing(gray, size=size), MIN_PAPER)
  chroma = rgb.max(-1) - rgb.min(-1)
  colour = chroma - ndimage.grey_opening(chroma, size=size)
  return np.maximum(1.0 - gray / paper, colour / paper)


def _ink_mask(contrast: np.ndarray) -> np.ndarray:
  """Ink pixels: above Otsu's threshold of the contrast, and any connected to those above half of it (hysteresis, so
  that a thin or faint stroke keeps its whole length) but clear of the paper's own texture and noise (PAPER_SPREAD
  robust standard deviations of the contrast, which is mostly paper's, above its median)."""
  contrast = contrast - np.median(contrast)
  level = np.percentile(contrast, 99.5)
  if contrast.max() < MIN_CONTRAST:
    return np.zeros(contrast.shape, bool)
  threshold = max(_otsu(np.clip(contrast / max(level, 1e-6), 0, 1)) * level, MIN_CONTRAST)
  paper = PAPER_SPREAD * 1.4826 * np.median(np.abs(contrast))
  return filters.apply_hysteresis_threshold(
    contrast, min(max(threshold / 2, MIN_CONTRAST, paper), threshold), threshold
  )


def _robust_std(values: np.ndarray) -> float:
  """The standard deviation a normal distribution would have with `values`' median absolute deviation."""
  return 1.4826 * np.median(np.abs(values - np.median(values)))


def _rules(contrast: np.ndarray) -> list[tuple[float, float]]:
  """The printed lines of ruled or squared paper, as (rho, theta) (x cos theta + y sin theta = rho): straight, faint
  (a ridge above the paper's noise) along RULE_SHARE of the image, at most RULE_TILT from one of its axes, clear of
  its edge, printed (`_is_printed`), alike, and at least two of one direction, so that a digit's one long stroke (a
  tightly cropped 1) is never taken for one."""
  from skimage.transform import hough_line, hough_line_peaks  # 0.4 s to import: at the first photo, not every start

  h, w = contrast.shape
  band = max(1, round(EDGE_BAND * min(h, w)))
  noise = _robust_std(contrast)  # the paper's, without MIN_CONTRAST: printed lines may be fainter than ink
  rules = []
  for normal, length, across in ((0.0, h, w), (np.pi / 2, w, h)):  # upright lines (x = rho), then lying ones
    # A line of this direction stands out from what lies either side of it, however dark that is (a top-hat across it).
    across_it = (1, 3 * RULE_WIDTH // 2) if normal == 0.0 else (3 * RULE_WIDTH // 2, 1)
    faint = ndimage.white_tophat(contrast, size=across_it) > RULE_SPREAD * noise
    thetas = normal + np.deg2rad(np.arange(-RULE_TILT, RULE_TILT + 0.01, 0.2))
    _, angles, distances = hough_line_peaks(
      *hough_line(faint, theta=thetas), min_distance=7, threshold=RULE_SHARE * length
    )
    centre = lambda theta: (w - 1) / 2 * np.cos(theta) + (h - 1) / 2 * np.sin(theta)
    lines, strengths = [], []
    for theta, rho in zip(angles, distances):
      if abs(centre(theta) - rho) > across / 2 - band:
        continue
      bands = _bands(contrast.shape, rho, theta, RULE_WIDTH + 2)
      if _is_printed(faint, bands, theta):
        lines.append((float(rho), float(theta)))
        strengths.append(np.median(contrast[bands == RULE_WIDTH + 3]))  # along the line itself
    # Printed lines are alike: one standing out from the others (a long straight stroke of the digit) is ink.
    printed = [line for line, strength in zip(lines, strengths) if strength <= 2 * np.median(strengths)]
    if len(printed) >= 2:
      rules += printed
  return rules


def _is_printed(faint: np.ndarray, bands: np.ndarray, theta: float) -> bool:
  """Whether the faint pixels along a line at angle theta, labelled by `_bands` out to RULE_WIDTH + 2 px either side,
  are a printed line: at most RULE_WIDTH across it (the run of distances across it at which most pixels are faint,
  through the one most are, is no wider), and reaching across RULE_REACH of the image along it, however much of it a
  digit hides."""
  reach = RULE_WIDTH + 2
  profile = (np.bincount(bands.ravel(), faint.ravel(), 2 * reach + 2) / np.maximum(np.bincount(bands.ravel()), 1))[1:]
  runs, _ = ndimage.label(profile >= 0.5)
  if profile.max() < 0.5 or (runs == runs[np.argmax(profile)]).sum() > RULE_WIDTH:
    return False
  rows, cols = np.nonzero((bands > 0) & (np.abs(bands - reach - 1) <= 1))
  along = rows * np.cos(theta) - cols * np.sin(theta)
  inked = faint[rows, cols]
  return bool(inked.any() and np.ptp(along[inked]) >= RULE_REACH * np.ptp(along))


def _bands(shape, rho: float, theta: float, reach: int, per_pixel: int = 1) -> np.ndarray:
  """Labels 1 to 2 * reach + 1 of the pixels by their distance across the line (rho, theta), rounded to 1 / per_pixel,
  from -reach to reach such steps; 0 beyond."""
  rows, cols = np.ogrid[0 : shape[0], 0 : shape[1]]
  across = np.round(per_pixel * (cols * np.cos(theta) + rows * np.sin(theta) - rho)).astype(np.int64)
  return np.where(np.abs(across) <= reach, across + reach + 1, 0)


def _without_rules(contrast: np.ndarray, rules: list[tuple[float, float]]) -> np.ndarray:
  """The contrast with the printed lines `rules` taken out: along each, the line's own contrast at each half pixel
  across it (its median along the whole line, which a digit crosses or lies on for only part of its length) is
  subtracted, so ink crossing or lying on a line keeps what it adds to the line."""
  if not rules:
    return contrast
  reach = RULE_WIDTH + 4  # half pixels either side: the line, found to within a pixel
  cleaned = contrast.copy()
  for rho, theta in rules:
    bands = _bands(contrast.shape, rho, theta, reach, per_pixel=2)
    levels = np.zeros(2 * reach + 2, np.float32)
    present = np.unique(bands[bands > 0])
    levels[present] = ndimage.median(contrast, bands, present)
    cleaned -= levels[bands]
  return np.maximum(cleaned, 0.0)


def _keep_marks(mask: np.ndarray) -> np.ndarray:
  """Drops marks cut by the image's edge (the table, shadows, the paper's border, neighbouring writing) unless no mark
  clear of it spans MIN_SPAN of the image's shorter side, and then keeps the one with the most ink clear of the edge
  (a digit pushed against the frame, not the strip along it); then specks (under MIN_PART of the largest mark kept).
  Spans, not areas, judge the marks clear of the edge: a thin pen's digit has little area. A mark (`_marks`) within
  EDGE_BAND of the shorter side of the edge counts as cut by it (the shadow along a page's border, a table's rim)."""
  labels, n = _marks(mask)
  if n == 0:
    return mask
  band = max(1, round(EDGE_BAND * min(mask.shape)))
  edge = set(np.unique(np.concatenate([labels[:band], labels[-band:], labels[:, :band].T, labels[:, -band:].T], 1)))
  edge -= {0}
  labels *= mask
  areas = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
  marks = [i for i in range(1, n + 1) if i not in edge]
  boxes = ndimage.find_objects(labels, max_label=n)
  span = lambda i: max(s.stop - s.start for s in boxes[i - 1]) if boxes[i - 1] else 0
  if max(map(span, marks), default=0) < MIN_SPAN * min(mask.shape):
    inner = np.zeros(mask.shape, bool)
    inner[band:-band, band:-band] = True
    marks.append(int(np.argmax(ndimage.sum(inner, labels, index=np.arange(1, n + 1)))) + 1)
  largest = max(areas[i - 1] for i in marks)
  return np.isin(labels, [i for i in marks if areas[i - 1] >= MIN_PART * largest])


def _marks(mask: np.ndarray) -> tuple[np.ndarray, int]:
  """Labels of the marks of `mask` (ink within MARK_GAP of the shorter side of other ink is one mark with it, so a thin
  line broken by the camera holds together), and their count; the labels cover the gaps too."""
  gap = max(1, round(MARK_GAP * min(mask.shape)))
  return ndimage.label(ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=gap), np.ones((3, 3)))


def ink_mask(pixels: np.ndarray) -> np.ndarray:
  """The digits' ink in a grayscale (H, W) or RGB (H, W, 3) image of values 0-1, at its working size, as a boolean
  mask."""
  rgb = _work_size(pixels)
  rgb = np.repeat(rgb[..., None], 3, -1) if rgb.ndim == 2 else rgb
  dark = _paper_is_light(rgb.mean(-1))
  coarse = _ink_contrast(rgb, dark, max(3, min(rgb.shape[:2]) // 6))
  rules = _rules(coarse)
  rough = _keep_marks(_ink_mask(_without_rules(coarse, rules)))
  if not rough.any():
    raise NoInk("no ink found: the image is blank or has too little contrast")
  size = int(np.clip(3 * _stroke_width(rough) + 1, 3, min(rgb.shape[:2])))
  contrast = _without_rules(_ink_contrast(rgb, dark, size), rules)
  mask = _keep_marks(_ink_mask(contrast))
  if not mask.any():
    return rough
  gray = _luma(rgb)
  return _on_the_page(mask, contrast, gray if dark else 1.0 - gray, size)


def _on_the_page(mask: np.ndarray, contrast: np.ndarray, gray: np.ndarray, size: int) -> np.ndarray:
  """Drops the marks that are not ink on the page while at least one is. Ink on the page stands out from the contrast
  around it by STAND_OUT of that contrast's robust spread (a table's grain or a shadow's mottling stands out little
  from its like), and what is around it is paper, at least PAGE_SHARE of the image's brighter paper (not a table
  seen beyond the page's edge). `gray` has the ink dark."""
  labels, n = _marks(mask)
  clear = ~ndimage.binary_dilation(mask, iterations=2)
  page = np.percentile(gray, 90)
  kept = []
  for label in range(1, n + 1):
    mark = (labels == label) & mask
    around = ndimage.binary_dilation(mark, iterations=size) & clear
    if not around.any():
      continue
    spread = _robust_std(contrast[around])
    if np.median(contrast[mark]) >= STAND_OUT * spread and np.median(gray[around]) >= PAGE_SHARE * page:
      kept.append(label)
  return np.isin(labels, kept) & mask if kept else mask


def _set_stroke(mask: np.ndarray, target: float) -> np.ndarray:
  """Thickens (fully) or thins (partly, so no stroke breaks) the strokes towards `target` pixels."""
  width = _stroke_width(mask)
  if width < target:
    return ndimage.distance_transform_edt(~mask) <= (target - width) / 2
  radius = min((width - target) / 2, 0.3 * width)
  return ndimage.distance_transform_edt(mask) > radius if radius >= 1 else mask


def mnist_digit(mask: np.ndarray) -> np.ndarray:
  """(28, 28, 1) uint8, ink white on black, from a mask of one digit's ink."""
  rows, cols = np.nonzero(mask)
  crop = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
  h, w = crop.shape
  scale = BOX * SUPERSAMPLE / max(h, w)
  size = (
    max(SUPERSAMPLE, round(w * scale / SUPERSAMPLE) * SUPERSAMPLE),
    max(SUPERSAMPLE, round(h * scale / SUPERSAMPLE) * SUPERSAMPLE),
  )
  big = np.asarray(Image.fromarray(crop.astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR)) > 0.5
  big = _set_stroke(big, MNIST_STROKE * SUPERSAMPLE)
  pad = 2 * SUPERSAMPLE  # thickening may grow the digit past its box
  big = np.pad(big, pad)
  small = big.reshape(big.shape[0] // SUPERSAMPLE, SUPERSAMPLE, big.shape[1] // SUPERSAMPLE, SUPERSAMPLE).mean((1, 3))
  canvas = np.zeros((CANVAS + 2 * small.shape[0], CANVAS + 2 * small.shape[1]), np.float32)
  cy, cx = ndimage.center_of_mass(small)
  top, left = CANVAS // 2 + small.shape[0] - round(cy), CANVAS // 2 + small.shape[1] - round(cx)
  canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
  out = canvas[small.shape[0] : small.shape[0] + CANVAS, small.shape[1] : small.shape[1] + CANVAS]
  return np.round(out * 255).astype(np.uint8)[..., None]


def enlarged(digit_uint8: np.ndarray, size: int) -> np.ndarray:
  """A 28x28 digit's ink (0-1) at `size` x `size` pixels, bicubic."""
  image = Image.fromarray(digit_uint8[..., 0]).resize((size, size), Image.Resampling.BICUBIC)
  return np.clip(np.asarray(image, np.float32) / 255, 0, 1)


def pen_line(digit_uint8: np.ndarray, size: int, width: float) -> np.ndarray:
  """The digit traced by a pen `width` pixels wide at `size` x `size`: the skeleton of its enlarged strokes, thickened,
  anti-aliased."""
  from skimage.morphology import skeletonize  # 0.6 s to import, which predict's start need not pay

  skeleton = skeletonize(enlarged(digit_uint8, size) > 0.5)
  distance = ndimage.distance_transform_edt(~skeleton)
  return np.clip(width / 2 + 0.5 - distance, 0, 1).astype(np.float32)


def pen_traced(digits_uint8: np.ndarray, share: float) -> np.ndarray:
  """A copy of (N, 28, 28, 1) digits in which `share` of them (a fixed choice) are traced by a thin pen and prepared
  as `mnist_digit` prepares a photo's ink. Prepared strokes have one width and MNIST's vary, so a model that never saw
  one-width strokes misreads them (a 9 traced thin reads as a closed-top 4)."""
  rng = np.random.default_rng(0)  # the same digits in every run and resume
  chosen = rng.choice(len(digits_uint8), round(share * len(digits_uint8)), replace=False)
  sizes = [int(rng.integers(100, 200)) for _ in chosen]
  trace = lambda i, size: mnist_digit(pen_line(digits_uint8[i], size, 2.0) > 0.5)
  traced = digits_uint8.copy()
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # scipy and skimage mostly release the GIL
    for i, digit in zip(chosen, pool.map(trace, chosen, sizes)):
      traced[i] = digit
  return traced


def split_digits(mask: np.ndarray) -> list[np.ndarray]:
  """One mask per digit, left to right: ink marks whose column spans overlap belong to one digit."""
  labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
  spans = sorted((s[1].start, s[1].stop, i + 1) for i, s in enumerate(ndimage.find_objects(labels)))
  groups = []
  for start, stop, label in spans:
    if groups and start < groups[-1][1] - 0.25 * min(stop - start, groups[-1][1] - groups[-1][0]):
      groups[-1] = (groups[-1][0], max(stop, groups[-1][1]), groups[-1][2] + [label])
    else:
      groups.append((start, stop, [label]))
  return [np.isin(labels, group) for _, _, group in groups]


def read_digits(path) -> list[np.ndarray]:
  """Each digit of a number written on one line, left to right, as (28, 28, 1) uint8."""
  return [mnist_digit(m) for m in split_digits(_named(path, ink_mask, _rgb(load_image(path))))]


def _named(path, fn, *args):
  try:
    return fn(*args)
  except NoInk as e:
    raise UserError(f"{path}: {e}") from None


# --- one image per file, in each dataset's format --------------------------------------------


def _gray(image: Image.Image) -> np.ndarray:
  return np.asarray(image.convert("L"), np.float32) / 255.0


def _rgb(image: Image.Image) -> np.ndarray:
  return np.asarray(image if image.mode == "L" else image.convert("RGB"), np.float32) / 255.0


def read_mnist(path, image: Image.Image | None = None) -> np.ndarray:
  """A photo of one digit as MNIST made its digits; `image` is the file, already loaded."""
  return mnist_digit(_named(path, ink_mask, _rgb(image or load_image(path))))


def read_fashion_mnist(path, image: Image.Image | None = None) -> np.ndarray:
  """The object bright on black, as Fashion-MNIST's product photos were: trimmed, longer side 28, centred."""
  gray = _ink_bright(_gray(image or load_image(path)))
  background = np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))
  rows, cols = np.nonzero(np.abs(gray - background) > MIN_CONTRAST)
  if not len(rows):
    raise UserError(f"{path}: no object found: the image is blank or has too little contrast")
  crop = np.clip(gray - background, 0, 1)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
  image = Image.fromarray(np.round(crop / max(crop.max(), 1e-6) * 255).astype(np.uint8), "L")
  image = ImageOps.pad(image, (CANVAS, CANVAS), Image.Resampling.LANCZOS, color=0)
  return np.asarray(image, np.uint8)[..., None]


READERS = {"digit": read_mnist, "object": read_fashion_mnist}  # dataset.photos -> a 28x28 grayscale reader
READER_SHAPE = (CANVAS, CANVAS, 1)


def preparation(photos: str, image_shape) -> str:
  """How a run's files are read: `photos` (config dataset.photos) where it fits the data, whose images READERS make
  28x28 grayscale; else 'fit', as a folder's images were read for training."""
  return photos if photos in READERS and tuple(image_shape) == READER_SHAPE else "fit"


def _as_made(image: Image.Image, image_shape) -> bool:
  """Whether a file is already one of the dataset's images: its size and channels, ink bright on a dark frame."""
  height, width, channels = image_shape
  return (
    image.size == (width, height) and image.mode == {1: "L", 3: "RGB"}.get(channels) and not _ink_is_dark(_gray(image))
  )


def read_photo(path, photos: str, image_shape) -> np.ndarray:
  """One image file (a path or an open binary file) as a run's input, uint8 `image_shape`, made as
  `preparation(photos, image_shape)` says; a file already in the dataset's format is taken as it is, so that predict
  reads a test image as evaluation did."""
  height, width, channels = image_shape
  image = load_image(path)
  how = preparation(photos, image_shape)
  if how == "fit" or _as_made(image, image_shape):
    return fitted(image, height, width, channels)
  return READERS[how](path, image)
