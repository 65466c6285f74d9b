"""benchmarks/experiments.py: the README's tables rendered from records, and real-digit scoring (no training)."""

import importlib.util
import json
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

import fluxdigits
from fluxdigits.errors import UserError

sys.path.insert(0, str(REPO / "benchmarks"))
_spec = importlib.util.spec_from_file_location("experiments_script", REPO / "benchmarks" / "experiments.py")
experiments = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(experiments)
import tables  # noqa: E402  (benchmarks/, on the path above)


def record(name, test_accuracy, digits=None):
  r = {
    "experiment": name,
    "date": "2026-11-24",
    "wall_seconds": 1.0,
    "source": f"python benchmarks/experiments.py {name}",
    "summary": {
      "test_accuracy": test_accuracy,
      "test_loss": 0.1,
      "epochs_run": 1,
      "num_epochs": 1,
      "num_params": 10,
      "train_seconds": 1.0,
    },
  }
  if digits is not None:
    r["real_digits"] = digits
  return r


def digits(files, correct, **sources):
  return {
    "files": files,
    "correct": correct,
    "top1": correct / files,
    "sources": {s: {"files": n, "correct": c, "top1": c / n} for s, (n, c) in sources.items()},
  }


def test_real_digits_table_has_a_row_per_measured_record_and_a_column_per_source():
  records = [
    record("mnist_mlp", 0.9804, digits(20, 18, krisut=(10, 9), dfak0=(10, 9))),
    record("mnist_cnn_deep", 0.9955),  # recorded before real digits were measured: no row
    record("mnist_fast", 0.9912, digits(20, 19, krisut=(10, 9), dfak0=(10, 10))),
  ]
  assert experiments.digits_table(records).splitlines() == [
    "| run | MNIST test | all 20 | dfak0 (10 drawings) | krisut (10 photos, coloured paper) |",
    "| --- | ---: | ---: | ---: | ---: |",
    "| `mnist_mlp` | 98.04% | 90.0% | 90.0% | 90.0% |",
    "| `mnist_fast` | 99.12% | **95.0%** | 100.0% | 90.0% |",
  ]


def test_counts_that_differ_between_records_go_in_the_cells():
  records = [
    record("a", 0.9, digits(4, 2, newsource=(4, 2))),
    record("b", 0.9, digits(5, 5, newsource=(3, 3), other=(2, 2))),
  ]
  header, _, a, b = experiments.digits_table(records).splitlines()
  assert header == "| run | MNIST test | all | newsource | other (2) |"
  assert a == "| `a` | 90.00% | 50.0% of 4 | 50.0% of 4 |  |"
  assert b == "| `b` | 90.00% | **100.0% of 5** | 100.0% of 3 | 100.0% |"
  assert experiments.digits_table([record("c", 0.9)]) == "No experiment has real-digit figures recorded yet."


def test_a_marked_table_is_rewritten_from_its_records_and_the_rest_kept(tmp_path, monkeypatch):
  monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "r.json").write_text(
    json.dumps(
      {
        "device": "CPU X",
        "date": "2026-12-01",
        "runs": [
          {
            "experiment": "experiments/mnist_fast.py",
            "overrides": ["--config.num_epochs=2"],
            "test_accuracy": 0.99,
            "epochs": 2,
            "wall_s": 12.0,
            "compile_s": 1.0,
            "train_s": 8.0,
            "peak_rss_mib": 600.0,
          }
        ],
      }
    )
  )
  doc = tmp_path / "docs" / "page.md"
  doc.parent.mkdir()
  doc.write_text("before\n<!-- table: time-to-accuracy r.json -->\nstale\n<!-- end of table -->\nafter\n")
  monkeypatch.setattr(tables, "documents", lambda: [doc])
  monkeypatch.setattr(tables, "ROOT", tmp_path)
  assert tables.stale() == ["docs/page.md: time-to-accuracy r.json"]
  assert tables.rewrite() == [doc] and tables.stale() == []
  text = doc.read_text()
  assert text.startswith("before\n<!-- table: time-to-accuracy r.json -->\n| experiment |") and text.endswith(
    "<!-- end of table -->\nafter\n"
  )
  assert "| `mnist_fast` | `num_epochs=2` | 99.00% | 2 | 12.0 s | 1.0 s | 8.0 s | 600 MiB |" in text
  assert "CPU X, 2026-12-01: [`r.json`](../results/r.json)" in text


def test_headline_rates_fluxdigits_against_the_fastest_peer_and_names_it():
  step = {
    "results": [
      {"system": s, "batch_size": 32, "train_images_per_s": v} for s, v in (("fluxdigits", 900.0), ("keras", 300.0))
    ]
  }
  speeds = {"fluxdigits": 500.0, "pytorch": 400.0, "pytorch_channels_last": 625.0, "pytorch_compiled": 550.0}
  row = {
    "model": "resnet20",
    "dataset": "cifar10",
    "batch_size": 128,
    **{s: {"train_images_per_s": v} for s, v in speeds.items()},
  }
  cnn = {
    "model": "cnn",
    "dataset": "mnist",
    "batch_size": 32,
    "fluxdigits": {"train_images_per_s": 800.0},
    "pytorch": {"train_images_per_s": 200.0},
  }
  lines = tables.headline(step, {"device": "CPU", "results": [row, cnn]}).splitlines()
  assert lines[2] == "| cnn, mnist | 32 | 800 | PyTorch eager | 200 | 4.00x | 3.00x | CPU |"
  assert lines[3] == "| resnet20, cifar10 | 128 | 500 | PyTorch eager, channels_last | 625 | 0.80x |  | CPU |"


def test_every_table_of_the_readme_and_docs_is_the_one_its_records_give():
  assert tables.stale() == [], (
    "tables differ from their records in benchmarks/results/: run python benchmarks/tables.py"
  )


class FakeClassifier:
  class_names = tuple("0123456789")

  def prepare(self, path):
    if "broken" in path.name:
      raise UserError(f"{path}: truncated or corrupt image")
    return np.full((28, 28, 1), int(path.name[0]), np.uint8)

  def predict(self, images):
    guesses = [9 if int(image[0, 0, 0]) == 4 else int(image[0, 0, 0]) for image in images]  # every 4 read as a 9
    return np.eye(10, dtype=np.float32)[guesses] * 0.9 + 0.01


def test_real_digits_scored_per_source_with_unreadable_files_as_misses(tmp_path, monkeypatch, capsys):
  for name in ["3_alice_1.png", "4_alice_2.png", "5_bob_1.png", "6_bob_broken.png", "notes.png"]:
    Image.new("L", (8, 8), 255).save(tmp_path / name)
  (tmp_path / "readme.txt").write_text("not an image suffix: not looked at")
  monkeypatch.setattr(fluxdigits, "load_classifier", lambda workdir: FakeClassifier())
  result = experiments.evaluate_real_digits("unused-workdir", tmp_path)
  assert (result["files"], result["correct"], result["top1"]) == (4, 2, 0.5)
  assert result["sources"] == {
    "alice": {"files": 2, "correct": 1, "top1": 0.5},
    "bob": {"files": 2, "correct": 1, "top1": 0.5},
  }
  assert [(m["file"], m["label"], m["predicted"]) for m in result["misclassified"]] == [("4_alice_2.png", "4", "9")]
  assert [e["file"] for e in result["errors"]] == ["6_bob_broken.png"]
  assert result["unlabelled"] == ["notes.png"]
  assert "could not be read" in capsys.readouterr().err
  assert experiments.source_of("4_krisut_1.png") == "krisut" and experiments.source_of("7.png") == "(no source)"


def test_absent_folder_records_nothing_and_says_so(tmp_path, capsys):
  assert experiments.evaluate_real_digits("unused-workdir", tmp_path / "absent") is None
  assert "absent" in capsys.readouterr().err


def test_mnist_c_corruptions_are_fixed_change_the_digits_and_keep_their_format():
  import robustness

  images, _ = robustness.mnist_test()
  images = images[:64]
  for name in robustness.CORRUPTIONS:
    corrupted = robustness.corrupt(images, name)
    assert corrupted.shape == images.shape and corrupted.dtype == np.uint8, name
    assert np.abs(corrupted.astype(int) - images).mean() > 1.0, name
    np.testing.assert_array_equal(corrupted, robustness.corrupt(images, name), err_msg=name)


def test_robustness_table_has_a_column_per_measured_record_and_bolds_each_rows_best():
  import robustness

  figures = lambda value: {
    **{
      name: value for name in ["clean", *robustness.CORRUPTIONS, "mean", "photos_mean", *robustness.WRITTEN_OTHERWISE]
    },
    "photos": {kind: value for kind in robustness.photos.KINDS},
  }
  records = [record("mnist_cnn", 0.98), record("mnist_fast", 0.99), record("mnist_handwriting", 0.993)]
  records[0]["mnist_c"], records[2]["mnist_c"] = figures(0.7), figures(0.9)
  del records[0]["mnist_c"]["closed_fours"]  # recorded before closed-top 4s were measured: its cell stays empty
  lines = robustness.table(records).splitlines()
  assert lines[0] == "| corruption | `mnist_cnn` | `mnist_handwriting` |"
  assert "| **mean** | 70.0% | **90.0%** |" in lines
  assert "| photos: drawing area (300) | 70.0% | **90.0%** |" in lines
  rows = ["clean", *robustness.CORRUPTIONS, "mean", *robustness.photos.KINDS, "photos_mean"]
  assert len(lines) == 2 + len(rows) + len(robustness.WRITTEN_OTHERWISE)
  assert lines[-1] == "| closed-top 4s (the 982 test 4s, top closed) |  | **90.0%** |"
  assert experiments.table(records).splitlines()[2].split(" | ")[2:4] == ["70.0%", "70.0%"]  # MNIST-C, photos


def test_reevaluating_measures_the_kept_run_and_keeps_the_training_figures(tmp_path, monkeypatch):
  """--reevaluate: refused without the run --keep left, or with another run there; else the record gains the date
  and commit of its new measures, its training figures as they were (a CIFAR run has no digit measures to take)."""
  monkeypatch.setattr(experiments, "ROOT", tmp_path)
  monkeypatch.setattr(experiments, "RECORDS", tmp_path / "records")
  recorded = record("cifar10_fast", 0.94)
  (tmp_path / "records").mkdir()
  (tmp_path / "records" / "cifar10_fast.json").write_text(json.dumps(recorded))
  with pytest.raises(SystemExit, match="runs/cifar10_fast, which is absent"):
    experiments.reevaluate("cifar10_fast")
  run = tmp_path / "runs" / "cifar10_fast"
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"dataset.name": "cifar10"}))
  (run / "summary.json").write_text(json.dumps({**recorded["summary"], "test_accuracy": 0.5}))
  with pytest.raises(SystemExit, match="is not the recorded run"):
    experiments.reevaluate("cifar10_fast")
  (run / "summary.json").write_text(json.dumps(recorded["summary"]))
  again = experiments.reevaluate("cifar10_fast")
  assert {k: v for k, v in again.items() if k != "evaluated"} == recorded
  assert again["evaluated"]["date"] and json.loads((tmp_path / "records" / "cifar10_fast.json").read_text()) == again
