import json

import pytest
from conftest import EXPERIMENTS, run_cli, run_module

from fluxdigits import config as configs, run
from fluxdigits.errors import UserError

CNN = str(EXPERIMENTS / "mnist_cnn.py")


@pytest.mark.fast
def test_every_experiment_file_loads_and_validates():
  files = sorted(EXPERIMENTS.glob("*.py"))
  assert {f.stem for f in files} >= {
    "mnist_mlp",
    "mnist_cnn",
    "mnist_cnn_dropout",
    "mnist_cnn_deep",
    "mnist_resnet",
    "fashion_mnist_cnn",
    "cifar10_resnet",
    "cifar10_fast",
  }
  for file in files:
    configs.validate(configs.load(str(file)))


@pytest.mark.fast
def test_seed_004_recipe():
  c = configs.validate(configs.load(CNN))
  assert (
    c.model.name,
    c.optimizer.name,
    c.optimizer.learning_rate,
    c.batch_size,
    c.num_epochs,
    c.validation_fraction,
  ) == ("cnn", "adam", 1e-3, 32, 5, 0.1)


@pytest.mark.fast
def test_overrides_are_typed_by_the_default_value():
  c = configs.override(
    configs.load(CNN),
    ["num_epochs=3", "optimizer.learning_rate=2", "mixed_precision=true", "model.name=mlp", "optimizer.eps=1e-8"],
  )
  c = configs.validate(c)
  assert c.num_epochs == 3 and c.optimizer.learning_rate == 2.0 and isinstance(c.optimizer.learning_rate, float)
  assert c.mixed_precision == "true" and c.model.name == "mlp" and c.optimizer.eps == 1e-8


@pytest.mark.fast
@pytest.mark.parametrize(
  "assignment, message",
  [
    ("num_epoch=3", "unknown config key 'num_epoch'"),
    ("model.nme=cnn", "unknown config key 'model.nme'"),
    ("num_epochs=three", "bad value for config key 'num_epochs'"),
    ("num_epochs=2.5", "bad value for config key 'num_epochs'"),
    ("mixed_precision=maybe", "mixed_precision must be one of: auto, true, false, got 'maybe'"),
    ("model.name=vgg", "unknown model.name 'vgg'"),
    ("dataset.name=imagenett0", "unknown dataset.name 'imagenett0'"),
    ("optimizer.name=lamb", "optimizer.name must be one of: sgd, momentum, adam, adamw, rmsprop, got 'lamb'"),
    ("schedule.name=step", "schedule.name must be one of: constant, cosine, warmup_cosine, one_cycle, got 'step'"),
    ("batch_size=0", "batch_size must be at least 1, got 0"),
    ("validation_fraction=1.5", "validation_fraction must be in [0, 1)"),
    ("ema_decay=1.0", "ema_decay must be in [0, 1) (0 turns weight averaging off)"),
    ("optimizer.learning_rate=-1", "optimizer.learning_rate must be > 0"),
    ("microbatches=5", "batch_size=32 is not divisible by microbatches=5; use a divisor of the batch size"),
    ("augment.pen_traced=1.5", "augment.pen_traced must be in [0, 1]: a share of the training digits, got 1.5"),
  ],
)
def test_bad_overrides_give_one_line_and_exit_code_2(assignment, message, capsys, tmp_path):
  assert run.main([CNN, "--workdir", str(tmp_path / "run"), f"--config.{assignment}"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err and "\n" not in err
  assert not (tmp_path / "run").exists()


@pytest.mark.fast
def test_experiment_file_errors(tmp_path, capsys):
  assert run.main([str(tmp_path / "missing.py")]) == 2
  assert "not found" in capsys.readouterr().err
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  return {'model': 'cnn'}\n")
  assert run.main([str(broken)]) == 2
  assert "must return an ml_collections.ConfigDict" in capsys.readouterr().err
  typo = tmp_path / "typo.py"
  typo.write_text(
    "from fluxdigits.config import defaults\ndef get_config():\n  c = defaults()\n  c.modell = 1\n  return c\n"
  )
  assert run.main([str(typo)]) == 2
  assert "unknown config key 'modell'" in capsys.readouterr().err


@pytest.mark.fast
def test_unknown_argument(capsys):
  assert run.main([CNN, "--epochs=3"]) == 2
  assert "unknown argument '--epochs=3'" in capsys.readouterr().err


def test_command_line_error_has_no_traceback_and_exits_2(tmp_path):
  result = run_cli(CNN, "--workdir", tmp_path / "run", "--config.optimizer.name=adamax")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
    "error: optimizer.name must be one of: sgd, momentum, adam, adamw, rmsprop, got 'adamax'"
  ]


@pytest.mark.fast
def test_config_round_trips_through_its_json_form():
  c = configs.validate(configs.load(str(EXPERIMENTS / "cifar10_resnet.py")))
  flat = json.loads(json.dumps(configs.flatten(c)))
  assert configs.flatten(configs.from_flat(flat)) == configs.flatten(c)


@pytest.mark.fast
def test_from_flat_rejects_unknown_keys():
  with pytest.raises(UserError, match="unknown config key 'model.widths'"):
    configs.from_flat({**configs.flatten(configs.defaults()), "model.widths": 3})


@pytest.mark.fast
@pytest.mark.parametrize(
  "source, message",
  [
    ("def get_config():\n  raise RuntimeError('boom')\n", "get_config() failed (RuntimeError: boom)"),
    ("def get_config(size):\n  pass\n", "get_config() failed (TypeError"),
    ("import sys\nsys.exit()\n", "failed to load: SystemExit"),
    ("import sys\ndef get_config():\n  sys.exit(0)\n", "get_config() failed (SystemExit"),
    (
      "from fluxdigits.config import defaults\ndef get_config():\n"
      "  c = defaults()\n  c.num_epochs = 'five'\n  return c\n",
      "get_config() failed (TypeError",
    ),
    ("syntax error here\n", "failed to load: SyntaxError"),
  ],
)
def test_faults_inside_experiment_files_give_one_line_and_exit_code_2(source, message, tmp_path, capsys):
  experiment = tmp_path / "experiment.py"
  experiment.write_text(source)
  assert run.main([str(experiment), "--workdir", str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err and "\n" not in err
  assert not (tmp_path / "run").exists()


@pytest.mark.fast
@pytest.mark.parametrize(
  "assignment, message",
  [
    ("seed=-1", "seed must be in [0, 2**32) (jax.random.key and numpy take unsigned 32-bit seeds), got -1"),
    (f"seed={2**64}", "seed must be in [0, 2**32)"),
    ("optimizer.learning_rate=nan", "'optimizer.learning_rate' must be a finite number, got nan"),
    ("optimizer.learning_rate=inf", "must be a finite number, got inf"),
    ("optimizer.learning_rate=1e999", "must be a finite number, got inf"),
    ("num_epochs=2.5", "expected an integer, got '2.5'"),
    ("schedule.warmup_epochs=7", "schedule.warmup_epochs must be in [0, num_epochs=5), got 7.0"),
  ],
)
def test_values_that_would_fail_after_compiling_are_refused_up_front(assignment, message):
  with pytest.raises(UserError) as error:
    configs.validate(configs.override(configs.load(CNN), assignment.split(",")))
  assert message in str(error.value)


@pytest.mark.fast
def test_microbatches_with_batchnorm_are_refused_before_compiling(capsys, tmp_path):
  """BatchNorm is found in the model's variables, whatever its name."""
  assert (
    run.main([CNN, "--workdir", str(tmp_path / "run"), "--config.model.name=resnet", "--config.microbatches=2"]) == 2
  )
  err = capsys.readouterr().err.strip()
  assert "microbatches=2 would normalise each slice alone in resnet's BatchNorm" in err and "\n" not in err


def test_help_lists_the_config_keys_and_the_experiments():
  result = run_cli("--help")
  assert result.returncode == 0
  lines = result.stdout.splitlines()
  optimizer = next(line for line in lines if line.strip().startswith("optimizer."))
  assert "learning_rate=0.001" in optimizer and any("ema_decay=0.999" in line for line in lines)
  experiments = next(line for line in lines if line.startswith("experiments/:"))
  assert " mnist_cnn " in experiments and "cifar10_resnet" in experiments


@pytest.mark.parametrize("command", ["run", "tune", "predict", "export", "report"])
def test_each_command_help_fits_one_screen_with_an_example(command):
  result = run_module(command, "--help")
  assert result.returncode == 0
  lines = result.stdout.splitlines()
  assert len(lines) <= 50 and max(map(len, lines)) <= 120, f"{command} --help: {len(lines)} lines"
  assert any(line.startswith(f"example: python -m fluxdigits.{command} ") for line in lines)
