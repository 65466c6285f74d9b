import gzip
import importlib.util
import shutil

import numpy as np
import pytest
from conftest import IDX_DIR, write_idx

from fluxdigits import config as configs, data
from fluxdigits.errors import UserError


def canonical_order(split):
  """Examples sorted by their bytes: tfds stores MNIST shuffled, the IDX files in the original order."""
  rows = np.concatenate([split.images.reshape(len(split), -1), split.labels[:, None].astype(np.uint8)], axis=1)
  return rows[np.lexsort(rows.T[::-1])]


def test_idx_source_gives_the_same_dataset_as_tfds():
  for split, size in (("train", 60_000), ("test", 10_000)):
    from_idx = data.read_idx_split(IDX_DIR, split)
    from_tfds = data.read_tfds_split("mnist", split, None, use_cache=True)  # the cache holds tfds' decoded arrays
    assert len(from_idx) == len(from_tfds) == size
    assert from_idx.images.shape == from_tfds.images.shape and from_idx.images.dtype == from_tfds.images.dtype
    np.testing.assert_array_equal(canonical_order(from_idx), canonical_order(from_tfds))


def test_idx_config_loads_raw_and_gzipped_files(tmp_path):
  for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # raw copies
    with gzip.open(IDX_DIR / f"{name}.gz") as f:
      (tmp_path / name).write_bytes(f.read())
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    shutil.copy(IDX_DIR / name, tmp_path / name)
  c = configs.defaults()
  c.dataset.name, c.dataset.data_dir = "idx", str(tmp_path)
  dataset = data.load(configs.validate(c))
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (54_000, 6_000, 10_000)
  c.dataset.max_train_examples, c.dataset.max_test_examples = 1000, 500
  small = data.load(configs.validate(c))
  assert (len(small.train), len(small.test)) == (1000, 500)
  np.testing.assert_array_equal(small.test.images, dataset.test.images[:500])
  assert dataset.train.images.shape[1:] == (28, 28, 1) and dataset.train.images.dtype == np.uint8
  assert dataset.class_names == tuple("0123456789")


@pytest.fixture
def small_idx(tmp_path):
  rng = np.random.default_rng(0)
  for split, (images, labels) in data.IDX_FILES.items():
    write_idx(tmp_path / images, rng.integers(0, 256, (6, 28, 28)))
    write_idx(tmp_path / labels, rng.integers(0, 10, (6,)))
  return tmp_path


@pytest.mark.fast
def test_idx_reader_on_small_good_files(small_idx):
  split = data.read_idx_split(small_idx, "train")
  assert split.images.shape == (6, 28, 28, 1) and split.labels.shape == (6,)


@pytest.mark.fast
def test_idx_wrong_magic_number(small_idx):
  path = small_idx / "train-images-idx3-ubyte"
  path.write_bytes(b"\x00\x00\x0d\x03" + path.read_bytes()[4:])
  with pytest.raises(UserError, match="wrong magic number"):
    data.read_idx_split(small_idx, "train")


@pytest.mark.fast
def test_idx_truncated_file(small_idx):
  path = small_idx / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(UserError, match="truncated or corrupt"):
    data.read_idx_split(small_idx, "train")


@pytest.mark.fast
def test_idx_truncated_gzip(tmp_path):
  blob = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 50]) + bytes(50))
  (tmp_path / "labels.gz").write_bytes(blob[: len(blob) // 2])
  with pytest.raises(UserError, match="cannot be read"):
    data.read_idx(tmp_path / "labels.gz")


@pytest.mark.fast
def test_idx_mismatched_counts(small_idx):
  write_idx(small_idx / "train-labels-idx1-ubyte", np.zeros(5))
  with pytest.raises(UserError, match=r"\(6 images\).*\(5 labels\) do not match"):
    data.read_idx_split(small_idx, "train")


@pytest.mark.fast
def test_idx_missing_file_and_folder(small_idx, tmp_path):
  (small_idx / "t10k-labels-idx1-ubyte").unlink()
  with pytest.raises(UserError, match="has no t10k-labels-idx1-ubyte"):
    data.read_idx_split(small_idx, "test")
  with pytest.raises(UserError, match="does not exist"):
    data.read_idx_split(tmp_path / "nowhere", "test")


def test_unprepared_dataset_without_tensorflow_says_what_to_install(tmp_path):
  if importlib.util.find_spec("tensorflow") is not None:  # tfds and etils look for it in ways no stub can fool
    pytest.skip("TensorFlow is installed: this machine prepares datasets itself")
  with pytest.raises(UserError, match=r"'fashion_mnist' is not prepared in .*pip install -e '.\[prepare\]'"):
    data.read_tfds_split("fashion_mnist", "train", str(tmp_path), use_cache=False)


@pytest.mark.fast
def test_validation_is_held_out_from_the_end_of_training():
  split = data.Split(np.zeros((100, 2, 2, 1), np.uint8), np.arange(100, dtype=np.int32))
  train, validation = data.hold_out(split, 0.1)
  np.testing.assert_array_equal(train.labels, np.arange(90))
  np.testing.assert_array_equal(validation.labels, np.arange(90, 100))
  assert len(data.hold_out(split, 0.0)[1]) == 0


@pytest.mark.fast
def test_epoch_order_is_a_function_of_seed_and_epoch():
  a = data.epoch_order(seed=3, epoch=1, n=1000)
  np.testing.assert_array_equal(a, data.epoch_order(seed=3, epoch=1, n=1000))
  assert not np.array_equal(a, data.epoch_order(seed=3, epoch=2, n=1000))
  assert not np.array_equal(a, data.epoch_order(seed=4, epoch=1, n=1000))
  np.testing.assert_array_equal(np.sort(a), np.arange(1000))
  batches = data.train_batches(seed=3, epoch=1, n=1000, batch_size=32)
  assert batches.shape == (31, 32) and len(np.unique(batches)) == 31 * 32


@pytest.mark.fast
def test_eval_batches_cover_every_example_once():
  indices, mask = data.eval_batches(n=10_000, batch_size=384)
  assert indices.shape == mask.shape == (27, 384)
  np.testing.assert_array_equal(np.sort(indices[mask]), np.arange(10_000))


# --- faults in the data: one clear error at load time, never a crash after training -----------------


def idx_config(folder):
  c = configs.defaults()
  c.dataset.name, c.dataset.data_dir = "idx", str(folder)
  return configs.validate(c)


@pytest.mark.fast
@pytest.mark.parametrize(
  "file, array, message",
  [
    (
      "train-labels-idx1-ubyte",
      np.array([1, 2, 10, 3, 4, 5]),
      r"train labels .* 1 values outside 0-9 \(e.g. 10 at index 2\)",
    ),
    ("t10k-labels-idx1-ubyte", np.array([0, 1, 2, 255, 4, 5]), r"test labels .* outside 0-9"),
    (
      "t10k-images-idx3-ubyte",
      np.zeros((6, 32, 32)),
      r"train images .* are \(28, 28, 1\) but the test images \(32, 32, 1\); set dataset.image_size",
    ),
    ("train-images-idx3-ubyte", np.zeros((6, 32, 32)), r"train images .* are \(32, 32, 1\)"),
  ],
)
def test_idx_labels_and_shapes_are_checked_when_loading(small_idx, file, array, message):
  write_idx(small_idx / file, array)
  with pytest.raises(UserError, match=message):
    data.load(idx_config(small_idx))


@pytest.mark.fast
def test_idx_without_test_images_is_refused_when_loading(small_idx):
  write_idx(small_idx / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28)))
  write_idx(small_idx / "t10k-labels-idx1-ubyte", np.zeros(0))
  with pytest.raises(UserError, match="test split .* holds no examples"):
    data.load(idx_config(small_idx))


@pytest.mark.fast
def test_idx_damaged_gzip_stream_is_a_clear_error(tmp_path):
  blob = bytearray(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(range(200))))
  blob[20:30] = bytes(10)  # corrupt the deflate stream itself (zlib.error), not just its end
  (tmp_path / "labels.gz").write_bytes(bytes(blob))
  with pytest.raises(UserError, match="cannot be read .*download it again"):
    data.read_idx(tmp_path / "labels.gz")


def test_damaged_cache_is_detected_warned_and_rebuilt(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("FLUXDIGITS_CACHE_DIR", str(tmp_path / "cache"))
  first = data.read_tfds_split("mnist", "test", None, use_cache=True)
  (cache_file,) = (tmp_path / "cache").rglob("test.npz")
  cache_file.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])  # a killed copy, a full disk
  capsys.readouterr()
  again = data.read_tfds_split("mnist", "test", None, use_cache=True)
  assert "warning: the decoded-array cache" in capsys.readouterr().err
  np.testing.assert_array_equal(again.labels, first.labels)
  with np.load(cache_file) as rebuilt:  # a whole file again: the next run reads it without a warning
    np.testing.assert_array_equal(rebuilt["labels"], first.labels)


def test_unwritable_cache_dir_warns_and_carries_on(tmp_path, monkeypatch, capsys):
  (tmp_path / "a-file").write_text("")
  monkeypatch.setenv("FLUXDIGITS_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
  split = data.read_tfds_split("mnist", "test", None, use_cache=True)
  assert len(split) == 10_000
  assert "cannot write the decoded-array cache" in capsys.readouterr().err


@pytest.mark.fast
def test_a_new_source_is_a_reader_and_its_row_in_sources(monkeypatch):
  rng = np.random.default_rng(0)
  split = lambda n: data.Split(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), np.arange(n, dtype=np.int32) % 2)
  read = lambda name, data_dir, dataset_config, log: (split(50), split(10), ("even", "odd"))
  monkeypatch.setitem(data.SOURCES, "parity", data.Source(lambda name, data_dir: None, read, "the parity data"))
  c = configs.defaults()
  c.dataset.name, c.validation_fraction = "parity", 0.2
  data.check_source(c)
  dataset = data.load(configs.validate(c))
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (40, 10, 10)
  assert dataset.class_names == ("even", "odd") and dataset.info.image_shape == (8, 8, 1)


@pytest.mark.fast
@pytest.mark.parametrize("name", ["idx", "folder"])
def test_a_source_read_from_a_folder_needs_its_data_dir(name):
  c = configs.defaults()
  c.dataset.name = name
  with pytest.raises(UserError, match=f"dataset.name='{name}' needs dataset.data_dir: set --config.dataset.data_dir"):
    data.check_source(configs.validate(c))


def digits_dataset(split: data.Split) -> data.Dataset:
  info = data.Info(tuple("0123456789"), split.images.shape[1:], (0.0,), (1.0,))
  return data.Dataset("mnist", split, split[:0], split[:0], info)


@pytest.mark.fast
def test_pen_traced_digits_need_mnist_s_shape():
  split = data.Split(np.zeros((4, 32, 32, 1), np.uint8), np.zeros(4, np.int32))
  with pytest.raises(UserError, match=r"augment.pen_traced needs 28x28 grayscale digits, and mnist's images are \(32"):
    data.pen_traced(digits_dataset(split), 0.1, use_cache=False)


def test_pen_traced_digits_are_cached_for_the_next_start(tmp_path, monkeypatch):
  monkeypatch.setenv("FLUXDIGITS_CACHE_DIR", str(tmp_path))
  digits = digits_dataset(data.read_idx_split(IDX_DIR, "test")[:40])
  logged = []
  first = data.pen_traced(digits, 0.5, use_cache=True, log=logged.append).train
  again = data.pen_traced(digits, 0.5, use_cache=True, log=logged.append).train
  assert logged[0].startswith("tracing 20 training digits") and "cached for later runs" in logged[0]
  assert logged[1].startswith("loading 20 training digits traced by pen from the cache")
  np.testing.assert_array_equal(again.images, first.images)
  np.testing.assert_array_equal(again.labels, digits.train.labels)
  assert (first.images != digits.train.images).any((1, 2, 3)).sum() == 20
  uncached = data.pen_traced(digits, 0.5, use_cache=False, log=logged.append).train
  np.testing.assert_array_equal(uncached.images, first.images)
  data.pen_traced(digits, 0.25, use_cache=True, log=logged.append)  # another share is another cache file
  assert logged[3].startswith("tracing 10 training digits") and len(list(tmp_path.rglob("*.npz"))) == 2
