"""Datasets as numpy arrays, and the index batches that walk them.

A split is small enough to live whole in device memory (MNIST is 47 MB of uint8), so the trainer
copies it to the devices once and every batch is a gather by index there: the host only makes the
index arrays below, which are pure functions of (seed, epoch).
"""

import contextlib
import dataclasses
import gzip
import hashlib
import logging
import os
import pathlib
import zipfile
import zlib

import numpy as np

from fluxdigits.errors import UserError, warn

CLASS_NAMES = {
    "mnist": tuple("0123456789"),
    "idx": tuple("0123456789"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
IMAGE_SHAPES = {"mnist": (28, 28, 1), "idx": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
# Per-channel (mean, std) of pixels scaled to [0, 1]. Digits keep plain [0, 1] scaling, as the
# Keras notebooks do; CIFAR's ResNets train better standardised.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class _WithoutOpenCvAdvice(logging.Filter):
  """tfds advises installing OpenCV on every decode; PIL decodes MNIST's PNGs fine, and once only (then the cache)."""

  def filter(self, record):
    return not record.getMessage().startswith("OpenCV is not installed")


logging.getLogger("absl").addFilter(_WithoutOpenCvAdvice())


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8, (N, H, W, C)
  labels: np.ndarray  # int32, (N,)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index) -> "Split":
    return Split(self.images[index], self.labels[index])


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split
  validation: Split
  test: Split
  class_names: tuple
  mean: tuple
  std: tuple


def resolved_data_dir(config) -> str:
  """Where the config's data really comes from, as an absolute path: what a run records in its config.json."""
  if config.dataset.data_dir:
    return str(pathlib.Path(config.dataset.data_dir).expanduser().absolute())
  if os.environ.get("TFDS_DATA_DIR"):
    return str(pathlib.Path(os.environ["TFDS_DATA_DIR"]).expanduser().absolute())
  import tensorflow_datasets as tfds
  return str(tfds.core.constants.DATA_DIR)


def load(config, log=print) -> Dataset:
  """The dataset a config names, its training split divided into train and validation."""
  name = config.dataset.name
  data_dir = resolved_data_dir(config)
  if name == "idx":
    log(f"loading IDX files from {data_dir}")
    train, test = (read_idx_split(data_dir, split) for split in ("train", "test"))
  else:
    train, test = (read_tfds_split(name, split, data_dir, config.dataset.cache, log) for split in ("train", "test"))
  check_splits(name, train, test)
  train, validation = hold_out(train, config.validation_fraction)
  if config.dataset.max_train_examples:
    train = train[: config.dataset.max_train_examples]
  return Dataset(name, train, validation, test, CLASS_NAMES[name], *normalization(name))


def normalization(name: str) -> tuple[tuple, tuple]:
  """Per-channel (mean, std) the dataset's pixels, scaled to [0, 1], are standardised with."""
  channels = IMAGE_SHAPES[name][-1]
  return NORMALIZATION.get(name, ((0.0,) * channels, (1.0,) * channels))


def check_splits(name: str, train: Split, test: Split) -> None:
  """Shapes, counts and labels a model of this dataset can use: bad files fail here, not after training."""
  where = "the IDX files in dataset.data_dir" if name == "idx" else f"the prepared {name} dataset"
  classes = len(CLASS_NAMES[name])
  for split_name, split in (("train", train), ("test", test)):
    if len(split) == 0:
      raise UserError(f"the {split_name} split of {where} holds no examples; replace the files")
    if split.images.shape[1:] != IMAGE_SHAPES[name]:
      raise UserError(f"the {split_name} images of {where} are {split.images.shape[1:]}, but {name} models take "
                      f"{IMAGE_SHAPES[name]}; replace the files")
    bad = (split.labels < 0) | (split.labels >= classes)
    if bad.any():
      raise UserError(f"the {split_name} labels of {where} hold {int(bad.sum())} values outside 0-{classes - 1} "
                      f"(e.g. {int(split.labels[bad][0])} at index {int(np.argmax(bad))}); the file is damaged or "
                      "from another dataset")


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


def read_tfds_split(name: str, split: str, data_dir: str | None, use_cache: bool, log=print) -> Split:
  import tensorflow_datasets as tfds

  source = _tfds_source(tfds, name, split, data_dir)
  cache_file = _cache_file(tfds, name, split, data_dir) if use_cache else None
  cached = _read_cache(cache_file, len(source)) if cache_file and cache_file.exists() else None
  if cached is not None:
    log(f"loading {name} {split}: {len(cached)} examples from the decoded-array cache {cache_file}")
    return cached
  log(f"loading {name} {split}: decoding {len(source)} examples from {data_dir or 'the tfds data dir'}"
      f"{' (cached for later runs)' if cache_file else ''}")
  # The mock data source of tfds.testing cannot fetch a list of items at once: index one by one.
  examples = [source[i] for i in range(len(source))]
  result = Split(np.stack([e["image"] for e in examples]).astype(np.uint8), np.array([e["label"] for e in examples], np.int32))
  if cache_file:
    _write_cache(cache_file, result)
  return result


def _read_cache(cache_file: pathlib.Path, expected: int) -> Split | None:
  """The cached split, or None (with a warning when the file is damaged: it is then rebuilt)."""
  try:
    with np.load(cache_file) as cached:
      images, labels = cached["images"], cached["labels"]
  except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
    warn(f"the decoded-array cache {cache_file} is damaged ({type(e).__name__}: {e}); decoding again to rebuild it")
    return None
  if len(labels) != expected or len(images) != expected or images.dtype != np.uint8:
    warn(f"the decoded-array cache {cache_file} does not match the dataset ({len(labels)} examples, expected "
         f"{expected}); decoding again to rebuild it")
    return None
  return Split(images, labels)


def _write_cache(cache_file: pathlib.Path, split: Split) -> None:
  partial = cache_file.with_suffix(f".partial-{os.getpid()}.npz")  # processes of one host may write it at once
  try:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(partial, images=split.images, labels=split.labels)
    partial.replace(cache_file)  # atomic: a killed run never leaves a half-written cache behind
  except OSError as e:
    warn(f"cannot write the decoded-array cache {cache_file} ({e.strerror or e}); carrying on without it "
         "(set FLUXDIGITS_CACHE_DIR to a writable folder, or --config.dataset.cache=false)")
    with contextlib.suppress(OSError):
      partial.unlink()


def _tfds_source(tfds, name, split, data_dir):
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (NotImplementedError, FileNotFoundError, AssertionError, ValueError, KeyError) as not_prepared:
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
      raise UserError(f"dataset {name!r} could not be downloaded and prepared into {where} ({type(e).__name__}: {e}); "
                      f"check the network, or copy a prepared {name}/ folder there") from e


def _cache_file(tfds, name, split, data_dir):
  # Keyed by the prepared files' location, so another copy of the data gets its own cache.
  builder = tfds.builder(name, data_dir=data_dir)
  key = hashlib.sha256(str(pathlib.Path(builder.data_dir).resolve()).encode()).hexdigest()[:12]
  root = pathlib.Path(os.environ.get("FLUXDIGITS_CACHE_DIR", pathlib.Path.home() / ".cache" / "fluxdigits"))
  return root / f"{name}-{builder.version}-{key}" / f"{split}.npz"


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
    raise UserError(f"IDX file {path} has a wrong magic number {raw[:4].hex()!r} (expected 000008xx, unsigned bytes); "
                    "it is not an MNIST-format IDX file")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise UserError(f"IDX file {path} is truncated inside its header; download it again")
  shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  expected = int(np.prod(shape))
  if len(raw) - header != expected:
    raise UserError(f"IDX file {path} holds {len(raw) - header} bytes of data but its header announces {shape} "
                    f"= {expected}; the file is truncated or corrupt, download it again")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find_idx(folder: pathlib.Path, stem: str) -> pathlib.Path:
  for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
    if (folder / candidate).is_file():
      return folder / candidate
  raise UserError(f"IDX folder {folder} has no {stem}[.gz]; it needs the four MNIST files "
                  f"({', '.join(f for pair in IDX_FILES.values() for f in pair)}), gzipped or raw")


def read_idx_split(folder, split: str) -> Split:
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise UserError(f"IDX folder {folder} does not exist; set --config.dataset.data_dir to the folder with the MNIST IDX files")
  images_file, labels_file = (_find_idx(folder, stem) for stem in IDX_FILES[split])
  images, labels = read_idx(images_file), read_idx(labels_file)
  if images.ndim != 3 or labels.ndim != 1:
    raise UserError(f"IDX files {images_file.name} and {labels_file.name} should hold (N, rows, cols) images and (N,) "
                    f"labels, got shapes {images.shape} and {labels.shape}")
  if len(images) != len(labels):
    raise UserError(f"IDX files {images_file.name} ({len(images)} images) and {labels_file.name} ({len(labels)} labels) "
                    "do not match; one of them is from another set or damaged")
  return Split(images[..., None].copy(), labels.astype(np.int32))
