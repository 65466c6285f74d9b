import json
import pathlib
import shutil

import pytest
from conftest import EXPERIMENTS, kill_once_written, read_summary, run_cli

from fluxdigits import checkpoint
from fluxdigits.errors import UserError

CNN = str(EXPERIMENTS / "mnist_cnn.py")
QUICK = [
  "--config.dataset.max_train_examples=12800",
  "--config.dataset.max_test_examples=2000",
  "--config.report=false",
]


def metrics_epochs(workdir):
  return [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_run_killed_mid_epoch_resumes_to_exactly_the_uninterrupted_result(tmp_path):
  args = ["--config.num_epochs=2", *QUICK]
  uninterrupted = run_cli(CNN, "--workdir", tmp_path / "whole", *args)
  assert uninterrupted.returncode == 0, uninterrupted.stderr

  workdir = tmp_path / "killed"
  kill_once_written([CNN, "--workdir", workdir, *args], workdir / "checkpoints" / "1", "the run, in its second epoch,")
  assert not (workdir / "summary.json").exists()

  resumed = run_cli(CNN, "--workdir", workdir, *args)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from epoch 1" in resumed.stdout
  whole, after_kill = read_summary(tmp_path / "whole"), read_summary(workdir)
  assert after_kill["test_accuracy"] == whole["test_accuracy"]
  assert after_kill["test_loss"] == whole["test_loss"]
  assert after_kill["best_val_accuracy"] == whole["best_val_accuracy"]
  assert metrics_epochs(workdir) == [1, 2]


@pytest.fixture(scope="module")
def trained_two_epochs(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained") / "run"
  result = run_cli(CNN, "--workdir", workdir, "--config.num_epochs=2", *QUICK)
  assert result.returncode == 0, result.stderr
  return workdir


@pytest.fixture
def two_epoch_run(trained_two_epochs, tmp_path):
  """A private copy of a finished 2-epoch run, for a test to damage or change."""
  return pathlib.Path(shutil.copytree(trained_two_epochs, tmp_path / "run"))


def largest_file(folder):
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_corrupt_latest_checkpoint_resumes_from_the_previous_one(two_epoch_run):
  damaged = largest_file(two_epoch_run / "checkpoints" / "2" / "state")
  damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
  result = run_cli(CNN, "--workdir", two_epoch_run, "--config.num_epochs=3", *QUICK)
  assert result.returncode == 0, result.stderr
  assert "warning: checkpoint of epoch 2 is unreadable" in result.stderr and "Traceback" not in result.stderr
  assert "resuming from epoch 1" in result.stdout
  assert metrics_epochs(two_epoch_run) == [1, 2, 3]
  assert read_summary(two_epoch_run)["epochs_run"] == 3


def test_no_readable_checkpoint_is_a_clear_error_and_deletes_nothing(two_epoch_run):
  for epoch in ("1", "2"):
    damaged = largest_file(two_epoch_run / "checkpoints" / epoch / "state")
    damaged.write_bytes(b"")
  before = sorted(p.relative_to(two_epoch_run) for p in two_epoch_run.rglob("*"))
  result = run_cli(CNN, "--workdir", two_epoch_run, "--config.num_epochs=3", *QUICK)
  assert result.returncode == 2
  assert "none of the checkpoints [2, 1]" in result.stderr and "--restart" in result.stderr
  assert "Traceback" not in result.stderr
  assert sorted(p.relative_to(two_epoch_run) for p in two_epoch_run.rglob("*")) == before


def test_huge_learning_rate_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  sgd = ["--config.optimizer.name=sgd", *QUICK]
  assert (
    run_cli(
      CNN, "--workdir", workdir, "--config.num_epochs=1", "--config.optimizer.learning_rate=0.01", *sgd
    ).returncode
    == 0
  )
  diverged = run_cli(CNN, "--workdir", workdir, "--config.num_epochs=2", "--config.optimizer.learning_rate=1e30", *sgd)
  assert diverged.returncode == 1
  message = diverged.stderr.strip().splitlines()[-1]
  assert (
    message.startswith("error: loss became") and "at step" in message and "lower optimizer.learning_rate" in message
  )
  assert metrics_epochs(workdir) == [1]
  _, _, state, progress = checkpoint.load_run(workdir, "latest")
  assert progress.epoch == 1 and int(state.step) == 400
  # The message's advice works: a lower rate resumes from the last good epoch.
  lower = run_cli(CNN, "--workdir", workdir, "--config.num_epochs=2", "--config.optimizer.learning_rate=0.01", *sgd)
  assert lower.returncode == 0 and "resuming from epoch 1" in lower.stdout
  assert read_summary(workdir)["test_accuracy"] > 0.9


def test_a_workdir_with_another_config_is_refused(two_epoch_run):
  before = (two_epoch_run / "summary.json").read_text()
  result = run_cli(CNN, "--workdir", two_epoch_run, "--config.batch_size=64", "--config.num_epochs=2", *QUICK)
  assert result.returncode == 2
  message = result.stderr.strip()
  assert "batch_size (32 -> 64)" in message and "--restart" in message and "--workdir" in message
  assert (two_epoch_run / "summary.json").read_text() == before


def test_restart_moves_the_old_run_aside(two_epoch_run):
  old_summary = (two_epoch_run / "summary.json").read_text()
  result = run_cli(CNN, "--workdir", two_epoch_run, "--restart", "--config.num_epochs=1", *QUICK)
  assert result.returncode == 0, result.stderr
  assert "resuming" not in result.stdout
  aside = [p for p in two_epoch_run.parent.iterdir() if p.name.startswith("run.old-")]
  assert len(aside) == 1
  assert (aside[0] / "summary.json").read_text() == old_summary
  assert sorted(p.name for p in (aside[0] / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
  assert metrics_epochs(two_epoch_run) == [1]


def test_finished_run_rerun_says_so_and_shows_its_summary(two_epoch_run):
  before = (two_epoch_run / "summary.json").read_text()
  result = run_cli(CNN, "--workdir", two_epoch_run, "--config.num_epochs=2", *QUICK)
  assert result.returncode == 0, result.stderr
  assert "is finished (2 epochs, num_epochs=2): nothing to train" in result.stdout and "resuming" not in result.stdout
  assert f"test accuracy {json.loads(before)['test_accuracy']:.4f}" in result.stdout
  assert "with the averaged weights of epoch 2" in result.stdout
  assert (two_epoch_run / "summary.json").read_text() == before


def edit_progress(run, epoch, **changes):
  path = run / "checkpoints" / str(epoch) / "progress" / "metadata"
  path.write_text(json.dumps({**json.loads(path.read_text()), **changes} if changes else {}))


def test_a_damaged_best_checkpoint_gives_way_to_the_latest(two_epoch_run, capsys):
  edit_progress(two_epoch_run, 2, best_epoch=1)  # as if epoch 1 had been the best
  damaged = largest_file(two_epoch_run / "checkpoints" / "1" / "state")
  damaged.write_bytes(damaged.read_bytes()[:100])
  _, _, state, progress = checkpoint.load_run(two_epoch_run, "best")  # as the report loads it
  assert progress.best_epoch == 2 and int(state.step) == 800
  assert "warning: the best checkpoint, epoch 1, is unreadable" in capsys.readouterr().err
  result = run_cli(CNN, "--workdir", two_epoch_run, "--config.num_epochs=3", *QUICK)
  assert result.returncode == 0, result.stderr
  assert "warning: the best checkpoint, epoch 1, is unreadable" in result.stderr and "Traceback" not in result.stderr
  assert metrics_epochs(two_epoch_run) == [1, 2, 3]


def test_a_checkpoint_with_empty_progress_is_skipped(two_epoch_run):
  edit_progress(two_epoch_run, 2)
  _, _, state, progress = checkpoint.load_run(two_epoch_run, "latest")
  assert progress.epoch == 1 and int(state.step) == 400


def test_checkpoints_refuse_another_config_even_without_config_json(two_epoch_run):
  (two_epoch_run / "config.json").unlink()
  result = run_cli(CNN, "--workdir", two_epoch_run, "--config.num_epochs=3", "--config.batch_size=64", *QUICK)
  assert result.returncode == 2
  assert "holds a run with another config: batch_size (32 -> 64)" in result.stderr.strip().splitlines()[-1]
  assert metrics_epochs(two_epoch_run) == [1, 2]


def test_num_epochs_below_the_epochs_done_is_refused(two_epoch_run):
  result = run_cli(CNN, "--workdir", two_epoch_run, "--config.num_epochs=1", *QUICK)
  assert result.returncode == 2
  assert "has trained 2 epochs already, more than num_epochs=1; pass --config.num_epochs=2" in result.stderr
  assert metrics_epochs(two_epoch_run) == [1, 2] and read_summary(two_epoch_run)["epochs_run"] == 2


def test_load_run_errors(tmp_path):
  with pytest.raises(UserError, match="not a fluxdigits run"):
    checkpoint.load_run(tmp_path)
