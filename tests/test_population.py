"""Populations on real MNIST: a member trains exactly as its single run, --seeds survives kill -9, tuning trains
trials of one shape together, and bad input is refused."""

import json
import re

import jax
import numpy as np
import pytest
from conftest import EXPERIMENTS, kill_once_written, read_summary, run_cli, run_module

from fluxdigits import (
  checkpoint,
  config as configs,
  cpu,
  loop,
  mesh as meshes,
  population,
  registry,
  steps,
  workdir as workdirs,
)
from fluxdigits.errors import UserError

CNN = str(EXPERIMENTS / "mnist_cnn.py")
QUICK = ["--config.dataset.max_train_examples=3200", "--config.dataset.max_test_examples=2000", "--config.report=false"]


def small_config(**overrides):
  config = configs.load(CNN)
  values = {
    "model.name": "cnn_dropout",
    "augment.name": "digits",
    "num_epochs": 2,
    "report": False,
    "dataset.max_train_examples": 3200,
    **overrides,
  }
  return configs.validate(configs.override(config, [f"{k}={v}" for k, v in values.items()]))


def metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# On a CPU the CNN's members run one after another inside the compiled call, the MLP's under jax.vmap.
@pytest.mark.parametrize("model", ["cnn_dropout", "mlp"])
def test_a_member_trains_exactly_as_its_single_run(tmp_path, model):
  """Members differing in every data hyperparameter, with dropout and augmentation: each equals its own run."""
  config = small_config(**{"model.name": model})
  assert steps.members_in_parallel(config, registry.create(config, 10)) == (model == "mlp")
  members = [
    small_config(**{"model.name": model, "seed": 0}),
    small_config(
      **{
        "model.name": model,
        "seed": 7,
        "optimizer.learning_rate": 2e-3,
        "optimizer.weight_decay": 1e-4,
        "model.dropout_rate": 0.4,
        "label_smoothing": 0.1,
      }
    ),
  ]
  dirs = [tmp_path / "population" / "a", tmp_path / "population" / "b"]
  together = loop.train(members, tmp_path / "population", dirs, log=lambda *_: None)
  alone = loop.train([members[1]], tmp_path / "alone", log=lambda *_: None)[0]

  # In a population XLA may sum in another order: the parameters differ by ~1e-6 after a step (the same losses to 7
  # digits), and 200 steps of Adam grow that to a few tenths of a percent in the final figures.
  assert together[0]["test_accuracy"] != together[1]["test_accuracy"]
  for key in ("best_epoch", "epochs_run", "num_params"):
    assert together[1][key] == alone[key], key
  for key in ("test_accuracy", "best_val_accuracy"):
    assert together[1][key] == pytest.approx(alone[key], abs=3e-3), key
  assert together[1]["test_loss"] == pytest.approx(alone["test_loss"], rel=2e-2)
  first_epoch, *_ = zip(metrics(dirs[1]), metrics(tmp_path / "alone"), strict=True)
  assert first_epoch[0]["train_loss"] == pytest.approx(first_epoch[1]["train_loss"], rel=1e-3)
  for row_together, row_alone in zip(metrics(dirs[1]), metrics(tmp_path / "alone"), strict=True):
    for key in ("train_loss", "val_loss", "learning_rate"):
      assert row_together[key] == pytest.approx(row_alone[key], rel=2e-2), key
  assert together[1]["test_accuracy"] >= 0.9
  # A member's folder is a finished run like any other: its config, and its best state to load.
  config, _, state, progress = checkpoint.load_run(dirs[1])
  assert config.seed == 7 and config.model.dropout_rate == 0.4 and progress.epoch == 2
  assert steps.count_params(state.params) == alone["num_params"]


def test_a_cpu_population_is_split_over_one_device_per_core():
  """Three members on two lanes (padded to four): each ends its epoch exactly as the same config built alone."""
  if cpu.lanes() < 2:
    pytest.skip("one CPU device (one core, or oneDNN's convolutions): a population runs on one device")
  members = [
    small_config(**{"model.name": "cnn", "seed": seed, "optimizer.learning_rate": rate})
    for seed, rate in ((0, 1e-3), (1, 2e-3), (2, 5e-4))
  ]
  trainer, state = loop.build(members, log=lambda *_: None)
  assert trainer.lanes.size == 2 and len(meshes.data_mesh().devices) == 1
  state, rows, _ = loop.train_epoch(trainer, state, 1, [True, True, False])
  assert state.params["Dense_0"]["kernel"].sharding == meshes.replicated_sharding(trainer.mesh)
  for i in range(3):
    alone, alone_state = loop.build(members[i : i + 1], log=lambda *_: None)
    assert alone.lanes is None
    if i < 2:
      alone_state, alone_rows, _ = loop.train_epoch(alone, alone_state, 1, [True])
      assert rows[i]["train_loss"] == pytest.approx(alone_rows[0]["train_loss"], rel=1e-5)
    # An inactive member keeps its state.
    for ours, theirs in zip(jax.tree.leaves(population.member(state, i)), jax.tree.leaves(alone_state)):
      np.testing.assert_allclose(ours, theirs[0], rtol=1e-4, atol=1e-5)


def seeds_args(workdir):
  return [CNN, "--seeds", "0-1", "--workdir", workdir, "--config.num_epochs=2", *QUICK]


def test_seeds_killed_mid_training_resume_to_the_uninterrupted_population(tmp_path):
  whole = run_cli(*seeds_args(tmp_path / "whole"), timeout=600)
  assert whole.returncode == 0, whole.stderr
  assert "test accuracy over 2 seeds:" in whole.stdout

  workdir = tmp_path / "killed"
  kill_once_written(seeds_args(workdir), workdir / "checkpoints" / "1", "the population, in its second epoch,")
  resumed = run_cli(*seeds_args(workdir), timeout=600)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from epoch 1" in resumed.stdout

  for seed in range(2):
    assert (
      read_summary(workdir / f"seed-{seed}")["test_accuracy"]
      == read_summary(tmp_path / "whole" / f"seed-{seed}")["test_accuracy"]
    )
    # Where the members trained: side by side, one CPU device per core (one device on a one-core machine).
    assert read_summary(workdir / f"seed-{seed}")["device"] == f"{min(cpu.lanes(), 2)}x cpu (cpu)"
    assert [row["epoch"] for row in metrics(workdir / f"seed-{seed}")] == [1, 2]
    assert json.loads((workdir / f"seed-{seed}" / "config.json").read_text())["seed"] == seed
  summary = read_summary(workdir)
  accuracies = [read_summary(workdir / f"seed-{seed}")["test_accuracy"] for seed in range(2)]
  assert summary["members"] == 2
  assert summary["test_accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
  assert summary["test_accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
  assert summary["test_accuracy"]["min"] == min(accuracies) and summary["test_accuracy"]["max"] == max(accuracies)
  assert min(accuracies) > 0.85

  # Other seeds in the same workdir are refused; a single run there too.
  other = run_cli(CNN, "--seeds", "0-2", "--workdir", workdir, "--config.num_epochs=2", *QUICK)
  assert other.returncode == 2 and "holds a population of seed-0, seed-1" in other.stderr
  single = run_cli(CNN, "--workdir", workdir, "--config.num_epochs=2", *QUICK)
  assert single.returncode == 2 and "holds a population" in single.stderr


@pytest.mark.parametrize("text, seeds", [("0-3", [0, 1, 2, 3]), ("5,1,5", [5, 1]), ("1-2,9", [1, 2, 9])])
def test_seed_lists(text, seeds):
  assert population.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a-b", "3-1", "-1", "0-4294967296"])
def test_bad_seed_lists_are_one_line(text):
  with pytest.raises(UserError, match="--seeds"):
    population.parse_seeds(text)


def test_members_of_another_shape_are_refused():
  with pytest.raises(UserError, match="members differ in batch_size"):
    population.check_shared_shape([small_config(), small_config(batch_size=64)])
  assert population.groups([small_config(), small_config(batch_size=64), small_config(seed=3)]) == [[0, 2], [1]]


def test_tuning_trains_trials_of_one_shape_together(tmp_path):
  sweep = tmp_path / "digits.py"
  sweep.write_text(
    "from fluxdigits.config import defaults\n\n\ndef get_config():\n  return defaults()\n\n\n"
    "def space(trial):\n"
    "  trial.suggest_categorical('batch_size', [32, 64])\n"
    "  trial.suggest_float('optimizer.learning_rate', 5e-4, 2e-3, log=True)\n"
    "  trial.suggest_float('model.dropout_rate', 0.0, 0.3)\n"
  )
  workdir = tmp_path / "tuning"
  result = run_module(
    "tune",
    sweep,
    "--workdir",
    workdir,
    "--trials",
    4,
    "--population",
    4,
    "--sampler",
    "random",
    "--pruner",
    "none",
    "--config.num_epochs=1",
    "--config.model.name=cnn_dropout",
    *QUICK[:1],
    timeout=600,
  )
  assert result.returncode == 0, result.stderr
  import optuna

  study = optuna.load_study(study_name="digits", storage=f"sqlite:///{workdir / 'study.db'}")
  trials = study.get_trials()
  assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
  by_batch = {}
  for t in trials:
    summary = read_summary(workdir / "trials" / f"{t.number:04d}")
    assert summary["best_val_accuracy"] == t.value and t.value > 0.8  # one epoch of 6,400 images
    by_batch.setdefault(t.params["batch_size"], []).append(t)
  # Trials of a batch size trained as one population, a trial alone in its own folder.
  for batch_trials in by_batch.values():
    places = {t.user_attrs["population"] for t in batch_trials}
    assert len(places) == 1
    assert places.pop().startswith("populations/") == (len(batch_trials) > 1)
  assert (workdir / "tuning.md").is_file()


def largest_that_fits(error) -> int:
  return int(re.search(r"the largest population that fits is (\d+)", str(error)).group(1))


def test_a_population_too_large_for_memory_is_refused_naming_the_largest_that_fits(monkeypatch):
  # 400 MiB free: MNIST's 55 MB on the device and a few members of the seed CNN (~20 MiB each at batch 32) fit.
  monkeypatch.setattr(loop.meshes, "free_memory_bytes", lambda mesh: 400 * 2**20)
  base = small_config(**{"model.name": "cnn"})
  with pytest.raises(
    UserError,
    match=r"a population of 256 needs about .* GiB of memory per device .* 0\.4 GiB are "
    r"free; the largest population that fits is \d+: pass fewer members",
  ) as refused:
    loop.build(population.with_seeds(base, range(256)), log=lambda *_: None)
  largest = largest_that_fits(refused.value)
  assert 2 <= largest < 256
  trainer, state = loop.build(population.with_seeds(base, range(largest)), log=lambda *_: None)
  assert jax.tree.leaves(state.params)[0].shape[0] == largest
  with pytest.raises(UserError, match="largest population that fits"):
    loop.build(population.with_seeds(base, range(largest + 1)), log=lambda *_: None)


def test_a_population_that_runs_out_of_memory_while_compiling_is_refused_the_same_way(monkeypatch):
  """On a GPU the compiler's autotuner runs the largest operations: a population too large fails there first."""
  monkeypatch.setattr(loop.meshes, "free_memory_bytes", lambda mesh: 400 * 2**20)
  compile_for_real = jax.stages.Lowered.compile
  calls = []

  def out_of_memory_once(lowered, *args, **kwargs):
    calls.append(lowered)
    if len(calls) == 1:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 61.05GiB")
    return compile_for_real(lowered, *args, **kwargs)

  monkeypatch.setattr(jax.stages.Lowered, "compile", out_of_memory_once)
  base = small_config(**{"model.name": "cnn"})
  with pytest.raises(
    UserError,
    match="a population of 256 ran out of device memory while compiling, 0.4 GiB are free; "
    "the largest population that fits is",
  ) as refused:
    loop.build(population.with_seeds(base, range(256)), log=lambda *_: None)
  monkeypatch.setattr(jax.stages.Lowered, "compile", compile_for_real)
  with pytest.raises(UserError) as estimated_from_256:
    loop.build(population.with_seeds(base, range(256)), log=lambda *_: None)
  # Populations of 2 and 4 members a device give the per-member cost that populations of 128 and 256 give.
  assert abs(largest_that_fits(refused.value) - largest_that_fits(estimated_from_256.value)) <= 1


def test_a_population_that_never_started_gives_its_workdir_to_another(tmp_path):
  """A population refused as too large leaves only its record; the next command may train another there."""
  workdir = tmp_path / "population"
  workdir.mkdir()
  too_many = [workdir / f"seed-{seed}" for seed in range(20000)]
  workdirs.check_population(workdir, too_many)
  workdirs.check_population(workdir, too_many[:3])
  assert json.loads((workdir / "population.json").read_text())["members"] == ["seed-0", "seed-1", "seed-2"]
  (workdir / "seed-0").mkdir()
  (workdir / "seed-0" / "config.json").write_text("{}")
  with pytest.raises(
    UserError,
    match=r"holds a population of seed-0, seed-1, seed-2, not seed-0, seed-1, seed-2, \.\.\., "
    r"seed-19999 \(20000 members\); train the same members",
  ):
    workdirs.check_population(workdir, too_many)
