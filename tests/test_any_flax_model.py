"""Flax models as their users write them, Linen and NNX, nobody here wrote for fluxdigits (tests/zoo/), on a folder
of real handwritten digits no run here trained on (scikit-learn's UCI digits as PNG files): they learn it, predict
reads its files as evaluation did, the exports agree with JAX, and an NNX run gets every command a Linen one does."""

import csv
import json
import pathlib
import sys

import numpy as np
import onnx
import pytest
from conftest import REPO, kill_once_written, read_summary, run_cli, run_module

sys.path.insert(0, str(REPO / "tests" / "zoo"))
import digits_folder  # noqa: E402

ZOO = REPO / "tests" / "zoo"
BASE = REPO / "experiments" / "mnist_cnn.py"  # its dataset.photos='digit' does not fit 8x8 digits: predict must see so
HELD_OUT = {"linen": f"{ZOO / 'docs_linen_cnn.py'}:CNN", "nnx": f"{ZOO / 'docs_nnx_cnn.py'}:CNN"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  return digits_folder.write(tmp_path_factory.mktemp("data") / "digits")


def folder_args(digits, model, epochs):
  return [
    BASE,
    "--config.dataset.name=folder",
    f"--config.dataset.data_dir={digits}",
    f"--config.model.name={model}",
    f"--config.num_epochs={epochs}",
    "--config.ema_decay=0",
  ]


def predicted_accuracy(run, digits, tmp_path) -> float:
  """predict's accuracy over the folder's own test files, from its CSV."""
  result = run_module("predict", run, digits / "test", "--csv", tmp_path / "predicted.csv")
  assert result.returncode == 0, result.stderr
  with open(tmp_path / "predicted.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == digits_folder.TEST_IMAGES
  return np.mean([pathlib.Path(row["file"]).parent.name == row["predicted"] for row in rows])


def onnx_operations(path) -> set:
  return {node.op_type for node in onnx.load(path).graph.node}


@pytest.mark.parametrize("kind", sorted(HELD_OUT))
def test_a_flax_docs_model_learns_real_digits_predicts_as_evaluated_and_exports(kind, digits, tmp_path):
  run = tmp_path / "run"
  trained = run_cli(*folder_args(digits, HELD_OUT[kind], 15), "--workdir", run)
  assert trained.returncode == 0, trained.stderr
  assert "predict will read files as these were read, 'fit'" in trained.stdout  # the experiment's 'digit' does not fit
  summary = read_summary(run)
  assert summary["test_accuracy"] >= 0.93, summary
  assert abs(predicted_accuracy(run, digits, tmp_path) - summary["test_accuracy"]) <= 0.01
  exported = run_module("export", run, "--format", "onnx")
  assert exported.returncode == 0, exported.stderr
  assert "logits match the JAX model's" in exported.stdout
  assert not [line for line in exported.stderr.splitlines() if not line.startswith("loading ")], exported.stderr
  assert "Conv" in onnx_operations(run / "export" / "model.onnx")


@pytest.fixture(scope="module")
def nnx_run(digits, tmp_path_factory):
  """The NNX docs model, 3 epochs, uninterrupted."""
  run = tmp_path_factory.mktemp("nnx") / "whole"
  result = run_cli(*folder_args(digits, HELD_OUT["nnx"], 3), "--workdir", run)
  assert result.returncode == 0, result.stderr
  return run


def test_an_nnx_run_resumes_exactly_after_kill_9(nnx_run, digits, tmp_path):
  workdir = tmp_path / "killed"
  args = [*folder_args(digits, HELD_OUT["nnx"], 3), "--workdir", workdir]
  kill_once_written(args, workdir / "checkpoints" / "1", "the NNX run, in its second epoch,")
  resumed = run_cli(*args, timeout=600)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from epoch 1" in resumed.stdout
  whole, after_kill = read_summary(nnx_run), read_summary(workdir)
  for key in ("test_accuracy", "test_loss", "best_val_accuracy", "num_params"):
    assert after_kill[key] == whole[key], key


def test_an_nnx_run_has_its_report_tensorboard_predict_and_stablehlo_export(nnx_run, tmp_path):
  with open(nnx_run / "report" / "per_class.csv") as f:
    assert [row["class"] for row in csv.DictReader(f)] == [str(d) for d in range(10)]
  assert list((nnx_run / "tb").glob("events.out.tfevents.*"))
  shown = run_module("predict", nnx_run, digits_test_file(nnx_run), "--show", tmp_path / "seen.png")
  assert shown.returncode == 0 and (tmp_path / "seen.png").stat().st_size > 0, shown.stderr
  exported = run_module("export", nnx_run, "--format", "stablehlo", "--out", tmp_path / "hlo")
  assert exported.returncode == 0 and (tmp_path / "hlo" / "model.jax_export").is_file(), exported.stderr


def digits_test_file(run) -> pathlib.Path:
  folder = pathlib.Path(json.loads((run / "config.json").read_text())["dataset.data_dir"])
  return next((folder / "test" / "7").iterdir())


def test_nnx_seeds_train_as_one_population_and_two_devices_match_one(nnx_run, digits, tmp_path):
  seeds = run_cli(
    *folder_args(digits, HELD_OUT["nnx"], 3), "--workdir", tmp_path / "seeds", "--seeds", "0-1", "--config.report=false"
  )
  assert seeds.returncode == 0, seeds.stderr
  seed_0, seed_1 = (read_summary(tmp_path / "seeds" / f"seed-{s}") for s in (0, 1))
  assert seed_0["test_accuracy"] == read_summary(nnx_run)["test_accuracy"] != seed_1["test_accuracy"]
  two = run_cli(
    *folder_args(digits, HELD_OUT["nnx"], 3),
    "--workdir",
    tmp_path / "two",
    "--config.report=false",
    env={"XLA_FLAGS": "", "JAX_NUM_CPU_DEVICES": "2"},
  )
  assert two.returncode == 0, two.stderr
  on_two = read_summary(tmp_path / "two")
  assert on_two["device"] == "2x cpu (cpu)"
  assert abs(on_two["test_accuracy"] - seed_0["test_accuracy"]) <= 0.02


def test_two_nnx_tuning_trials(digits, tmp_path):
  sweep = tmp_path / "nnx_sweep.py"
  sweep.write_text(
    f"from fluxdigits import config\n\n\ndef get_config():\n  c = config.load({str(BASE)!r})\n"
    f"  c.dataset.name = 'folder'\n  c.dataset.data_dir = {str(digits)!r}\n"
    f"  c.model.name = {HELD_OUT['nnx']!r}\n  c.num_epochs = 1\n  return c\n\n\ndef space(trial):\n"
    "  trial.suggest_float('optimizer.learning_rate', 1e-3, 3e-3, log=True)\n"
  )
  result = run_module("tune", sweep, "--trials", "2", "--workdir", tmp_path / "tune")
  assert result.returncode == 0, result.stderr
  trials = sorted((tmp_path / "tune" / "trials").iterdir())
  assert len(trials) == 2 and all(read_summary(t)["best_val_accuracy"] > 0.2 for t in trials)  # chance: 0.1


BAD_NNX = """
from flax import nnx

class NoRngs(nnx.Module):
  def __init__(self, num_classes: int):
    self.num_classes = num_classes
  def __call__(self, x):
    return x

class ThreeLogits(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(64, 3, rngs=rngs)
  def __call__(self, x):
    return self.linear(x.reshape(x.shape[0], -1))

class Fine(nnx.Module):
  def __init__(self, num_classes: int, width: int = 8, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(64, num_classes, rngs=rngs)
  def __call__(self, x):
    return self.linear(x.reshape(x.shape[0], -1))
"""


@pytest.mark.parametrize(
  "name, kwargs, message",
  [
    ("net.py:NoRngs", [], "failed on a batch of (8, 8, 1) images (TypeError: "),
    ("net.py:ThreeLogits", [], "returned shape (2, 3) for a batch of 2 (8, 8, 1) images"),
    (
      "net.py:Fine",
      ["--config.model.kwargs.widht=4"],
      "net.py:Fine has no field 'widht'; its fields: num_classes, width",
    ),
    ("net.py:Nope", [], "defines no 'Nope'; its Flax modules: Fine, NoRngs, ThreeLogits"),
  ],
)
def test_a_bad_nnx_model_is_one_line_and_exit_2(digits, tmp_path, name, kwargs, message):
  (tmp_path / "net.py").write_text(BAD_NNX)
  args = [*folder_args(digits, name, 1), "--workdir", tmp_path / "run", *kwargs]
  result = run_cli(*args, cwd=tmp_path, timeout=300)
  err = result.stderr.strip()
  assert result.returncode == 2 and err.startswith("error: ") and message in err and "\n" not in err, err
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_seed_cnn_written_with_flax_s_layers_compiles_to_the_built_in_program_linen_and_nnx():
  """Why an NNX or Linen model of flax's own layers trains as fast as the built-in one on a CPU
  (benchmarks/flax_apis.py times them): cpu_formulated gives them the same XLA program."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import flax_apis

  built_in, linen, nnx = (flax_apis.compiled_operations(model) for model in flax_apis.MODELS.values())
  assert linen == nnx == built_in, (sum(built_in.values()), sum(linen.values()), sum(nnx.values()))
