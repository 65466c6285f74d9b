"""Datasets as numpy arrays, and the index batches that walk them.

Three sources (SOURCES, and tfds for any other name): any tfds image-classification dataset, a folder of images
(DIR/train/<class>/*, DIR/test/<class>/*, as Keras' image_dataset_from_directory and torchvision's ImageFolder read),
and MNIST's IDX files. What a run needs to know of its data (class names, image shape, normalisation)
comes from the data itself, and is recorded in the run's dataset.json.

A split is small enough to live whole in device memory (MNIST is 47 MB of uint8), so the trainer
copies it to the devices once and every batch is a gather by index there: the host only makes the
index arrays below, which are pure functions of (seed, epoch).
"""

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import pathlib
import zipfile
import zlib
from typing import Any, Callable

import numpy as np
from PIL import Image

from fluxdigits.errors import UserError, warn

IDX_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class _WithoutOpenCvAdvice(logging.Filter):
  """tfds advises installing OpenCV on every decode; PIL decodes MNIST's PNGs fine, and once only (then the cache)."""

  def filter(self, record):
    return not record.getMessage().startswith("OpenCV is not installed")


_OPENCV_ADVICE = _WithoutOpenCvAdvice()


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8, (N, H, W, C)
  labels: np.ndarray  # int32, (N,)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index) -> "Split":
    return Split(self.images[index], self.labels[index])


@dataclasses.dataclass(frozen=True)
class Info:
  """What a trained model needs to know of its data: recorded in a run's dataset.json, read by predict and export."""

  class_names: tuple
  image_shape: tuple  # (H, W, C) of the uint8 images
  mean: tuple  # per channel, of pixels scaled to [0, 1]: inputs are (pixels / 255 - mean) / std
  std: tuple

  def to_json(self) -> dict:
    return {key: list(value) for key, value in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, record: dict) -> "Info":
    return cls(**{f.name: tuple(record[f.name]) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split
  validation: Split
  test: Split
  info: Info

  @property
  def class_names(self) -> tuple:
    return self.info.class_names

  @property
  def mean(self) -> tuple:
    return self.info.mean

  @property
  def std(self) -> tuple:
    return self.info.std


def resolved_data_dir(config) -> str:
  """Where the config's data really comes from, as an absolute path: what a run records in its config.json."""
  if config.dataset.data_dir:
    return str(pathlib.Path(config.dataset.data_dir).expanduser().absolute())
  if os.environ.get("TFDS_DATA_DIR"):
    return str(pathlib.Path(os.environ["TFDS_DATA_DIR"]).expanduser().absolute())
  import tensorflow_datasets as tfds

  return str(tfds.core.constants.DATA_DIR)


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a dataset.name's examples come from. `check(name, data_dir)` raises UserError cheaply where they cannot be
  (a command calls it before it makes a run's folder); `read(name, data_dir, dataset_config, log)` returns the train
  and test Splits, at dataset.image_size and dataset.channels where those are set, and the class names."""

  check: Callable[[str, str], Any]
  read: Callable[..., tuple[Split, Split, tuple]]
  where: str  # how errors name the data: formatted with name and data_dir
  needs_data_dir: bool = False


def _read_tfds(name, data_dir, d, log):
  train, test = (read_tfds_split(name, split, data_dir, d.cache, log) for split in ("train", "test"))
  return _shaped(train, d), _shaped(test, d), tfds_class_names(name, data_dir)


def _read_folder(name, data_dir, d, log):
  class_names = folder_classes(data_dir)
  train, test = (
    read_folder_split(data_dir, split, class_names, d.image_size, d.channels, d.cache, log)
    for split in ("train", "test")
  )
  return train, test, class_names


def _read_idx(name, data_dir, d, log):
  log(f"loading IDX files from {data_dir}")
  train, test = (read_idx_split(data_dir, split) for split in ("train", "test"))
  return _shaped(train, d), _shaped(test, d), tuple("0123456789")


def _shaped(split: Split, d) -> Split:
  return Split(to_shape(split.images, d.image_size, d.channels), split.labels) if d.image_size or d.channels else split


# dataset.name -> its Source; any other name is a tfds dataset's.
SOURCES = {
  "folder": Source(
    lambda name, data_dir: folder_classes(data_dir), _read_folder, "the image folder {data_dir}", needs_data_dir=True
  ),
  "idx": Source(
    lambda name, data_dir: _idx_folder(data_dir), _read_idx, "the IDX files in {data_dir}", needs_data_dir=True
  ),
}
TFDS = Source(lambda name, data_dir: _registered_tfds(name, data_dir), _read_tfds, "the prepared {name} dataset")


def load(config, log=print) -> Dataset:
  """The dataset a config names, its training split divided into train and validation."""
  name, d, source = config.dataset.name, config.dataset, _source(config)
  data_dir = resolved_data_dir(config)
  train, test, class_names = source.read(name, data_dir, d, log)
  check_splits(source.where.format(name=name, data_dir=data_dir), train, test, len(class_names))
  train, validation = hold_out(train, config.validation_fraction)
  if d.max_train_examples:
    train = train[: d.max_train_examples]
  if d.max_test_examples:
    test = test[: d.max_test_examples]
  channels = train.images.shape[-1]
  mean, std = channel_statistics(train.images) if d.standardize else ((0.0,) * channels, (1.0,) * channels)
  return Dataset(name, train, validation, test, Info(class_names, train.images.shape[1:], mean, std))


def pen_traced(dataset: Dataset, share: float, use_cache: bool, log=print) -> Dataset:
  """`dataset` with `share` of its training digits traced by a pen and prepared as photos are (images.pen_traced),
  cached as decoded splits are. The train step's data only: reports and exports read the splits as they are."""
  if dataset.info.image_shape != (28, 28, 1):
    raise UserError(
      f"augment.pen_traced needs 28x28 grayscale digits, and {dataset.name}'s images are {dataset.info.image_shape}: "
      "set --config.augment.pen_traced=0"
    )
  from skimage import __version__ as skimage_version

  from fluxdigits import images as image_files

  train, count = dataset.train, round(share * len(dataset.train))
  # Keyed by the digits, the share and the code that traces them, so a changed preparation traces again.
  key = hashlib.sha256(train.images.tobytes())
  key.update(train.labels.tobytes())
  key.update(f"{share!r} {skimage_version}".encode() + pathlib.Path(image_files.__file__).read_bytes())
  cache_file = _cache_root() / "pen-traced" / f"{key.hexdigest()[:16]}.npz" if use_cache else None
  traced = _through_cache(
    cache_file,
    len(train),
    lambda: Split(image_files.pen_traced(train.images, share), train.labels),
    log,
    f"loading {count} training digits traced by pen from the cache",
    f"tracing {count} training digits by pen, as photos are prepared",
  )
  return dataclasses.replace(dataset, train=traced)


def check_source(config) -> None:
  """Raises UserError for data that cannot be there: an unknown tfds name, a missing folder. Cheap: a command
  checks it before it creates a workdir."""
  _source(config).check(config.dataset.name, resolved_data_dir(config))


def _source(config) -> Source:
  name, source = config.dataset.name, SOURCES.get(config.dataset.name, TFDS)
  if source.needs_data_dir and not config.dataset.data_dir:
    raise UserError(
      f"dataset.name={name!r} needs dataset.data_dir: set --config.dataset.data_dir to the folder that holds the data"
    )
  return source


def channel_statistics(images: np.ndarray, chunk: int = 4096) -> tuple[tuple, tuple]:
  """Per-channel mean and standard deviation of uint8 images scaled to [0, 1], summed a chunk at a time."""
  total, squares = np.zeros(images.shape[-1]), np.zeros(images.shape[-1])
  for start in range(0, len(images), chunk):
    x = images[start : start + chunk].astype(np.float64) / 255.0
    total += x.sum(axis=(0, 1, 2))
    squares += (x * x).sum(axis=(0, 1, 2))
  count = images.size / images.shape[-1]
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
  return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def check_splits(where: str, train: Split, test: Split, classes: int) -> None:
  """Shapes, counts and labels a model of this dataset can use: bad files fail here, not after training."""
  for split_name, split in (("train", train), ("test", test)):
    if len(split) == 0:
      raise UserError(f"the {split_name} split of {where} holds no examples; add some")
    if split.images.ndim != 4 or split.images.shape[-1] not in (1, 3):
      raise UserError(
        f"the {split_name} images of {where} have shape {split.images.shape[1:]}; fluxdigits trains "
        "(height, width, 1 or 3 channels) images: set dataset.channels to 1 or 3"
      )
    bad = (split.labels < 0) | (split.labels >= classes)
    if bad.any():
      raise UserError(
        f"the {split_name} labels of {where} hold {int(bad.sum())} values outside 0-{classes - 1} "
        f"(e.g. {int(split.labels[bad][0])} at index {int(np.argmax(bad))}); the file is damaged or "
        "from another dataset"
      )
  if train.images.shape[1:] != test.images.shape[1:]:
    raise UserError(
      f"the train images of {where} are {train.images.shape[1:]} but the test images "
      f"{test.images.shape[1:]}; set dataset.image_size and dataset.channels to bring them to one shape"
    )


def to_shape(images: np.ndarray, size: int, channels: int) -> np.ndarray:
  """uint8 images (N, H, W, C) resized to size x size (0: unchanged) and converted to `channels` (0: unchanged)."""
  from fluxdigits import images as image_files

  if (not size or images.shape[1:3] == (size, size)) and channels in (0, images.shape[-1]):
    return images
  return np.stack(
    [
      image_files.fitted(Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image), size, size, channels)
      for image in images
    ]
  )


def hold_out(split: Split, fraction: float) -> tuple[Split, Split]:
  """The last `fraction` of the examples become validation, as Keras' validation_split does."""
  n_validation = int(round(len(split) * fraction))
  cut = len(split) - n_validation
  return split[:cut], split[cut:]


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The training order of an epoch: a function of (seed, epoch) alone, so a resumed run repeats it."""
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def train_batches(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
  """(steps, batch_size) example indices; the last partial batch is left out, a new one each epoch."""
  steps = n // batch_size
  return epoch_order(seed, epoch, n)[: steps * batch_size].reshape(steps, batch_size)


def eval_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, mask), both (batches, batch_size): every example once, the last batch padded and masked."""
  batches = -(-n // batch_size)
  positions = np.arange(batches * batch_size)
  mask = positions < n
  return np.where(mask, positions, 0).astype(np.int32).reshape(batches, batch_size), mask.reshape(batches, batch_size)


# --- tfds ----------------------------------------------------------------------------------------


def tfds_class_names(name: str, data_dir: str | None) -> tuple:
  """The names of a tfds dataset's classes, from its info; one line if it is no image classification dataset."""
  import tensorflow_datasets as tfds

  features = tfds.builder(name, data_dir=data_dir).info.features
  if "image" not in features or "label" not in features or not hasattr(features["label"], "names"):
    raise UserError(
      f"tfds dataset {name!r} has features {', '.join(features)}, not an 'image' and a class 'label'; "
      "fluxdigits trains image classification datasets"
    )
  return tuple(features["label"].names)


def read_tfds_split(name: str, split: str, data_dir: str | None, use_cache: bool, log=print) -> Split:
  import tensorflow_datasets as tfds

  source = _tfds_source(tfds, name, split, data_dir)
  cache_file = _cache_file(tfds, name, split, data_dir) if use_cache else None

  def decode() -> Split:
    absl = logging.getLogger("absl")
    absl.addFilter(_OPENCV_ADVICE)
    try:
      # The mock data source of tfds.testing cannot fetch a list of items at once: index one by one.
      examples = [source[i] for i in range(len(source))]
    finally:
      absl.removeFilter(_OPENCV_ADVICE)
    shapes = {e["image"].shape for e in examples[:1000]}
    if len(shapes) > 1:
      raise UserError(
        f"{name}'s images differ in size ({', '.join(map(str, sorted(shapes)[:3]))}, ...); set "
        "dataset.image_size to bring them to one"
      )
    images = np.stack([e["image"] for e in examples]).astype(np.uint8)
    return Split(images, np.array([e["label"] for e in examples], np.int32))

  return _through_cache(
    cache_file,
    len(source),
    decode,
    log,
    f"loading {name} {split}: {len(source)} examples from the decoded-array cache",
    f"loading {name} {split}: decoding {len(source)} examples from {data_dir or 'the tfds data dir'}",
  )


def _through_cache(cache_file: pathlib.Path | None, expected: int, build, log, loading: str, building: str) -> Split:
  """The split `build()` makes, or the one `cache_file` holds when it is there and has `expected` examples; one line to
  `log` says which (`loading`, then the file; or `building`), and a built split is written there for later runs. No
  file, no cache."""
  cached = _read_cache(cache_file, expected) if cache_file and cache_file.exists() else None
  if cached is not None:
    log(f"{loading} {cache_file}")
    return cached
  log(building + (" (cached for later runs)" if cache_file else ""))
  split = build()
  if cache_file:
    _write_cache(cache_file, split)
  return split


def _read_cache(cache_file: pathlib.Path, expected: int) -> Split | None:
  """The cached split, or None (with a warning when the file is damaged: it is then rebuilt)."""
  try:
    with np.load(cache_file) as cached:
      images, labels = cached["images"], cached["labels"]
  except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
    warn(f"the decoded-array cache {cache_file} is damaged ({type(e).__name__}: {e}); decoding again to rebuild it")
    return None
  if len(labels) != expected or len(images) != expected or images.dtype != np.uint8:
    warn(
      f"the decoded-array cache {cache_file} does not match the dataset ({len(labels)} examples, expected "
      f"{expected}); decoding again to rebuild it"
    )
    return None
  return Split(images, labels)


def _write_cache(cache_file: pathlib.Path, split: Split) -> None:
  partial = cache_file.with_suffix(f".partial-{os.getpid()}.npz")  # processes of one host may write it at once
  try:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(partial, images=split.images, labels=split.labels)
    partial.replace(cache_file)  # atomic: a killed run never leaves a half-written cache behind
  except OSError as e:
    warn(
      f"cannot write the decoded-array cache {cache_file} ({e.strerror or e}); carrying on without it "
      "(set FLUXDIGITS_CACHE_DIR to a writable folder, or --config.dataset.cache=false)"
    )
    with contextlib.suppress(OSError):
      partial.unlink()


def _registered_tfds(name: str, data_dir=None):
  import tensorflow_datasets as tfds

  try:
    tfds.builder(name, data_dir=data_dir)
  except Exception as e:
    if type(e).__name__ != "DatasetNotFoundError":
      return  # known to tfds, perhaps unprepared: reading it says what is missing
    raise UserError(
      f"unknown dataset.name {name!r}: no tfds dataset has that name; name a tfds image classification "
      "dataset (mnist, fashion_mnist, cifar10, ...), 'folder' (with dataset.data_dir) or 'idx'"
    ) from None


def _tfds_source(tfds, name, split, data_dir):
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (NotImplementedError, FileNotFoundError, AssertionError, ValueError, KeyError) as not_prepared:
    if type(not_prepared).__name__ == "DatasetNotFoundError":
      _registered_tfds(name, data_dir)
    where = data_dir or "tfds' default data dir (~/tensorflow_datasets)"
    try:
      import tensorflow  # noqa: F401  (preparing a tfds dataset needs it)
    except ImportError:
      raise UserError(
        f"dataset {name!r} is not prepared in {where}; set TFDS_DATA_DIR (or --config.dataset.data_dir) to a folder "
        f"holding {name}/, or install TensorFlow to download it: pip install -e '.[prepare]'"
      ) from not_prepared
    try:
      tfds.builder(name, data_dir=data_dir).download_and_prepare(file_format="array_record")
      return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:
      raise UserError(
        f"dataset {name!r} could not be downloaded and prepared into {where} ({type(e).__name__}: {e}); "
        f"check the network, or copy a prepared {name}/ folder there"
      ) from e


def _cache_file(tfds, name, split, data_dir):
  # Keyed by the prepared files' location, so another copy of the data gets its own cache.
  builder = tfds.builder(name, data_dir=data_dir)
  key = hashlib.sha256(str(pathlib.Path(builder.data_dir).resolve()).encode()).hexdigest()[:12]
  return _cache_root() / f"{name}-{builder.version}-{key}" / f"{split}.npz"


def _cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get("FLUXDIGITS_CACHE_DIR", pathlib.Path.home() / ".cache" / "fluxdigits"))


# --- a folder of images: DIR/train/<class>/*, DIR/test/<class>/* -----------------------------------


def folder_classes(root) -> tuple:
  """The class names of a folder dataset: the sorted subfolders of DIR/train."""
  root = pathlib.Path(root)
  train = root / "train"
  if not train.is_dir():
    raise UserError(
      f"image folder {root} has no train/ folder; it needs train/<class>/ and test/<class>/ folders "
      "of images (set dataset.data_dir to the folder that holds them)"
    )
  classes = tuple(sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")))
  if len(classes) < 2:
    raise UserError(
      f"{train} holds {len(classes)} class folder{'s' * (len(classes) != 1)}; a classifier needs at "
      "least two: train/<class>/ for each class, its images inside"
    )
  return classes


def _folder_files(root: pathlib.Path, split: str, class_names: tuple) -> list[tuple[pathlib.Path, int]]:
  folder = root / split
  if not folder.is_dir():
    raise UserError(
      f"image folder {root} has no {split}/ folder; add {split}/<class>/ folders for the classes "
      f"{', '.join(class_names)}"
    )
  extra = sorted(
    p.name for p in folder.iterdir() if p.is_dir() and p.name not in class_names and not p.name.startswith(".")
  )
  if extra:
    raise UserError(
      f"{folder} has class folder {extra[0]!r}, which train/ lacks; the classes are train/'s subfolders "
      f"({', '.join(class_names)})"
    )
  return [
    (path, label)
    for label, name in enumerate(class_names)
    if (folder / name).is_dir()
    for path in sorted((folder / name).iterdir())
    if path.is_file() and not path.name.startswith(".")
  ]


def read_folder_split(
  root, split: str, class_names: tuple, size: int, channels: int, use_cache: bool, log=print
) -> Split:
  """One split of a folder dataset, decoded once (then cached as tfds data is): every image brought to the same
  shape; the training split in a fixed shuffled order, so that its held-out tail mixes the classes."""
  from fluxdigits import images as image_files

  root = pathlib.Path(root)
  files = _folder_files(root, split, class_names)
  if not files:
    raise UserError(f"{root / split} holds no images; put each class's images in {root / split}/<class>/")
  stats = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p, _ in files]
  key = hashlib.sha256(json.dumps([str(root.resolve()), size, channels, stats]).encode()).hexdigest()[:16]
  cache_file = _cache_root() / f"folder-{key}" / f"{split}.npz" if use_cache else None

  def decode() -> Split:
    opened = [image_files.load_image(path) for path, _ in files]
    depth = channels or _agreed(
      root / split,
      {"L": 1, "RGB": 3, "RGBA": 3},
      [i.mode for i in opened],
      "grayscale and colour images",
      "dataset.channels=1 or 3",
    )
    side = size or _agreed(
      root / split,
      {},
      [i.size for i in opened],
      "images of different sizes",
      "dataset.image_size=N (images are cropped to square and resized)",
    )
    images = np.stack([image_files.fitted(image, side, side, depth) for image in opened])
    labels = np.array([label for _, label in files], np.int32)
    if split == "train":
      order = np.random.default_rng(0).permutation(len(labels))
      images, labels = images[order], labels[order]
    return Split(images, labels)

  return _through_cache(
    cache_file,
    len(files),
    decode,
    log,
    f"loading {root} {split}: {len(files)} images from the decoded-array cache",
    f"loading {root} {split}: decoding {len(files)} images",
  )


def _agreed(folder, meaning: dict, values: list, what: str, fix: str):
  """The one value every image has (mapped through `meaning`), or one line saying what to set."""
  found = sorted({meaning.get(v, v) for v in values}, key=str)
  if len(found) > 1:
    raise UserError(f"{folder} holds {what} ({', '.join(map(str, found[:3]))}); set {fix}")
  value = found[0]
  if isinstance(value, tuple):  # a (width, height) size: square images only, else the user picks one
    if value[0] != value[1]:
      raise UserError(f"{folder}'s images are {value[0]}x{value[1]}, not square; set {fix}")
    return value[0]
  return value


# --- IDX files (the original MNIST format, as Kaggle copies ship it) ------------------------------


def read_idx(path) -> np.ndarray:
  """One IDX file, gzipped or raw, as a uint8 array of the shape its header gives."""
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise UserError(f"IDX file {path} cannot be read ({type(e).__name__}: {e}); download it again") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise UserError(
      f"IDX file {path} has a wrong magic number {raw[:4].hex()!r} (expected 000008xx, unsigned bytes); "
      "it is not an MNIST-format IDX file"
    )
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise UserError(f"IDX file {path} is truncated inside its header; download it again")
  shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  expected = int(np.prod(shape))
  if len(raw) - header != expected:
    raise UserError(
      f"IDX file {path} holds {len(raw) - header} bytes of data but its header announces {shape} "
      f"= {expected}; the file is truncated or corrupt, download it again"
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find_idx(folder: pathlib.Path, stem: str) -> pathlib.Path:
  for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
    if (folder / candidate).is_file():
      return folder / candidate
  raise UserError(
    f"IDX folder {folder} has no {stem}[.gz]; it needs the four MNIST files "
    f"({', '.join(f for pair in IDX_FILES.values() for f in pair)}), gzipped or raw"
  )


def _idx_folder(folder) -> pathlib.Path:
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise UserError(
      f"IDX folder {folder} does not exist; set --config.dataset.data_dir to the folder with the MNIST IDX files"
    )
  return folder


def read_idx_split(folder, split: str) -> Split:
  folder = _idx_folder(folder)
  images_file, labels_file = (_find_idx(folder, stem) for stem in IDX_FILES[split])
  images, labels = read_idx(images_file), read_idx(labels_file)
  if images.ndim != 3 or labels.ndim != 1:
    raise UserError(
      f"IDX files {images_file.name} and {labels_file.name} should hold (N, rows, cols) images and (N,) "
      f"labels, got shapes {images.shape} and {labels.shape}"
    )
  if len(images) != len(labels):
    raise UserError(
      f"IDX files {images_file.name} ({len(images)} images) and {labels_file.name} ({len(labels)} labels) "
      "do not match; one of them is from another set or damaged"
    )
  return Split(images[..., None].copy(), labels.astype(np.int32))
