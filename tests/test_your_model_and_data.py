"""A model defined outside the package, trained on a folder of real images (Fashion-MNIST written as PNG, JPEG
and BMP files), through everything fluxdigits does with a run: resume after kill -9, report, predict, ONNX
export, tuning and seeds. And every bad model reference or bad folder: one line, exit code 2."""

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, kill_once_written, read_summary, run_cli, run_module
from PIL import Image

from fluxdigits import config as configs, models, registry, run

sys.path.insert(0, str(REPO / "examples"))
import make_image_folder  # noqa: E402

EXPERIMENT = REPO / "examples" / "folder_experiment.py"
QUICK = ["--config.num_epochs=3", "--config.checkpoint.keep=1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """300 training and 60 test images a class, some of them saved as JPEG and BMP."""
  root = make_image_folder.write_folder(tmp_path_factory.mktemp("data") / "fashion", 300, 60)
  for i, png in enumerate(sorted((root / "train" / "Bag").glob("*.png"))[:20]):
    Image.open(png).save(png.with_suffix(".jpg" if i % 2 else ".bmp"))
    png.unlink()
  return root


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("runs") / "whole"
  result = run_cli(EXPERIMENT, "--workdir", workdir, f"--config.dataset.data_dir={folder}", *QUICK)
  assert result.returncode == 0, result.stderr
  return workdir


def test_a_user_model_learns_a_folder_of_real_images(trained, folder):
  summary = read_summary(trained)
  assert summary["test_examples"] == 600 and summary["test_accuracy"] >= 0.72, summary  # chance: 10%
  recorded = json.loads((trained / "config.json").read_text())
  assert recorded["model.name"] == f"{REPO / 'examples' / 'my_cnn.py'}:SmallCNN"
  assert recorded["model.kwargs.features"] == 16
  info = json.loads((trained / "dataset.json").read_text())
  assert info["class_names"] == sorted(p.name for p in (folder / "train").iterdir())
  assert info["image_shape"] == [28, 28, 1] and 0.2 < info["mean"][0] < 0.4 and 0.2 < info["std"][0] < 0.5
  with open(trained / "report" / "per_class.csv") as f:
    assert [row["class"] for row in csv.DictReader(f)] == info["class_names"]


def test_the_run_resumes_exactly_after_kill_9(trained, folder, tmp_path):
  workdir = tmp_path / "killed"
  args = [EXPERIMENT, "--workdir", workdir, f"--config.dataset.data_dir={folder}", *QUICK]
  kill_once_written(args, workdir / "checkpoints" / "1", "the run, in its second epoch,")
  assert not (workdir / "summary.json").exists()
  resumed = run_cli(*args, timeout=600, cwd=tmp_path)  # another folder
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from epoch 1" in resumed.stdout
  whole, after_kill = read_summary(trained), read_summary(workdir)
  for key in ("test_accuracy", "test_loss", "best_val_accuracy"):
    assert after_kill[key] == whole[key], key


def test_predict_and_onnx_export_work_from_another_folder(trained, folder, tmp_path):
  classes = ("Sneaker", "Trouser", "Bag")
  test_folders = (folder / "test" / name for name in classes)
  result = run_module("predict", trained, *test_folders, "--csv", tmp_path / "p.csv", cwd=tmp_path, timeout=300)
  assert result.returncode == 0, result.stderr
  with open(tmp_path / "p.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 * 60
  right = [pathlib.Path(row["file"]).parent.name == row["predicted"] for row in rows]
  assert sum(right) / len(rows) > 0.8, rows[:3]
  exported = run_module("export", trained, "--format", "onnx", "--out", tmp_path / "export", cwd=tmp_path, timeout=600)
  assert exported.returncode == 0, exported.stderr
  assert json.loads((tmp_path / "export" / "model.json").read_text())["class_names"][0] == "Ankle boot"


def test_seeds_train_as_one_population(folder, tmp_path):
  result = run_cli(
    EXPERIMENT,
    "--workdir",
    tmp_path / "seeds",
    "--seeds",
    "0-1",
    f"--config.dataset.data_dir={folder}",
    "--config.num_epochs=1",
    "--config.report=false",
  )
  assert result.returncode == 0, result.stderr
  accuracies = [read_summary(tmp_path / "seeds" / f"seed-{s}")["test_accuracy"] for s in (0, 1)]
  assert all(a > 0.6 for a in accuracies) and accuracies[0] != accuracies[1]


def test_tuning_two_trials(folder, tmp_path):
  sweep = tmp_path / "folder_sweep.py"
  sweep.write_text(
    f"from fluxdigits import config\n\n\ndef get_config():\n"
    f"  c = config.load({str(EXPERIMENT)!r})\n  c.dataset.data_dir = {str(folder)!r}\n"
    "  c.num_epochs = 1\n  return c\n\n\ndef space(trial):\n"
    "  trial.suggest_float('optimizer.learning_rate', 1e-3, 3e-3, log=True)\n"
    "  trial.suggest_categorical('model.kwargs.features', [8, 16])\n"
  )
  result = run_module("tune", sweep, "--trials", "2", "--workdir", tmp_path / "tune")
  assert result.returncode == 0, result.stderr
  trials = sorted((tmp_path / "tune" / "trials").iterdir())
  assert len(trials) == 2 and all(read_summary(t)["best_val_accuracy"] > 0.6 for t in trials)
  chosen = (tmp_path / "tune" / "best_experiment.py").read_text()
  assert "config.model.kwargs.features = " in chosen and "my_cnn.py:SmallCNN" in chosen


MODEL_FILE = """
import flax.linen as nn

class ThreeLogits(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(x.reshape(x.shape[0], -1))

class Fine(nn.Module):
  num_classes: int
  width: int = 8
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1))))

def not_a_module(x):
  return x
"""


@pytest.mark.fast
@pytest.mark.parametrize(
  "name, kwargs, message",
  [
    ("missing.py:Net", [], "missing.py not found; in model.name=FILE.py:CLASS give FILE relative to"),
    ("net.py:Nope", [], "defines no 'Nope'; its Flax modules: Fine, ThreeLogits"),
    ("net.py:not_a_module", [], "is a function, not a flax.linen.Module or flax.nnx.Module class"),
    (
      "net.py:ThreeLogits",
      [],
      "returned shape (2, 3) for a batch of 2 (28, 28, 1) images; it must return logits of "
      "shape (N, num_classes) = (2, 10)",
    ),
    ("net.py:Fine", ["--config.model.kwargs.widht=4"], "model.kwargs.widht: "),
    ("no_such_package.nets:Net", [], "model module 'no_such_package.nets' cannot be imported"),
    ("vgg", [], "unknown model.name 'vgg'"),
  ],
)
def test_a_bad_model_reference_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, name, kwargs, message):
  (tmp_path / "net.py").write_text(MODEL_FILE)
  monkeypatch.chdir(tmp_path)
  code = run.main(
    [
      str(REPO / "experiments" / "mnist_mlp.py"),
      "--workdir",
      str(tmp_path / "run"),
      f"--config.model.name={name}",
      "--config.dataset.max_train_examples=500",
      *kwargs,
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.startswith("error: ") and message in err and "\n" not in err, err
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_module_path_and_a_file_path_name_the_same_models(tmp_path, monkeypatch):
  (tmp_path / "net.py").write_text(MODEL_FILE)
  monkeypatch.chdir(tmp_path)
  config = configs.validate(configs.override(configs.defaults(), ["model.name=net.py:Fine", "model.kwargs.width=4"]))
  assert config.model.name == f"{tmp_path / 'net.py'}:Fine"  # recorded absolute: the run resumes from anywhere
  assert registry.create(config, 7).num_classes == 7 and registry.create(config, 7).width == 4
  by_module = configs.validate(configs.override(configs.defaults(), ["model.name=fluxdigits.models:DeepCNN"]))
  assert isinstance(registry.create(by_module, 10), models.DeepCNN)


def write_png(path, size=(28, 28), mode="L"):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.zeros((size[1], size[0], *([3] if mode == "RGB" else [])), np.uint8), mode).save(path)


def bad_folder(tmp_path, case) -> pathlib.Path:
  root = tmp_path / "data"
  for split in ("train", "test"):
    for name in ("cat", "dog"):
      write_png(root / split / name / "0.png")
  if case == "no train":
    (root / "train").rename(root / "training")
  elif case == "one class":
    for split in ("train", "test"):
      for f in (root / split / "dog").iterdir():
        f.unlink()
      (root / split / "dog").rmdir()
  elif case == "unreadable":
    (root / "train" / "cat" / "1.png").write_text("not an image")
  elif case == "sizes":
    write_png(root / "train" / "dog" / "1.png", (32, 32))
  elif case == "colours":
    write_png(root / "train" / "dog" / "1.png", mode="RGB")
  elif case == "extra test class":
    write_png(root / "test" / "bird" / "0.png")
  elif case == "no test images":
    for f in (root / "test").glob("*/*.png"):
      f.unlink()
  return root


@pytest.mark.parametrize(
  "case, message",
  [
    ("no train", "has no train/ folder; it needs train/<class>/ and test/<class>/ folders"),
    ("one class", "holds 1 class folder; a classifier needs at least two"),
    ("unreadable", "1.png: not an image Pillow can read"),
    ("sizes", "holds images of different sizes ((28, 28), (32, 32)); set dataset.image_size=N"),
    ("colours", "holds grayscale and colour images (1, 3); set dataset.channels=1 or 3"),
    ("extra test class", "has class folder 'bird', which train/ lacks"),
    ("no test images", "test holds no images"),
  ],
)
def test_a_bad_folder_is_one_line_and_exit_2(tmp_path, capsys, case, message):
  root = bad_folder(tmp_path, case)
  code = run.main(
    [
      str(EXPERIMENT),
      "--workdir",
      str(tmp_path / "run"),
      f"--config.dataset.data_dir={root}",
      "--config.dataset.cache=false",
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.startswith("error: ") and message in err and "\n" not in err, err


def test_image_size_and_channels_bring_a_mixed_folder_to_one_shape(tmp_path):
  from fluxdigits import data

  root = bad_folder(tmp_path, "sizes")
  write_png(root / "train" / "cat" / "2.png", (40, 20), mode="RGB")
  split = data.read_folder_split(root, "train", ("cat", "dog"), 16, 3, use_cache=False, log=lambda line: None)
  assert split.images.shape == (4, 16, 16, 3) and sorted(split.labels) == [0, 0, 1, 1]


@pytest.mark.fast
def test_the_step_and_the_loop_name_no_model():
  source = "".join((REPO / "fluxdigits" / name).read_text() for name in ("steps.py", "loop.py"))
  assert not [name for name in models.BUILTIN if f'"{name}"' in source or f"'{name}'" in source]


def test_importing_fluxdigits_changes_no_global_state():
  """A notebook's `import fluxdigits` (and its modules) leaves JAX's devices, signals and warnings as they were."""
  probe = (
    "import signal, sys, warnings; import jax, flax, flax.nnx, optax, orbax.checkpoint, optuna, scipy.ndimage, "
    "tensorflow_datasets, tqdm.auto; before = (signal.getsignal(signal.SIGTERM), sys.excepthook, "
    "len(warnings.filters)); import fluxdigits, fluxdigits.loop, fluxdigits.predict, fluxdigits.tune, "
    "fluxdigits.report, fluxdigits.export, fluxdigits.data; import jax; "
    "after = (signal.getsignal(signal.SIGTERM), sys.excepthook, len(warnings.filters)); "
    "print(jax.device_count(), before == after)"
  )
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["1", "True"]
