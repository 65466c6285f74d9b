import csv
import json
import shutil

import numpy as np
import pytest
from conftest import EXPERIMENTS, read_summary, run_module
from matplotlib import image as mpimg

from fluxdigits import report, run

PICTURES = ("curves.png", "misclassified.png", "confusion_matrix.png")


def read_csv(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def read_confusion(report_dir) -> np.ndarray:
  with open(report_dir / "confusion_matrix.csv", newline="") as f:
    return np.array([[int(count) for count in row[1:]] for row in list(csv.reader(f))[1:]])


def assert_sane_png(path, min_side=300, max_side=3000):
  height, width, _ = mpimg.imread(path).shape
  assert min_side <= width <= max_side and min_side <= height <= max_side, (path, width, height)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """One tiny real MNIST run (2 epochs of an MLP on 10,000 training images, the full test split); the report its
  training wrote is kept beside it, in report-at-training-end/."""
  workdir = tmp_path_factory.mktemp("runs") / "mlp"
  assert (
    run.main(
      [
        str(EXPERIMENTS / "mnist_mlp.py"),
        "--workdir",
        str(workdir),
        "--config.num_epochs=2",
        "--config.dataset.max_train_examples=10000",
      ]
    )
    == 0
  )
  shutil.copytree(workdir / "report", workdir.parent / "report-at-training-end")
  return workdir


@pytest.fixture(scope="module")
def report_dir(trained_run):
  return report.write_run_report(trained_run)


def test_report_writes_every_file(report_dir):
  for picture in PICTURES:
    assert_sane_png(report_dir / picture)
  markdown = (report_dir / "report.md").read_text()
  page = (report_dir / "index.html").read_text()
  for picture in PICTURES:
    assert f"({picture})" in markdown and f'src="{picture}"' in page
  summary = read_summary(report_dir.parent)
  for document in (markdown, page):
    assert f"{summary['test_accuracy']:.2%}" in document and f"{summary['num_params']:,}" in document
    assert "model.name" in document  # the config


def test_the_report_of_training_is_the_one_its_best_checkpoint_gives(report_dir):
  """Training draws its report from the test logits it has just computed; restored, the best checkpoint gives the
  same mistakes and confusion."""
  at_training_end = report_dir.parent.parent / "report-at-training-end"
  np.testing.assert_array_equal(read_confusion(at_training_end), read_confusion(report_dir))
  ended, restored = read_csv(at_training_end / "misclassified.csv"), read_csv(report_dir / "misclassified.csv")
  assert [(m["test_index"], m["predicted"]) for m in ended] == [(m["test_index"], m["predicted"]) for m in restored]
  confidences = lambda mistakes: [float(m["confidence"]) for m in mistakes]
  np.testing.assert_allclose(confidences(ended), confidences(restored), atol=2e-4)


def test_confusion_matrix_counts_the_whole_mnist_test_split(report_dir):
  confusion = read_confusion(report_dir)
  assert confusion.shape == (10, 10)
  assert confusion.sum() == read_summary(report_dir.parent)["test_examples"] == 10_000


def test_mistakes_are_the_summary_test_errors(report_dir):
  summary = read_summary(report_dir.parent)
  errors = round(summary["test_examples"] * (1 - summary["test_accuracy"]))
  mistakes = read_csv(report_dir / "misclassified.csv")
  assert len(mistakes) == errors
  confusion = read_confusion(report_dir)
  assert confusion.sum() - np.trace(confusion) == errors
  confidences = [float(m["confidence"]) for m in mistakes]
  assert confidences == sorted(confidences, reverse=True)
  assert all(m["true"] != m["predicted"] for m in mistakes)


def test_per_class_csv_agrees_with_the_matrix(report_dir):
  confusion = read_confusion(report_dir)
  rows = read_csv(report_dir / "per_class.csv")
  assert [row["class"] for row in rows] == list("0123456789")
  recall = [float(row["recall"]) for row in rows]
  precision = [float(row["precision"]) for row in rows]
  np.testing.assert_allclose(recall, np.diag(confusion) / confusion.sum(axis=1), atol=5e-5)
  np.testing.assert_allclose(precision, np.diag(confusion) / confusion.sum(axis=0), atol=5e-5)
  assert [int(row["support"]) for row in rows] == confusion.sum(axis=1).tolist()
  pairs = read_csv(report_dir / "confused_pairs.csv")
  counts = [int(pair["count"]) for pair in pairs]
  assert counts == sorted(counts, reverse=True) and counts[0] == (confusion - np.diag(np.diag(confusion))).max()
  assert all(confusion[int(pair["true"]), int(pair["predicted"])] == int(pair["count"]) for pair in pairs)


def test_comparing_two_runs(trained_run, report_dir, tmp_path, capsys):
  other = tmp_path / "mlp_worse"
  shutil.copytree(trained_run, other, ignore=shutil.ignore_patterns("report"))
  rows = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()]
  (other / "metrics.jsonl").write_text(
    "".join(
      json.dumps({**row, "val_accuracy": row["val_accuracy"] - 0.05, "val_loss": row["val_loss"] + 0.1}) + "\n"
      for row in rows
    )
  )
  out = tmp_path / "comparison"
  assert report.main([str(trained_run), str(other), "--out", str(out)]) == 0
  assert_sane_png(out / "comparison.png")
  table = (out / "comparison.md").read_text()
  assert "[mlp](" in table and "[mlp_worse](" in table and "(comparison.png)" in table
  assert (other / "report" / "index.html").is_file()
  printed = capsys.readouterr().out
  assert str(out / "comparison.md") in printed and str(other / "report" / "index.html") in printed


@pytest.mark.parametrize(
  "missing, message",
  [
    ("everything", "does not exist"),
    ("config.json", "no config.json"),
    ("metrics.jsonl", "no metrics.jsonl"),
    ("summary.json", "no summary.json"),
    ("checkpoints", "holds no checkpoint"),
  ],
)
def test_a_broken_workdir_is_one_error_line_and_exit_code_2(trained_run, tmp_path, capsys, missing, message):
  broken = tmp_path / "broken"
  if missing != "everything":
    shutil.copytree(trained_run, broken, ignore=shutil.ignore_patterns(missing, "report"))
  assert report.main([str(broken)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_the_command_line_reports_bad_input_without_a_traceback(tmp_path):
  result = run_module("report", tmp_path, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr


# --- the pure functions, on arrays small enough to check by hand ----------------------------------


def test_confusion_matrix_rows_are_true_classes():
  confusion = report.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
  np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_per_class_metrics_give_zero_for_a_class_never_predicted_or_present():
  metrics = report.per_class_metrics(np.array([[2, 1, 0], [0, 0, 0], [2, 0, 0]]))
  np.testing.assert_allclose(metrics["precision"], [0.5, 0.0, 0.0])
  np.testing.assert_allclose(metrics["recall"], [2 / 3, 0.0, 0.0])
  np.testing.assert_allclose(metrics["f1"], [2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), 0.0, 0.0])
  np.testing.assert_array_equal(metrics["support"], [3, 0, 2])


def test_most_confused_pairs_skip_the_diagonal_and_empty_cells():
  confusion = np.array([[50, 3, 0], [1, 40, 0], [4, 0, 60]])
  assert report.most_confused_pairs(confusion, top=5) == [(2, 0, 4), (0, 1, 3), (1, 0, 1)]
  assert report.most_confused_pairs(confusion, top=1) == [(2, 0, 4)]


def test_rank_mistakes_puts_the_most_confident_first():
  probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.05, 0.95]])
  assert report.rank_mistakes(np.array([0, 0, 0, 0]), probabilities).tolist() == [3, 1, 2]
  assert report.rank_mistakes(np.array([0, 1, 1, 1]), probabilities).tolist() == []


def test_mistake_title():
  assert report.mistake_title("7", "2", 0.973) == "7 → 2 (97.3%)"
  assert report.mistake_title("Shirt", "T-shirt/top", 0.5, two_lines=True) == "Shirt → T-shirt/top\n(50.0%)"
  assert report.mistake_title("8", "7", 0.99996) == "8 → 7 (>99.9%)"


def test_pictures_without_mistakes_or_with_long_class_names(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  labels = np.arange(8) % 10
  names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
  assert_sane_png(report.plot_misclassified(images, labels, np.eye(10)[labels], names, tmp_path / "none.png"))
  assert_sane_png(report.plot_misclassified(images, labels, np.eye(10)[labels[::-1]], names, tmp_path / "some.png"))
  assert_sane_png(report.plot_confusion(report.confusion_matrix(labels, labels[::-1], 10), names, tmp_path / "cm.png"))
