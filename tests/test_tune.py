"""python -m fluxdigits.tune on real MNIST with tiny budgets: a sweep end to end, kill -9 and resume,
two workers on one storage, pruning, and bad input refused before anything trains."""

import json
import os
import pathlib
import signal
import subprocess
import time

import optuna
import pytest
from conftest import REPO, module_command, run_module
from test_tensorboard import read_events, session_hparams

from fluxdigits import config as configs, tune, workdir as workdirs

# A narrow space where every trial learns: the figures below can be asserted.
GOOD_SPACE = """
def space(trial):
  trial.suggest_categorical("batch_size", [32, 64])
  trial.suggest_categorical("optimizer.name", ["adam", "rmsprop"])
  trial.suggest_float("optimizer.learning_rate", 5e-4, 2e-3, log=True)
"""
QUICK = [
  "--config.dataset.max_train_examples=8000",
  "--config.dataset.max_test_examples=2000",
  "--config.checkpoint.keep=1",
]


def write_sweep(folder: pathlib.Path, space: str, name="digits.py") -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / name
  path.write_text("from fluxdigits.config import defaults\n\n\ndef get_config():\n  return defaults()\n" + space)
  return path


def tune_args(sweep, workdir, *args):
  return (sweep, "--workdir", workdir, *args, *QUICK)


def tune_command(sweep, workdir, *args):
  return module_command("tune", *tune_args(sweep, workdir, *args))


def run_tune(sweep, workdir, *args):
  return run_module("tune", *tune_args(sweep, workdir, *args), timeout=600)


def finished_trials(workdir, name="digits"):
  study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'study.db'}")
  return study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


def epochs_in(trial_dir):
  return [json.loads(line)["epoch"] for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]


def test_sweep_end_to_end_chooses_on_validation_and_tests_only_the_chosen_trial(tmp_path):
  sweep, workdir = write_sweep(tmp_path, GOOD_SPACE), tmp_path / "tuning"
  result = run_tune(sweep, workdir, "--trials", 3, "--sampler", "random", "--config.num_epochs=1")
  assert result.returncode == 0, result.stderr
  assert sum(line.startswith("[") and " trial " in line for line in result.stdout.splitlines()) == 3

  trials = finished_trials(workdir)
  assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
  best = max(trials, key=lambda t: t.value)
  assert best.value >= 0.9
  for t in trials:
    trial_dir = workdir / "trials" / f"{t.number:04d}"
    assert epochs_in(trial_dir) == [1]
    summary = json.loads((trial_dir / "summary.json").read_text())
    assert summary["best_val_accuracy"] == t.value
    # The test split is evaluated for the chosen trial only.
    assert ("test_accuracy" in summary) == (t.number == best.number)
    assert json.loads((trial_dir / "config.json").read_text())["optimizer.name"] == t.params["optimizer.name"]
    hparams = session_hparams(read_events(trial_dir))  # each trial's TensorBoard run carries its parameters
    assert {key: hparams[key] for key in t.params} == pytest.approx(t.params)
  chosen = json.loads((workdir / "trials" / f"{best.number:04d}" / "summary.json").read_text())
  assert abs(chosen["test_accuracy"] - best.value) < 0.04
  assert (workdir / "trials" / f"{best.number:04d}" / "report" / "index.html").is_file()

  tuning = (workdir / "tuning.md").read_text()
  assert tuning.count("Test accuracy") == 1 and f"{chosen['test_accuracy']:.4f}" in tuning
  rows = [line for line in tuning.splitlines() if line.startswith("| ") and "trials/" in line]
  assert [int(row.split("|")[1]) for row in rows] == [t.number for t in sorted(trials, key=lambda t: -t.value)]
  assert "python -m fluxdigits.run" in tuning and (workdir / "index.html").is_file()
  for plot in ("history.png", "slice.png", "parallel_coordinate.png"):
    assert (workdir / plot).stat().st_size > 10_000
  # best_experiment.py is the chosen trial's config, ready for python -m fluxdigits.run.
  # The trial's config.json also records where its data was found (dataset.data_dir); the experiment file
  # leaves that to the machine that runs it.
  chosen_config = json.loads((workdir / "trials" / f"{best.number:04d}" / "config.json").read_text())
  assert configs.flatten(configs.load(workdir / "best_experiment.py")) == {**chosen_config, "dataset.data_dir": ""}


def test_a_tuning_worker_stopped_mid_epoch_resumes_the_trial_from_that_step(tmp_path):
  sweep, workdir = write_sweep(tmp_path, GOOD_SPACE), tmp_path / "tuning"
  args = ["--trials", 2, "--pruner", "none", "--config.num_epochs=1"]
  hold = tmp_path / "hold"
  hold.touch()  # the worker waits after a train call of trial 1: alive, mid-epoch, when the signal comes
  env = {
    **os.environ,
    workdirs.HOLD_ENV: f"call:{hold}",
    workdirs.HOLD_AFTER_ENV: str(workdir / "trials" / "0001"),
  }
  worker = subprocess.Popen(tune_command(sweep, workdir, *args), cwd=REPO, env=env, stdout=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not pathlib.Path(f"{hold}.held").exists():
    assert time.time() < deadline and worker.poll() is None, "the worker ended before trial 1 trained"
    time.sleep(0.02)
  worker.send_signal(signal.SIGTERM)
  assert worker.wait(timeout=60) == 143
  assert not (workdir / "trials" / "0001" / "summary.json").exists()

  result = run_tune(sweep, workdir, *args)
  assert result.returncode == 0, result.stderr
  assert "resumes trial 0001" in result.stdout
  assert "resuming epoch 1 at its step" in (workdir / "trials" / "0001" / "train.log").read_text()
  trials = finished_trials(workdir)
  assert len(trials) == 2
  assert sorted(p.name for p in (workdir / "trials").iterdir()) == ["0000", "0001"]
  assert epochs_in(workdir / "trials" / "0001") == [1]


def test_two_workers_share_one_study_without_running_a_trial_twice(tmp_path):
  sweep, workdir = write_sweep(tmp_path, GOOD_SPACE), tmp_path / "tuning"
  workdir.mkdir()
  command = tune_command(sweep, workdir, "--trials", 4, "--pruner", "none", "--config.num_epochs=1")
  # Each worker waits in its first trial, holding that trial's workdir, until both have one: neither can run every
  # trial before the other is up, however slow the machine.
  hold = tmp_path / "hold"
  hold.touch()
  env = {**os.environ, workdirs.HOLD_ENV: f"lock:{hold}"}
  workers = [
    subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    for _ in range(2)
  ]
  holders = lambda: {lock.read_text().strip() for lock in (workdir / "trials").glob("*/.lock")}
  deadline = time.time() + 300
  while holders() != {str(worker.pid) for worker in workers}:
    assert time.time() < deadline and all(worker.poll() is None for worker in workers), holders()
    time.sleep(0.02)
  hold.unlink()
  outputs = [worker.communicate(timeout=600)[0] for worker in workers]
  assert [worker.returncode for worker in workers] == [0, 0], outputs
  ran = [[line.split()[2] for line in out.splitlines() if line.startswith("[")] for out in outputs]
  trials = finished_trials(workdir)
  # Each worker ran trials of its own, together every trial of the study, none twice.
  assert all(ran) and len(ran[0]) + len(ran[1]) == len(trials)
  assert not set(ran[0]) & set(ran[1])
  assert {int(n) for n in ran[0] + ran[1]} == {t.number for t in trials}
  # The workers stop at the target: only two finishing at the same instant can add one trial.
  assert 4 <= len(trials) <= 5
  assert {t.user_attrs["pid"] for t in trials} == {worker.pid for worker in workers}
  for t in trials:
    assert epochs_in(workdir / "trials" / f"{t.number:04d}") == [1]


def test_pruning_stops_a_hopeless_trial(tmp_path):
  sweep = write_sweep(
    tmp_path,
    """
def space(trial):
  trial.suggest_float("optimizer.learning_rate", 1e-7, 1e-2, log=True)
""",
  )
  workdir = tmp_path / "tuning"
  workdir.mkdir()
  # Known configurations can be queued into the study before tuning: a good one, then a hopeless one.
  study = optuna.create_study(study_name="digits", storage=f"sqlite:///{workdir / 'study.db'}", direction="maximize")
  study.enqueue_trial({"optimizer.learning_rate": 1e-3})
  study.enqueue_trial({"optimizer.learning_rate": 1e-7})
  result = run_tune(sweep, workdir, "--trials", 2, "--pruner", "median", "--config.num_epochs=3")
  assert result.returncode == 0, result.stderr
  good, hopeless = sorted(finished_trials(workdir), key=lambda t: t.number)
  assert good.state == optuna.trial.TrialState.COMPLETE and good.value >= 0.9
  assert hopeless.state == optuna.trial.TrialState.PRUNED
  assert epochs_in(workdir / "trials" / "0001") == [1]  # stopped after its first epoch of 3
  assert max(hopeless.intermediate_values.values()) < 0.5
  assert any(line.startswith("[2/2] trial 0001 pruned") for line in result.stdout.splitlines())


BAD_INPUTS = {
  "unknown_key": (
    'def space(trial):\n  trial.suggest_float("model.dropout", 0.0, 0.5)\n',
    [],
    "unknown config key 'model.dropout'; known keys: augment.closed_fours, augment.crop_padding",
  ),
  "refused_value": (
    'def space(trial):\n  trial.suggest_float("model.dropout_rate", 0.0, 1.0)\n',
    [],
    "'model.dropout_rate' can take 1.0, which the config refuses",
  ),
  "empty_space": ("def space(trial):\n  pass\n", [], "the search space is empty"),
  "no_space": ("", [], "has no space(trial) function"),
  "grid_of_a_range": (GOOD_SPACE, ["--sampler", "grid"], "--sampler grid needs categorical or stepped parameters"),
  "bad_storage": (GOOD_SPACE, ["--storage", "sqlite:////no/such/folder/study.db"], "cannot open the storage"),
  "unreachable_server": (GOOD_SPACE, ["--storage", "postgresql://tuner@127.0.0.1:9/study"], "cannot open the storage"),
  "no_validation": (GOOD_SPACE, ["--config.validation_fraction=0.0"], "tuning chooses on validation accuracy"),
  "no_trials": (GOOD_SPACE, ["--trials", "0"], "--trials must be at least 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2_before_training(case, tmp_path, capsys):
  space, args, message = BAD_INPUTS[case]
  sweep, workdir = write_sweep(tmp_path, space), tmp_path / "tuning"
  argv = [str(sweep), "--workdir", str(workdir), *(args if "--trials" in args else ["--trials", "2", *args])]
  assert tune.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err, err
  assert not (workdir / "trials").exists()


def test_a_study_made_with_another_space_is_refused(tmp_path, capsys):
  workdir = tmp_path / "tuning"
  first = write_sweep(tmp_path / "first", GOOD_SPACE)
  sweep, base = tune.load_sweep(str(first))
  workdir.mkdir()
  url = f"sqlite:///{workdir / 'study.db'}"
  tune.open_study(tune.open_storage(url), "digits", tune.space_of(sweep, base), base, None, None)

  changed = write_sweep(tmp_path / "second", GOOD_SPACE.replace("2e-3", "1e-2"))
  assert tune.main([str(changed), "--trials", "2", "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert "made with another search space (differs in: optimizer.learning_rate)" in err and err.count("\n") == 1
  assert tune.main([str(first), "--trials", "2", "--workdir", str(workdir), "--config.batch_size=16"]) == 2
  assert "another base config: batch_size (32 -> 16)" in capsys.readouterr().err
  assert not (workdir / "trials").exists()


@pytest.mark.parametrize("name", ["mnist_cnn", "cifar10_resnet"])
def test_shipped_sweeps_have_valid_spaces(name):
  sweep, base = tune.load_sweep(str(REPO / "sweeps" / f"{name}.py"))
  space = tune.space_of(sweep, base)
  assert "optimizer.learning_rate" in space and base.validation_fraction > 0
