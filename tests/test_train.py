import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import EXPERIMENTS, REPO, read_summary, run_cli

from fluxdigits import augment, config as configs, cpu, data, loop, mesh as meshes, optim, registry, run, steps
from fluxdigits.cpu import onednn

CNN = str(EXPERIMENTS / "mnist_cnn.py")


def mnist_config(**overrides):
  config = configs.load(CNN)
  return configs.validate(configs.override(config, [f"{k}={v}" for k, v in overrides.items()]))


@pytest.fixture(scope="module")
def mnist():
  return data.load(mnist_config())


def jitted_train_step(dataset, config):
  preprocess = steps.Preprocess(dataset.mean, dataset.std, jnp.float32)
  hyperparams = steps.hyperparams_of(config)
  return jax.jit(
    lambda s, x, y: steps.train_step(
      s,
      jnp.arange(len(x)),
      images=x,
      labels=y,
      hyperparams=hyperparams,
      config=config,
      num_classes=10,
      preprocess=preprocess,
      augment_fn=None,
    )
  )


def test_train_step_lowers_the_loss_on_a_fixed_batch(mnist):
  config = mnist_config()
  model = registry.create(config, 10)
  state = steps.create_state(config, model, (28, 28, 1), steps_per_epoch=100)
  step = jitted_train_step(mnist, config)
  images, labels = mnist.train.images[:64], mnist.train.labels[:64]
  losses = []
  for _ in range(30):
    state, sums = step(state, images, labels)
    losses.append(float(sums["loss"]))
  correct = sums["accuracy"]
  assert losses[-1] < 0.2 * losses[0]
  assert int(correct) > 0.9 * 64 and int(state.step) == 30


def test_microbatches_give_the_whole_batch_step(mnist):
  """Four slices of 16 average to the gradient of the batch of 64: same loss, predictions and weights."""
  whole, sliced = mnist_config(), mnist_config(microbatches=4)
  state = steps.create_state(whole, registry.create(whole, 10), (28, 28, 1), steps_per_epoch=100)
  images, labels = mnist.train.images[:64], mnist.train.labels[:64]
  one_state, one = jitted_train_step(mnist, whole)(state, images, labels)
  four_state, four = jitted_train_step(mnist, sliced)(state, images, labels)
  (one_loss, one_correct), (four_loss, four_correct) = ((s["loss"], s["accuracy"]) for s in (one, four))
  assert float(four_loss) == pytest.approx(float(one_loss), rel=1e-5) and int(four_correct) == int(one_correct)
  moved = jax.tree.map(lambda new, old: float(jnp.abs(new - old).max()), one_state.params, state.params)
  differ = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), four_state.params, one_state.params)
  assert all(d <= 1e-3 * m for d, m in zip(jax.tree.leaves(differ), jax.tree.leaves(moved)))


@pytest.mark.parametrize("model_name", ["cnn", "resnet"])
def test_evaluated_weights_are_the_warmed_up_moving_average(mnist, model_name):
  config = mnist_config(**{"ema_decay": 0.9, "model.name": model_name})
  model = registry.create(config, 10)
  state = steps.create_state(config, model, (28, 28, 1), steps_per_epoch=100)
  step = jitted_train_step(mnist, config)
  expected = state.evaluated_variables()
  for i in range(1, 41):
    state, _ = step(state, mnist.train.images[8 * i : 8 * i + 8], mnist.train.labels[8 * i : 8 * i + 8])
    decay = min(0.9, (1 + i) / (10 + i))
    expected = jax.tree.map(lambda a, v: decay * a + (1 - decay) * v, expected, (state.params, state.batch_stats))
  for average, want in zip(jax.tree.leaves(state.evaluated_variables()), jax.tree.leaves(expected)):
    np.testing.assert_allclose(average, want, rtol=1e-4, atol=1e-6)
  assert any(
    not np.allclose(a, r)
    for a, r in zip(jax.tree.leaves(state.evaluated_variables()), jax.tree.leaves((state.params, state.batch_stats)))
  )


def test_ema_decay_zero_evaluates_the_raw_weights(mnist):
  config = mnist_config(ema_decay=0.0)
  state = steps.create_state(config, registry.create(config, 10), (28, 28, 1), steps_per_epoch=100)
  state, _ = jitted_train_step(mnist, config)(state, mnist.train.images[:8], mnist.train.labels[:8])
  assert state.ema == {}
  assert state.evaluated_variables() == (state.params, state.batch_stats)


def test_eval_counts_every_example_exactly_once(mnist):
  config = mnist_config()
  model = registry.create(config, 10)
  state = steps.create_state(config, model, (28, 28, 1), steps_per_epoch=1)
  preprocess = steps.Preprocess(mnist.mean, mnist.std, jnp.float32)
  mesh = meshes.data_mesh()
  images = mnist.test.images[:1003]
  logits = steps.predict_split(
    steps.make_predict(model.apply, preprocess),
    (state.params, state.batch_stats),
    meshes.replicate(images, mesh),
    len(images),
    100,
    mesh,
  )
  assert logits.shape == (1003, 10)
  expected = model.apply({"params": state.params}, preprocess(jnp.asarray(images)), train=False)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
  metrics = steps.classification_metrics(logits, mnist.test.labels[:1003])
  assert metrics["count"] == 1003


def test_test_time_flip_averages_the_logits_of_each_image_and_its_mirror(mnist):
  config = mnist_config()
  model = registry.create(config, 10)
  state = steps.create_state(config, model, (28, 28, 1), steps_per_epoch=1)
  preprocess = steps.Preprocess(mnist.mean, mnist.std, jnp.float32)
  variables, idx = (state.params, state.batch_stats), jnp.arange(16)
  images = mnist.test.images[:16]
  plain, flipped = steps.make_predict(model.apply, preprocess), steps.make_predict(model.apply, preprocess, flip=True)
  expected = (plain(*variables, images, idx) + plain(*variables, images[:, :, ::-1], idx)) / 2
  np.testing.assert_allclose(flipped(*variables, images, idx), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(flipped(*variables, images[:, :, ::-1], idx), expected, rtol=1e-5, atol=1e-5)
  assert not np.allclose(plain(*variables, images, idx), expected, atol=1e-3)


def test_classification_metrics():
  logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]]))
  m = steps.classification_metrics(logits, np.array([0, 2, 1]))
  assert m["accuracy"] == pytest.approx(2 / 3)
  assert m["loss"] == pytest.approx(-(np.log(0.7) + np.log(0.8) + np.log(0.25)) / 3)


@pytest.mark.parametrize("name", ["constant", "cosine", "warmup_cosine", "one_cycle"])
def test_schedules_peak_at_one(name):
  config = mnist_config(**{"schedule.name": name, "schedule.warmup_epochs": 1.0, "num_epochs": 4})
  relative = optim.schedule(config, steps_per_epoch=100)
  values = np.array([relative(s) for s in range(0, 401, 10)])
  assert values.max() == pytest.approx(1.0, abs=0.02) and values.min() >= 0
  if name != "constant":
    assert values[-1] < 0.05


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw", "rmsprop"])
def test_every_optimizer_keeps_its_hyperparameters_in_the_state(name):
  config = mnist_config(**{"optimizer.name": name, "optimizer.weight_decay": 1e-4})
  tx = optim.create(config, steps_per_epoch=10)
  params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}
  opt_state = tx.init(params)
  assert float(opt_state.hyperparams["learning_rate"]) == pytest.approx(1e-3)
  updates, _ = tx.update({"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}, opt_state, params)
  assert all(bool(jnp.all(u < 0)) for u in jax.tree.leaves(updates))


def test_learning_rate_in_the_state_changes_the_step_without_recompiling():
  config = mnist_config(**{"optimizer.name": "sgd"})
  tx = optim.create(config, steps_per_epoch=10)
  params = {"w": jnp.ones(2)}
  update = jax.jit(lambda s: tx.update({"w": jnp.ones(2)}, s, params)[0]["w"])
  state = tx.init(params)
  small = update(state)
  large = update(optim.with_config_hyperparams(state, mnist_config(**{"optimizer.learning_rate": 0.1})))
  np.testing.assert_allclose(large, 100 * small, rtol=1e-6)
  assert update._cache_size() == 1


def test_augmentations_keep_shapes_and_change_images():
  images = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  distort = lambda **keys: augment.make(mnist_config(**{"augment.name": "digits", **keys}))(
    jax.random.key(1), images, jnp.zeros(4, jnp.int32)
  )
  shifted = distort()
  assert shifted.shape == images.shape and not np.allclose(shifted, images)
  identity = distort(**{"augment.max_shift": 0, "augment.max_rotation": 0.0})
  np.testing.assert_allclose(identity, images, atol=1e-5)
  rgb = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
  cropped = augment.make(mnist_config(**{"augment.name": "cifar"}))(jax.random.key(2), rgb, None)
  assert cropped.shape == rgb.shape and not np.allclose(cropped, rgb)


@pytest.mark.parametrize(
  "key, amount",
  [
    ("max_scale", 0.2),
    ("max_aspect", 0.2),
    ("max_shear", 0.3),
    ("elastic", 1.5),
    ("max_stroke", 0.8),
    ("max_blur", 1.0),
    ("min_contrast", 0.4),
    ("max_noise", 0.2),
    ("european_ones", 1.0),
    ("closed_fours", 1.0),
    ("crossed_sevens", 1.0),
  ],
)
def test_each_handwriting_distortion_changes_digits_within_range(mnist, key, amount):
  images = jnp.asarray(mnist.train.images[:8], jnp.float32) / 255
  still = {"augment.name": "digits", "augment.max_shift": 0, "augment.max_rotation": 0.0}
  drawn_class = {"european_ones": 1, "closed_fours": 4, "crossed_sevens": 7}.get(key, -1)
  drawn_over = jnp.asarray(mnist.train.labels[:8] == drawn_class)
  distorted = augment.make(mnist_config(**still, **{f"augment.{key}": amount}))(
    jax.random.key(3), images, jnp.asarray(mnist.train.labels[:8])
  )
  if drawn_over.any():  # only that class changes, and gains ink
    assert np.allclose(distorted[~drawn_over], images[~drawn_over])
    assert float(distorted[drawn_over].sum()) > 1.05 * float(images[drawn_over].sum())  # a flag alone is little ink
  assert distorted.shape == images.shape and float(jnp.abs(distorted - images).mean()) > 1e-3
  assert float(distorted.min()) >= 0.0 and float(distorted.max()) <= 1.0


def test_stroke_width_thickens_and_thins_ink(mnist):
  images = jnp.asarray(mnist.train.images[:8], jnp.float32) / 255
  thick, thin = (augment._stroke_width(images[0], jnp.float32(change)) for change in (1.0, -1.0))
  assert float(thick.sum()) > 1.2 * float(images[0].sum()) > 1.44 * float(thin.sum())


def test_short_real_mnist_training_reaches_97_percent(tmp_path, capsys):
  workdir = tmp_path / "cnn"
  assert run.main([CNN, "--workdir", str(workdir), "--config.num_epochs=1", "--config.report=false"]) == 0
  summary = read_summary(workdir)
  assert summary["test_examples"] == 10_000
  assert summary["test_accuracy"] >= 0.97, summary
  assert summary["epochs_run"] == 1 and summary["num_params"] == 347_146
  assert {"train_seconds", "best_val_accuracy", "dataset", "model"} <= set(summary)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 1
  assert set(rows[0]) == {
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "epoch_seconds",
  }
  assert rows[0]["val_accuracy"] >= 0.96 and rows[0]["learning_rate"] == pytest.approx(1e-3)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["num_epochs"] == 1 and saved["model.name"] == "cnn"
  assert "epoch   1/1" in capsys.readouterr().out


def test_cifar10_resnet_trains_a_few_steps_on_mock_data(tmp_path):
  config = configs.override(
    configs.load(str(EXPERIMENTS / "cifar10_resnet.py")),
    [
      "num_epochs=1",
      "schedule.warmup_epochs=0.5",
      "batch_size=8",
      "eval_batch_size=8",
      "dataset.cache=false",
      "dataset.max_train_examples=24",
      "report=false",
    ],
  )
  config = configs.validate(config)
  with tfds.testing.mock_data(num_examples=24):
    summary = loop.train([config], tmp_path)[0]
  assert summary["test_examples"] == 24 and np.isfinite(summary["test_loss"])
  assert summary["num_params"] == 11_173_962 and summary["dataset"] == "cifar10"


def test_long_step_models_split_their_batches_over_the_cpu_cores():
  """cnn_deep and ResNet-20 use fluxdigits' one CPU device per core, unless they call oneDNN (whose threads use every
  core in each call); short steps and wide nets keep to one."""
  if cpu.lanes() < 2:
    pytest.skip("one CPU device: one core")

  def devices(config):
    model = registry.create(config, 10)
    return loop.data_mesh_for(config, model, cpu.calls_onednn(model, (28, 28, 1))).devices.size

  split = 1 if onednn.available() else cpu.lanes()
  deep = configs.validate(configs.load(str(EXPERIMENTS / "mnist_cnn_deep.py")))
  assert cpu.calls_onednn(registry.create(deep, 10), (28, 28, 1)) == onednn.available()
  assert devices(deep) == split
  resnet20 = configs.validate(configs.load(str(EXPERIMENTS / "mnist_resnet.py")))
  assert devices(resnet20) == split
  for wide in ("cifar10_resnet.py", "cifar10_fast.py"):  # ResNet-18, airbench's net
    assert devices(configs.validate(configs.load(str(EXPERIMENTS / wide)))) == 1
  odd = configs.validate(configs.override(deep, ["batch_size=127", "microbatches=1"]))
  assert devices(odd) == 1  # no device count divides it: one device, and no error
  cnn = configs.validate(configs.load(CNN))
  assert not cpu.calls_onednn(registry.create(cnn, 10), (28, 28, 1))  # its one convolution has one input channel
  assert devices(cnn) == 1
  # The experiment may override what the model declares.
  assert devices(configs.validate(configs.override(cnn, ["split_batch_over_cpu_cores=true"]))) == cpu.lanes()
  assert devices(configs.validate(configs.override(deep, ["split_batch_over_cpu_cores=false"]))) == 1
  assert meshes.data_mesh().devices.size == 1


def test_four_devices_match_one_device(tmp_path):
  args = ["--config.num_epochs=1", "--config.dataset.max_train_examples=6400", "--config.report=false"]
  one = run_cli(CNN, "--workdir", tmp_path / "one", *args)
  four = run_cli(
    CNN, "--workdir", tmp_path / "four", *args, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  )
  assert one.returncode == 0 and four.returncode == 0, one.stderr + four.stderr
  a, b = read_summary(tmp_path / "one"), read_summary(tmp_path / "four")
  assert a["device"].startswith("1x") and b["device"].startswith("4x")
  assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
  assert abs(b["test_accuracy"] - a["test_accuracy"]) <= 0.0005  # at most 5 of 10,000 predictions flip
  bad = run_cli(
    CNN,
    "--workdir",
    tmp_path / "bad",
    "--config.batch_size=30",
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  )
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
    "error: batch_size=30 is not divisible by the 4 devices; use a multiple of 4, e.g. --config.batch_size=28"
  ]


def test_a_new_metric_is_one_function_that_reaches_every_output(tmp_path, monkeypatch, capsys):
  """Top-5 accuracy added to metrics.METRICS, and nothing else: metrics.jsonl, the epoch line, the summary,
  the report."""
  from fluxdigits import metrics

  top5 = lambda logits, labels: (logits.argsort(-1)[:, -5:] == labels[:, None]).any(-1)
  monkeypatch.setitem(metrics.METRICS, "top5_accuracy", top5)
  workdir = tmp_path / "run"
  assert (
    run.main(
      [
        CNN,
        "--workdir",
        str(workdir),
        "--config.num_epochs=1",
        "--config.dataset.max_train_examples=3000",
        "--config.steps_per_call=20",
      ]
    )
    == 0
  )
  assert "top5_accuracy" in capsys.readouterr().out
  row = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
  assert row["train_accuracy"] <= row["train_top5_accuracy"] <= 1 and row["val_accuracy"] <= row["val_top5_accuracy"]
  summary = json.loads((workdir / "summary.json").read_text())
  assert 0.97 < summary["test_top5_accuracy"] <= 1 and summary["test_top5_accuracy"] >= summary["test_accuracy"]
  assert "test top5 accuracy" in (workdir / "report" / "index.html").read_text()


def digits_cnn_after_one_epoch(workdir, *overrides):
  """The seed CNN trained one epoch with digit augmentation and `overrides`, as load_classifier gives it."""
  import fluxdigits

  args = [
    "--config.num_epochs=1",
    "--config.report=false",
    "--config.tensorboard=false",
    "--config.augment.name=digits",
  ]
  assert run.main([CNN, "--workdir", str(workdir), *args, *overrides]) == 0
  return fluxdigits.load_classifier(workdir)


def test_digits_written_otherwise_in_training_teach_the_cnn_to_read_them(tmp_path):
  """MNIST has few 1s with a flag, 7s crossed and 4s with a closed top; one epoch with augment.european_ones,
  crossed_sevens and closed_fours reads test digits drawn so (by benchmarks/robustness.py's own renderers) as their
  class."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import robustness

  images, labels = robustness.mnist_test()
  read = {}
  for share in (0.0, 1.0):
    classifier = digits_cnn_after_one_epoch(
      tmp_path / f"share-{share}",
      f"--config.augment.european_ones={share}",
      f"--config.augment.closed_fours={share}",
      f"--config.augment.crossed_sevens={share}",
    )
    for name, (digit, draw) in robustness.WRITTEN_OTHERWISE.items():
      read[name, share] = float((classifier.predict(draw(images, labels)).argmax(-1) == digit).mean())
  assert read["european_ones", 1.0] >= 0.95 and read["european_ones", 0.0] <= 0.8, read
  assert read["closed_fours", 1.0] >= 0.9 and read["closed_fours", 0.0] <= 0.8, read


def test_digits_traced_by_pen_in_training_teach_the_cnn_thin_pen_9s(tmp_path):
  """Trained with closed-top 4s, the CNN reads a 9 traced by a thin pen and prepared as a photo (strokes of one width)
  as a 4; augment.pen_traced shows it such digits in training, and it reads them as 9s."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import robustness

  from fluxdigits import images as image_files

  images, labels = robustness.mnist_test()
  traced_nines = image_files.pen_traced(images[labels == 9][:300], 1.0)
  read = {}
  for share in (0.0, 0.5):
    classifier = digits_cnn_after_one_epoch(
      tmp_path / f"share-{share}",
      "--config.dataset.max_train_examples=10000",
      "--config.augment.closed_fours=1.0",
      f"--config.augment.pen_traced={share}",
    )
    read[share] = float((classifier.predict(traced_nines).argmax(-1) == 9).mean())
  assert read[0.5] >= 0.87 and read[0.5] >= read[0.0] + 0.03, read
