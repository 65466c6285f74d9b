"""Image files into MNIST's format: polarity, centring, odd modes, huge and bad files, on synthetic images."""

import gzip
import json
import pathlib
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import IDX_DIR, REPO
from PIL import Image, ImageChops, ImageDraw
from scipy import ndimage

from fluxdigits import images
from fluxdigits.errors import UserError

sys.path.insert(0, str(REPO / "benchmarks"))
import photos as renderings  # noqa: E402  (benchmarks/photos.py, on the path above)


def drawn_seven(size=(300, 400), ink=20, paper=235, width=12, offset=(0, 0)):
  """A '7' drawn off-centre, dark ink on light paper unless ink > paper."""
  image = Image.new("L", size, paper)
  draw = ImageDraw.Draw(image)
  x, y = 60 + offset[0], 80 + offset[1]
  draw.line([(x, y), (x + 120, y), (x + 50, y + 200)], fill=ink, width=width)
  return image


def check_mnist_like(digit):
  assert digit.shape == (28, 28, 1) and digit.dtype == np.uint8
  ink = digit[..., 0] > 128
  rows, cols = np.nonzero(ink)
  assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 in (19, 20, 21)  # longer side 20 px
  cy, cx = ndimage.center_of_mass(digit[..., 0].astype(float))
  assert abs(cy - 14) < 1 and abs(cx - 14) < 1  # centre of mass in the middle
  assert digit[0].max() == 0 and digit[:, 0].max() == 0  # black background


@pytest.mark.fast
@pytest.mark.parametrize("ink,paper", [(20, 235), (235, 20)])
def test_both_polarities_give_white_ink_on_black(tmp_path, ink, paper):
  path = tmp_path / "seven.png"
  drawn_seven(ink=ink, paper=paper).save(path)
  check_mnist_like(images.read_mnist(path))


@pytest.mark.fast
def test_position_and_shadow_do_not_change_the_input(tmp_path):
  plain, shadowed = tmp_path / "plain.png", tmp_path / "shadow.png"
  drawn_seven().save(plain)
  shifted = np.asarray(drawn_seven(offset=(90, 100), size=(450, 500)), np.float32)
  gradient = np.linspace(0.45, 1.0, shifted.shape[1])[None, :]  # light falling off to one side
  Image.fromarray((shifted * gradient).astype(np.uint8)).save(shadowed)
  a, b = images.read_mnist(plain).astype(int), images.read_mnist(shadowed).astype(int)
  assert np.abs(a - b).mean() < 12


@pytest.mark.fast
def test_the_table_along_a_photos_edge_is_not_taken_for_the_digit(tmp_path):
  """A photo taken askew shows a strip of the table along two edges: longer than the faint digit's strokes."""
  plain, framed = tmp_path / "plain.png", tmp_path / "framed.png"
  drawn_seven(ink=120).save(plain)
  image = drawn_seven(ink=120)
  ImageDraw.Draw(image).polygon([(0, 0), (300, 0), (300, 6), (12, 14), (16, 400), (0, 400)], fill=150)
  image.save(framed)
  a, b = images.read_mnist(plain).astype(int), images.read_mnist(framed).astype(int)
  assert np.abs(a - b).mean() < 12


@pytest.mark.fast
def test_thin_and_thick_strokes_end_near_mnist_width(tmp_path):
  widths = []
  for width in (2, 40):
    path = tmp_path / f"w{width}.png"
    drawn_seven(size=(600, 700), width=width).save(path)
    widths.append(images._stroke_width(images.read_mnist(path)[..., 0] > 100))
  assert all(1.5 < w < 5 for w in widths), widths


@pytest.mark.fast
def test_blank_image_is_one_error_naming_the_file(tmp_path):
  path = tmp_path / "blank.png"
  Image.new("L", (200, 200), 240).save(path)
  with pytest.raises(UserError, match="blank.png.*no ink"):
    images.read_mnist(path)


@pytest.mark.fast
@pytest.mark.parametrize("content,match", [(b"hello", "not an image"), (None, "no such file")])
def test_not_an_image(tmp_path, content, match):
  path = tmp_path / "x.png"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(UserError, match=match):
    images.read_mnist(path)


@pytest.mark.fast
def test_truncated_file(tmp_path):
  full, cut = tmp_path / "full.png", tmp_path / "cut.png"
  drawn_seven().save(full)
  cut.write_bytes(full.read_bytes()[:400])
  with pytest.raises(UserError, match="cut.png: truncated or corrupt"):
    images.read_mnist(cut)


@pytest.mark.fast
def test_palette_cmyk_16_bit_rgba_and_animated_gif(tmp_path):
  seven = drawn_seven()
  reference = images.read_mnist(_save(tmp_path / "ref.png", seven)).astype(int)
  variants = {
    "palette.png": seven.convert("P"),
    "cmyk.jpg": seven.convert("CMYK"),
    "sixteen.png": Image.fromarray(np.asarray(seven, np.uint16) * 257),
  }
  rgba = Image.new("RGBA", seven.size, (0, 0, 0, 0))  # transparent background: ink only
  rgba.putalpha(Image.eval(seven, lambda v: 255 - v))
  variants["alpha.png"] = rgba
  for name, image in variants.items():
    got = images.read_mnist(_save(tmp_path / name, image)).astype(int)
    assert np.abs(got - reference).mean() < 12, name
  gif = tmp_path / "anim.gif"
  seven.save(gif, save_all=True, append_images=[Image.new("L", seven.size, 235)], duration=100)
  assert np.abs(images.read_mnist(gif).astype(int) - reference).mean() < 12


def _save(path, image):
  image.save(path)
  return path


@pytest.mark.fast
def test_huge_jpeg_is_reduced_while_decoding(tmp_path):
  big = drawn_seven(size=(300, 400)).resize((12000, 16000), Image.Resampling.NEAREST)
  big.save(tmp_path / "big.jpg", quality=50)
  del big
  check_mnist_like(images.read_mnist(tmp_path / "big.jpg"))


# Peak resident memory of a fresh process reading one file as predict does. VmHWM, not ru_maxrss:
# Linux carries the parent's high-water mark into ru_maxrss across fork and exec.
PEAK_MEMORY = """
import json, sys
def peak_kib():
  return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
from fluxdigits import images
before = peak_kib()
digit = images.read_mnist(sys.argv[1])
print(json.dumps({"before_kib": before, "peak_kib": peak_kib(), "digit": digit.tolist()}))
"""


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_20000x20000_png_is_downscaled_on_load_with_bounded_memory(tmp_path):
  path = tmp_path / "huge.png"
  image = Image.new("L", (20000, 20000), 235)  # 400 megapixels, 381 MiB decoded; the file is 2 MB
  ImageDraw.Draw(image).line([(5000, 4000), (14000, 4000), (8500, 17000)], fill=20, width=900)  # a '7'
  image.save(path, compress_level=1)
  del image
  result = subprocess.run(
    [sys.executable, "-c", PEAK_MEMORY, str(path)], capture_output=True, text=True, timeout=300, cwd=REPO
  )
  assert result.returncode == 0, result.stderr
  got = json.loads(result.stdout)
  check_mnist_like(np.array(got["digit"], np.uint8))
  growth_mib, peak_mib = (got["peak_kib"] - got["before_kib"]) / 1024, got["peak_kib"] / 1024
  # The image decoded as it is (381 MiB) and strips of it; a full-size float or RGB copy would add 1.5 GiB.
  assert growth_mib < 1024 and peak_mib < 2560, (growth_mib, peak_mib)


@pytest.mark.fast
def test_reduction_keeps_every_mode_and_the_orientation(tmp_path, monkeypatch):
  seven = drawn_seven()
  reference = images.read_mnist(_save(tmp_path / "ref.png", seven)).astype(int)
  rgba = Image.new("RGBA", seven.size, (0, 0, 0, 0))
  rgba.putalpha(Image.eval(seven, lambda v: 255 - v))
  palette = seven.convert("P")
  palette.info["transparency"] = palette.getpixel((0, 0))
  variants = {
    "l.png": seven,
    "one.png": seven.point(lambda v: 255 * (v > 128)).convert("1"),
    "palette.png": palette,
    "rgb.png": seven.convert("RGB"),
    "cmyk.jpg": seven.convert("CMYK"),
    "alpha.png": rgba,
    "la.png": rgba.convert("LA"),
    "sixteen.png": Image.fromarray(np.asarray(seven, np.uint16) * 257),
    "float.tif": Image.fromarray(np.asarray(seven, np.float32), "F"),
  }
  for name, image in variants.items():
    _save(tmp_path / name, image)
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
  seven.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.png", exif=exif.tobytes())
  # Reduction as for a huge image, on 300x400 ones: halved, in strips of a few rows.
  monkeypatch.setattr(images, "MAX_DECODED_PIXELS", 1000)
  monkeypatch.setattr(images, "REDUCED_SIDE", 150)
  monkeypatch.setattr(images, "STRIP_BYTES", 5000)
  for name in [*variants, "turned.png"]:
    assert images._load(tmp_path / name).size == (150, 200), name
    got = images.read_mnist(tmp_path / name).astype(int)
    assert np.abs(got - reference).mean() < 12, name


@pytest.mark.fast
def test_a_file_over_the_decoding_limit_is_refused_before_decoding(tmp_path):
  png = bytearray(_save(tmp_path / "small.png", drawn_seven()).read_bytes())
  png[16:24] = struct.pack(">II", 50000, 50000)  # IHDR's width and height: 2.5 gigapixels, 2.3 GiB as L
  png[29:33] = struct.pack(">I", zlib.crc32(png[12:29]))
  (tmp_path / "bomb.png").write_bytes(png)
  with pytest.raises(
    UserError,
    match=r"bomb.png: 50000x50000 pixels \(L\) would take 2.3 GiB to decode, "
    r"over the 2 GiB limit",
  ):
    images.read_mnist(tmp_path / "bomb.png")


@pytest.mark.fast
def test_a_number_is_split_left_to_right(tmp_path):
  image = Image.new("L", (700, 260), 230)
  draw = ImageDraw.Draw(image)
  draw.line([(40, 40), (40, 220)], fill=10, width=14)  # 1
  draw.ellipse([(180, 40), (300, 220)], outline=10, width=14)  # 0
  draw.line([(400, 40), (520, 40), (450, 220)], fill=10, width=14)  # 7
  path = _save(tmp_path / "number.png", image)
  digits = images.read_digits(path)
  assert len(digits) == 3
  widths = [np.ptp(np.nonzero(d[..., 0].max(0) > 128)[0]) for d in digits]
  assert widths[0] < 8 < widths[1]  # the '1' first, then the round '0'


@pytest.mark.fast
def test_cifar_and_fashion_formats(tmp_path):
  path = _save(tmp_path / "photo.png", Image.new("RGB", (640, 480), (200, 30, 30)))
  cifar = images.read_photo(path, "fit", (32, 32, 3))
  assert cifar.shape == (32, 32, 3) and cifar.dtype == np.uint8 and tuple(cifar[16, 16]) == (200, 30, 30)
  shirt = Image.new("L", (300, 500), 255)
  ImageDraw.Draw(shirt).rectangle([(50, 100), (250, 400)], fill=60)
  fashion = images.read_fashion_mnist(_save(tmp_path / "shirt.png", shirt))
  assert fashion.shape == (28, 28, 1) and fashion[14, 14, 0] > 200 and fashion[0, 0, 0] == 0


@pytest.mark.parametrize("dataset, photos", [("mnist", "digit"), ("fashion_mnist", "object"), ("cifar10", "fit")])
def test_a_dataset_s_own_images_saved_as_png_are_read_back_as_they_were(tmp_path, dataset, photos):
  """What makes predict on a run's own test files give the evaluation's classes."""
  from fluxdigits import data

  test = data.read_tfds_split(dataset, "test", None, use_cache=True, log=lambda line: None)
  for n, image in enumerate(test.images[:300]):
    path = tmp_path / f"{n}.png"
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path)
    np.testing.assert_array_equal(images.read_photo(path, photos, image.shape), image, err_msg=str(n))


@pytest.mark.fast
@pytest.mark.parametrize(
  "photos, shape, expected",
  [
    ("digit", (28, 28, 1), "digit"),
    ("object", (28, 28, 1), "object"),
    ("digit", (16, 16, 1), "fit"),
    ("digit", (28, 28, 3), "fit"),
    ("fit", (28, 28, 1), "fit"),
  ],
)
def test_a_photo_preparation_applies_only_to_the_data_it_fits(photos, shape, expected):
  assert images.preparation(photos, shape) == expected


@pytest.mark.fast
def test_a_digit_photo_on_white_paper_at_28x28_is_still_prepared(tmp_path):
  dark_on_white = np.full((28, 28), 255, np.uint8)
  dark_on_white[6:22, 12:16] = 0
  Image.fromarray(dark_on_white).save(tmp_path / "one.png")
  prepared = images.read_photo(tmp_path / "one.png", "digit", (28, 28, 1))
  assert prepared[0, 0, 0] == 0 and prepared.max() == 255  # white ink on black, as MNIST's


def mnist_test_digits(n: int) -> np.ndarray:
  """The first `n` digits of MNIST's test split, (n, 28, 28, 1) uint8, read straight from its IDX file."""
  with gzip.open(IDX_DIR / "t10k-images-idx3-ubyte.gz") as f:
    f.read(16)  # magic number and the three sizes
    return np.frombuffer(f.read(n * 28 * 28), np.uint8).reshape(n, 28, 28, 1)


@pytest.mark.fast
@pytest.mark.parametrize(
  "kind, least_mean, least_median",
  [
    ("drawing_area", 0.95, 0.95),
    ("transparent", 0.95, 0.95),
    ("ballpoint", 0.8, 0.9),
    ("page_edge", 0.9, 0.95),
    ("ruled_paper", 0.95, 0.95),
  ],
)
def test_test_digits_photographed_and_drawn_keep_their_strokes(tmp_path, kind, least_mean, least_median):
  """Transparent margins around an opaque drawing area, dark strokes on a clear canvas, a thin coloured pen under a
  shadow, a page's edges and ruled or squared paper in a photo: the prepared 28x28 overlaps the digit's own strokes
  (benchmarks/photos.py)."""
  digits = mnist_test_digits(10)
  kept = [
    renderings.stroke_overlap(images.read_mnist(path), digit)
    for path, digit in zip(renderings.write(kind, digits, tmp_path), digits)
  ]
  assert np.mean(kept) >= least_mean and np.median(kept) >= least_median, np.round(kept, 2)


def strokes_kept(kind: str, picks, folder):
  """Each picked test digit rendered as `kind` keeps its strokes once prepared (stroke overlap at least 0.9)."""
  digits = mnist_test_digits(max(picks) + 1)
  kept = [
    renderings.stroke_overlap(images.read_mnist(renderings.write(kind, digits[k : k + 1], folder, k)[0]), digits[k])
    for k in picks
  ]
  assert min(kept) >= 0.9, np.round(kept, 2)


@pytest.mark.fast
def test_the_grain_of_a_table_beyond_the_page_s_edge_is_not_ink(tmp_path):
  """Photos of a page whose table shows inside the frame, clear of the image's edge: its grain stands out from the
  dark table about as much as a pen's line from the paper, but it is not on the page (these test digits' renderings
  once came out as blobs of table, the digit a speck beside them)."""
  picks = [62, 133, 136, 183, 224]
  strokes_kept("page_edge", picks, tmp_path)


@pytest.mark.fast
@pytest.mark.parametrize(
  "strokes, canvas", [((255, 255, 255, 255), (0, 0, 0, 0)), ((0, 0, 0, 255), (255, 255, 255, 0))]
)
def test_the_ink_of_a_clear_canvas_shows_whatever_colour_its_clear_pixels_store(tmp_path, strokes, canvas):
  """White strokes on a clear black canvas and black strokes on a clear white one: the opaque pixels are all ink."""
  reference = images.read_mnist(_save(tmp_path / "ref.png", drawn_seven())).astype(int)
  rgba = Image.new("RGBA", (300, 400), canvas)
  rgba.paste(Image.new("RGBA", rgba.size, strokes), mask=Image.eval(drawn_seven(), lambda v: 255 - v))
  got = images.read_mnist(_save(tmp_path / "clear.png", rgba)).astype(int)
  assert np.abs(got - reference).mean() < 12


@pytest.mark.fast
def test_pen_traced_training_digits_keep_their_strokes_at_mnist_width():
  """augment.pen_traced: the chosen share of digits, always the same ones, traced thin and prepared as a photo is:
  one stroke width near MNIST's median, over the digit's own strokes; the others stay as they were."""
  digits = mnist_test_digits(40)
  traced = images.pen_traced(digits, 0.25)
  changed = np.flatnonzero((traced != digits).any((1, 2, 3)))
  assert len(changed) == 10 and np.array_equal(images.pen_traced(digits, 0.25), traced)
  widths = [images._stroke_width(traced[i, ..., 0] >= 128) for i in changed]
  assert abs(np.median(widths) - images.MNIST_STROKE) <= 0.5, np.round(widths, 2)
  overlaps = [renderings.stroke_overlap(traced[i], digits[i]) for i in changed]
  assert min(overlaps) >= 0.9, np.round(overlaps, 2)


@pytest.mark.fast
def test_a_digit_against_the_frame_is_kept_over_marks_the_edge_cuts_more(tmp_path):
  """Photos in which every mark touches the image's edge, the digit too (pushed there by the perspective), and another
  mark along the edge has more ink: the digit has the most ink clear of the edge (these renderings once came out as
  the other mark)."""
  picks = [326, 417]
  strokes_kept("ballpoint", picks, tmp_path)


@pytest.mark.fast
def test_a_digit_against_the_frame_is_kept_over_specks_clear_of_it(tmp_path):
  """A digit whose bar runs into the frame, and specks clear of the edge (a JPEG's noise in a deep shadow) scattered
  over the image: the specks are no digit, however far apart they lie."""
  plain, specked = tmp_path / "plain.png", tmp_path / "specked.png"
  drawn_seven(offset=(120, 0)).save(plain)  # its bar runs into the right edge
  image = drawn_seven(offset=(120, 0))
  for x, y in [(40, 40), (40, 360), (150, 370)]:
    ImageDraw.Draw(image).ellipse([x - 3, y - 3, x + 3, y + 3], fill=20)
  image.save(specked)
  a, b = images.read_mnist(plain).astype(int), images.read_mnist(specked).astype(int)
  assert np.abs(a - b).mean() < 12


def printed_lines(paper: str, size=(300, 400), step=40, at=80) -> Image.Image:
  """Light paper, plain, ruled (a light grey line every `step` px, one of them at row `at`) or squared."""
  image = Image.new("L", size, 235)
  draw = ImageDraw.Draw(image)
  for y in range(at % step, size[1], step) if paper in ("ruled", "squared") else ():
    draw.line([(0, y), (size[0], y)], fill=175, width=2)
  for x in range(at % step, size[0], step) if paper == "squared" else ():
    draw.line([(x, 0), (x, size[1])], fill=175, width=2)
  return image


@pytest.mark.fast
@pytest.mark.parametrize("paper", ["ruled", "squared"])
def test_the_printed_lines_of_ruled_and_squared_paper_are_not_ink(tmp_path, paper):
  """A seven written on ruled or squared paper, its bar lying along a printed line: prepared as on plain paper (before,
  the lines joined the digit and the 28x28 was a grid)."""
  plain = images.read_mnist(_save(tmp_path / "plain.png", drawn_seven())).astype(int)
  on_lines = ImageChops.darker(printed_lines(paper), drawn_seven())  # the seven's bar is at row 80
  assert np.abs(images.read_mnist(_save(tmp_path / f"{paper}.png", on_lines)).astype(int) - plain).mean() < 12


@pytest.mark.fast
@pytest.mark.parametrize("paper", ["plain", "ruled", "squared"])
def test_a_long_thin_stroke_is_ink_on_any_paper(tmp_path, paper):
  """A 1 drawn with a thin pen down most of a clean canvas, on plain, ruled and squared paper: it is ink, all of it.
  Its strokes are under 1% of the image (once judged as paper, so no ink was found), and on squared paper it is as
  long and straight as the printed lines (but far darker than they are)."""
  image = printed_lines(paper)
  ImageDraw.Draw(image).line([(150, 30), (152, 370)], fill=20, width=3)
  ink = images.read_mnist(_save(tmp_path / f"{paper}.png", image))[..., 0] >= 128
  rows, cols = np.nonzero(ink)
  assert np.ptp(rows) + 1 >= 19 and np.ptp(cols) + 1 <= 4 and ink.sum() >= 19
