"""TensorBoard event files of real MNIST runs, read back as TensorBoard reads them: the curves equal metrics.jsonl and
summary.json, a kill -9 and resume leaves no duplicated or backward step, seeds carry their hyperparameters (tuning
trials': test_tune.py), --config.profile_steps writes a trace, and --config.tensorboard=false writes nothing."""

import json
import pathlib
import time

import pytest
from conftest import EXPERIMENTS, kill_once_written, read_summary, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from fluxdigits import tensorboard

QUICK = ["--config.dataset.max_train_examples=3000", "--config.steps_per_call=20", "--config.report=false"]


def read_events(run_dir) -> EventAccumulator:
  events = EventAccumulator(str(pathlib.Path(run_dir) / tensorboard.FOLDER), size_guidance={"scalars": 0, "images": 0})
  events.Reload()
  return events


def curve(events, tag) -> list[tuple[int, float]]:
  return [(e.step, e.value) for e in events.Scalars(tag)]


def session_hparams(events) -> dict:
  content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
  values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
  return {key: getattr(value, value.WhichOneof("kind")) for key, value in values.items()}


def assert_curves_match_the_run(run_dir, epochs: int):
  """Each tag's steps strictly increase; the epoch and test tags equal metrics.jsonl's rows and summary.json."""
  events, summary = read_events(run_dir), read_summary(run_dir)
  rows = [json.loads(line) for line in (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
  steps_per_epoch = summary["train_steps"] // summary["epochs_run"]
  assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
  for tag in events.Tags()["scalars"]:
    steps = [step for step, _ in curve(events, tag)]
    assert steps == sorted(set(steps)), f"{tag}: steps {steps} repeat or go back"
  for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"):
    assert curve(events, f"epoch/{key}") == [
      (r["epoch"] * steps_per_epoch, pytest.approx(r[key], rel=1e-6)) for r in rows
    ]
  train_steps = [step for step, _ in curve(events, "train/loss")]
  assert train_steps[-1] == summary["train_steps"]
  assert {e * steps_per_epoch for e in range(1, epochs + 1)} <= set(train_steps)  # an epoch's last call ends it
  # The calls' mean losses (of as many steps as fit in a second, at most 20) average to the epoch's.
  first_epoch = [(step, value) for step, value in curve(events, "train/loss") if step <= steps_per_epoch]
  assert all(0 < b - a <= 20 for a, b in zip([0] + train_steps, train_steps))
  sizes = [step - before for (step, _), before in zip(first_epoch, [0] + [s for s, _ in first_epoch])]
  assert sum(v * n for (_, v), n in zip(first_epoch, sizes)) / steps_per_epoch == pytest.approx(
    rows[0]["train_loss"], rel=1e-5
  )
  assert curve(events, "test/accuracy") == [(summary["train_steps"], pytest.approx(summary["test_accuracy"]))]
  return events, summary


def test_a_run_writes_its_curves_hyperparameters_and_report_pictures(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli(
    EXPERIMENTS / "mnist_cnn.py",
    "--workdir",
    workdir,
    "--config.num_epochs=2",
    *[q for q in QUICK if "report" not in q],
  )
  assert result.returncode == 0, result.stderr
  events, summary = assert_curves_match_the_run(workdir, epochs=2)
  assert summary["test_accuracy"] > 0.9
  assert set(events.Tags()["images"]) == {"report/curves", "report/confusion_matrix", "report/misclassified"}
  hparams = session_hparams(events)
  assert hparams["seed"] == 0 and hparams["num_epochs"] == 2 and hparams["model.name"] == "cnn"
  assert hparams["dataset.max_train_examples"] == 3000 and "_hparams_/session_end_info" in events.PluginTagToContent(
    "hparams"
  )


def test_a_killed_run_resumes_its_curves_without_repeated_steps(tmp_path):
  workdir = tmp_path / "run"
  args = [EXPERIMENTS / "mnist_cnn.py", "--workdir", workdir, "--config.num_epochs=3", *QUICK]
  kill_once_written(args, workdir / "checkpoints" / "1", "the run, in its second epoch,")
  # What a killed run may have written after its checkpoint (its next calls and epoch): points the resumed run must
  # hide. TensorBoard's Python loader drops them at the resumed run's restart event; its Rust data server when the
  # resumed run writes the same steps again.
  checkpointed = curve(read_events(workdir), "train/loss")[-1][0]
  tbx = tensorboard._tensorboardx()
  stale = tbx.event_file_writer.EventsWriter(str(workdir / tensorboard.FOLDER / "events"), ".stale")
  points = [(checkpointed + 20 * k, "train/loss", 99.0) for k in (1, 2, 3)] + [
    (2 * checkpointed, "epoch/val_accuracy", 0.01)
  ]
  for step, tag, value in points:
    stale.write_event(tbx.proto.event_pb2.Event(step=step, summary=tbx.summary.scalar(tag, value)))
  stale.close()
  time.sleep(1.1)  # event files are read in the order of their names, which start with the second they were made
  result = run_cli(*args)
  assert result.returncode == 0 and "resuming from epoch 1" in result.stdout, result.stderr
  events, _ = assert_curves_match_the_run(workdir, epochs=3)
  assert all(value != 99.0 for _, value in curve(events, "train/loss"))
  assert all(value != pytest.approx(0.01) for _, value in curve(events, "epoch/val_accuracy"))


def test_each_seed_of_a_population_is_its_own_run_with_its_seed(tmp_path):
  workdir = tmp_path / "seeds"
  result = run_cli(
    EXPERIMENTS / "mnist_cnn.py", "--workdir", workdir, "--seeds", "0-1", "--config.num_epochs=1", *QUICK
  )
  assert result.returncode == 0, result.stderr
  for seed in (0, 1):
    events, _ = assert_curves_match_the_run(workdir / f"seed-{seed}", epochs=1)
    assert session_hparams(events)["seed"] == seed
  assert curve(read_events(workdir / "seed-0"), "train/loss") != curve(read_events(workdir / "seed-1"), "train/loss")


def test_profile_steps_traces_train_calls_and_tensorboard_false_writes_no_events(tmp_path):
  traced, off = tmp_path / "traced", tmp_path / "off"
  result = run_cli(
    EXPERIMENTS / "mnist_cnn.py", "--workdir", traced, "--config.num_epochs=1", "--config.profile_steps=20", *QUICK
  )
  assert result.returncode == 0, result.stderr
  assert list((traced / tensorboard.FOLDER / "plugins" / "profile").glob("*/*.xplane.pb"))
  result = run_cli(
    EXPERIMENTS / "mnist_cnn.py", "--workdir", off, "--config.num_epochs=1", "--config.tensorboard=false", *QUICK
  )
  assert result.returncode == 0, result.stderr
  assert not (off / tensorboard.FOLDER).exists() and (off / "summary.json").is_file()
