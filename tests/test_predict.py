"""Predicting files and arrays with a run trained on real MNIST, the command line, and the exports."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import EXPERIMENTS, SHARED, run_cli, run_module
from PIL import Image

import fluxdigits
from fluxdigits import data

REAL_DIGITS = SHARED / "data" / "real-digits"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("predict") / "mnist_fast"
  result = run_cli(
    EXPERIMENTS / "mnist_fast.py", "--workdir", workdir, "--config.num_epochs=1", "--config.report=false"
  )
  assert result.returncode == 0, result.stderr
  return workdir


@pytest.fixture(scope="module")
def classifier(run_dir):
  return fluxdigits.load_classifier(run_dir)


def predict_cli(*args, **kwargs):
  return run_module("predict", *args, timeout=300, **kwargs)


def test_arrays_in_dataset_format_go_to_the_model_as_they_are(classifier):
  test = data.read_tfds_split("mnist", "test", os.environ["TFDS_DATA_DIR"], True)[:1000]
  probs = classifier.predict(test.images)
  assert probs.shape == (1000, 10) and np.allclose(probs.sum(-1), 1, atol=1e-5)
  assert (probs.argmax(-1) == test.labels).mean() >= 0.97


def test_real_photos_and_drawings(classifier):
  files = sorted(REAL_DIGITS.glob("*.png"))
  labels = np.array([int(f.name[0]) for f in files])
  probs = classifier.predict(np.stack([classifier.prepare(f) for f in files]))
  assert np.allclose(probs[:3], classifier.predict(files[:3]))  # paths take the same road
  # One epoch of the seed CNN; the README gives every experiment's figure.
  assert (probs.argmax(-1) == labels).mean() >= 0.85


def test_cli_predicts_good_files_and_names_each_bad_one(run_dir, tmp_path):
  (tmp_path / "notes.png").write_text("not an image")
  Image.new("L", (100, 100), 255).save(tmp_path / "blank.png")
  good = sorted(REAL_DIGITS.glob("3_*.png"))[:2]
  result = predict_cli(
    run_dir,
    *good,
    tmp_path / "notes.png",
    tmp_path / "blank.png",
    tmp_path / "missing.png",
    "--csv",
    tmp_path / "out.csv",
    "--show",
    tmp_path / "show.png",
    "--top",
    "2",
  )
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 3 and all(name in result.stderr for name in ("notes.png", "blank.png", "missing.png"))
  assert "Traceback" not in result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 2 and all(line.split(": ")[1].startswith("3 ") for line in lines)
  assert len((tmp_path / "out.csv").read_text().splitlines()) == 3
  assert Image.open(tmp_path / "show.png").size[0] > 500


def test_cli_reads_a_number(run_dir, tmp_path):
  parts = [Image.open(REAL_DIGITS / f"{d}_dfak0_2.png").convert("RGBA") for d in "2026"]
  number = Image.new("RGBA", (sum(p.width for p in parts), max(p.height for p in parts)), "white")
  x = 0
  for part in parts:
    number.paste(part, (x, 0), part)
    x += part.width
  number.save(tmp_path / "2026.png")
  result = predict_cli(run_dir, tmp_path / "2026.png", "--digits")
  assert result.returncode == 0, result.stderr
  assert result.stdout.split(": ")[1].startswith("2026 ")


def test_cli_refuses_an_unfinished_run(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  result = predict_cli(tmp_path, REAL_DIGITS)
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_export_matches_jax_and_runs_without_fluxdigits(run_dir, tmp_path, fmt):
  pytest.importorskip("jax2onnx") if fmt == "onnx" else None
  result = run_module("export", run_dir, "--format", fmt, "--out", tmp_path, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "match the JAX model's" in result.stdout
  test = data.read_tfds_split("mnist", "test", os.environ["TFDS_DATA_DIR"], True)[:200]
  np.save(tmp_path / "images.npy", test.images.astype(np.float32) / 255.0)
  runner = {
    "onnx": "import onnxruntime as ort; s = ort.InferenceSession(d + '/model.onnx'); "
    "logits = s.run(None, {s.get_inputs()[0].name: x})[0]",
    "stablehlo": "import jax; e = jax.export.deserialize(bytearray(open(d + '/model.jax_export', 'rb').read())); "
    "logits = np.asarray(e.call(x))",
  }[fmt]
  script = textwrap.dedent(f"""
      import sys
      sys.modules["fluxdigits"] = None  # as if fluxdigits were not installed
      try:
        import fluxdigits
        raise SystemExit("fluxdigits is importable")
      except ImportError:
        pass
      import numpy as np
      d = sys.argv[1]
      x = np.load(d + "/images.npy")
      {runner}
      np.save(d + "/logits.npy", logits)
  """)
  ran = subprocess.run(
    [sys.executable, "-c", script, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
  )
  assert ran.returncode == 0, ran.stderr
  logits = np.load(tmp_path / "logits.npy")
  assert logits.shape == (200, 10) and (logits.argmax(-1) == test.labels).mean() >= 0.95


def test_a_run_trained_across_two_devices_predicts_on_one(tmp_path):
  workdir = tmp_path / "two_devices"
  result = run_cli(
    EXPERIMENTS / "mnist_mlp.py",
    "--workdir",
    workdir,
    "--config.num_epochs=1",
    "--config.report=false",
    "--config.dataset.max_train_examples=2000",
    env={"JAX_NUM_CPU_DEVICES": "2"},
  )
  assert result.returncode == 0 and "for 2x cpu" in result.stdout, result.stderr
  files = sorted(REAL_DIGITS.glob("7_*.png"))[:2]
  result = predict_cli(workdir, *files, env={"JAX_NUM_CPU_DEVICES": "1"})
  assert result.returncode == 0, result.stderr
  assert [line.split()[0] for line in result.stdout.splitlines()] == [f"{f}:" for f in files]
