"""The train state, the compiled train and predict steps, and the epoch loop.

Steps are pure functions of (state, batch) -> state. Many of them run inside one compiled call
(a lax.scan over `steps_per_call` batches gathered from the dataset already on the devices), so
the host only starts a call per chunk and reads back its per-step losses.
"""

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from tqdm.auto import tqdm

from fluxdigits import (augment, checkpoint, config as configs, data, distributed, mesh as meshes, models, optim,
                        workdir as workdirs)
from fluxdigits.errors import TrainingDiverged, UserError


class TrainState(train_state.TrainState):
  batch_stats: Any  # BatchNorm running statistics; {} for models without BatchNorm
  # The run's key as raw key data (plain uint32, so checkpoints store it like any array); each step
  # folds in its step number for its dropout and augmentation keys.
  rng: jax.Array
  # Exponential moving average of {'params', 'batch_stats'}: the weights evaluated, selected as best
  # and reported. Averaging the last ~1/(1 - decay) steps' weights smooths out the optimizer's noise.
  # {} when ema_decay is 0: the raw weights are evaluated, as Keras and PyTorch do.
  ema: Any
  ema_decay: float = struct.field(pytree_node=False)

  def apply_gradients(self, *, grads, **kwargs):
    state = super().apply_gradients(grads=grads, **kwargs)
    if not self.ema_decay:
      return state
    current = {"params": state.params, "batch_stats": state.batch_stats}
    return state.replace(ema=update_average(state.ema, current, state.step, self.ema_decay))

  def evaluated_variables(self):
    """(params, batch_stats) that evaluation uses."""
    if self.ema_decay:
      return self.ema["params"], self.ema["batch_stats"]
    return self.params, self.batch_stats


def update_average(average, current, step, decay):
  """The moving average after `step` steps: decay capped at (1 + step) / (10 + step).

  The cap is the warm-up of TF's ExponentialMovingAverage(num_updates): without it the first
  epochs' averages would hold on to the random initialisation.
  """
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda a, v: decay * a + (1.0 - decay) * v, average, current)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How uint8 images become model inputs on the device."""
  mean: tuple
  std: tuple
  dtype: Any

  def __call__(self, images_uint8, rng=None, augment_fn=None):
    x = images_uint8.astype(jnp.float32) / 255.0
    if augment_fn is not None:
      x = augment_fn(rng, x)
    return augment.standardize(x, self.mean, self.std, self.dtype)


def preprocess_for(config, dataset: data.Dataset) -> Preprocess:
  return Preprocess(dataset.mean, dataset.std, models.compute_dtype(config))


def create_state(config, model, image_shape, steps_per_epoch) -> TrainState:
  tx = optim.create(config, steps_per_epoch)

  # One compiled call: run op by op, the initialisers compile dozens of tiny programs (~2.5 s on a CPU).
  @jax.jit
  def init(key):
    init_rng, run_rng = jax.random.split(key)
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        batch_stats=batch_stats,
        tx=tx,
        rng=jax.random.key_data(run_rng),
        ema={"params": params, "batch_stats": batch_stats} if config.ema_decay else {},
        ema_decay=config.ema_decay,
    )

  return init(jax.random.key(config.seed))


def whiten_stem(state, images) -> TrainState:
  """AirbenchNet's stem (raw and averaged weights) set to whiten the 3x3 patches of `images`."""
  kernel = models.whitening_kernel(images, state.params["stem"]["kernel"].shape[-1])
  # A copy each: the train step donates its state, and one buffer cannot be donated twice.
  with_kernel = lambda params: {**params, "stem": {**params["stem"], "kernel": jnp.copy(kernel)}}
  ema = {**state.ema, "params": with_kernel(state.ema["params"])} if state.ema else state.ema
  return state.replace(params=with_kernel(state.params), ema=ema)


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def cross_entropy(logits, labels, label_smoothing=0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state: TrainState, images, labels, *, preprocess, augment_fn, label_smoothing):
  augment_rng, dropout_rng = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
  x = preprocess(images, augment_rng, augment_fn)

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                     rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    return cross_entropy(logits, labels, label_smoothing).mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
  correct = (logits.argmax(-1) == labels).sum()
  return state, (loss, correct)


def make_train_chunk(preprocess, augment_fn, label_smoothing):
  """state, images, labels, (steps, batch) indices -> state, per-step (loss, correct)."""
  step = functools.partial(train_step, preprocess=preprocess, augment_fn=augment_fn, label_smoothing=label_smoothing)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_chunk(state, images, labels, batch_indices):
    return jax.lax.scan(lambda s, idx: step(s, images[idx], labels[idx]), state, batch_indices)

  return train_chunk


def make_predict(apply_fn, preprocess, flip=False):
  """Logits for one batch, with BatchNorm's running statistics and without dropout.

  With `flip`, the mean of the logits of each image and of its mirror image (test-time augmentation).
  """

  @jax.jit
  def predict(params, batch_stats, images, idx):
    x = preprocess(images[idx])
    if flip:
      x = jnp.concatenate([x, x[:, :, ::-1]])
    logits = apply_fn({"params": params, "batch_stats": batch_stats}, x, train=False).astype(jnp.float32)
    return logits.reshape(2, -1, logits.shape[-1]).mean(0) if flip else logits

  return predict


def predict_split(predict_fn, variables, images_on_device, n, batch_size, mesh) -> np.ndarray:
  """(n, classes) logits: every example exactly once, the last batch padded and its padding dropped."""
  indices, mask = data.eval_batches(n, batch_size)
  logits = [predict_fn(*variables, images_on_device, meshes.shard_batches(idx, mesh)) for idx in indices]
  return np.concatenate([meshes.to_host(l) for l in logits])[mask.reshape(-1)]


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return {"loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
          "accuracy": float((logits.argmax(-1) == labels).mean()),
          "count": int(len(labels))}


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a config fixes before the first step: the data on the devices, the model and its compiled calls."""
  config: Any
  dataset: data.Dataset
  mesh: Any
  model: Any
  steps_per_epoch: int
  steps_per_call: int
  train_chunks: dict  # steps per call -> the compiled lax.scan of train steps (the last call of an epoch may be shorter)
  relative_rate: Any  # step -> multiplier of the peak learning rate
  predict: Any
  device_images: dict  # split name -> its images on the devices ('train' with its labels)
  compile_seconds: float


def build(config, log=print) -> tuple[Trainer, TrainState]:
  """Loads the data, places it on the devices and compiles the train calls; returns them with a fresh state."""
  mesh = meshes.data_mesh()
  meshes.check_divisible(config.batch_size, "batch_size", mesh)
  meshes.check_divisible(config.eval_batch_size, "eval_batch_size", mesh)
  dataset = data.load(config, log)
  steps_per_epoch = len(dataset.train) // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f"batch_size={config.batch_size} is larger than the {len(dataset.train)} training examples")
  model = models.create(config)
  state = create_state(config, model, dataset.train.images.shape[1:], steps_per_epoch)
  preprocess = preprocess_for(config, dataset)
  if config.model.name == "airbench":
    state = whiten_stem(state, preprocess(dataset.train.images[:1000]))
  state = meshes.replicate(state, mesh)
  device_images = {"train": meshes.replicate((dataset.train.images, dataset.train.labels), mesh),
                   "validation": meshes.replicate(dataset.validation.images, mesh),
                   "test": meshes.replicate(dataset.test.images, mesh)}

  train_chunk = make_train_chunk(preprocess, augment.make(config), config.label_smoothing)
  chunk = min(config.steps_per_call, steps_per_epoch)
  log(f"compiling the train step for {meshes.describe()}")
  compile_start = time.perf_counter()
  train_chunks = {}
  for length in {chunk, steps_per_epoch % chunk} - {0}:
    idx = meshes.shard_batches(np.zeros((length, config.batch_size), np.int32), mesh)
    train_chunks[length] = train_chunk.lower(state, *device_images["train"], idx).compile()
  trainer = Trainer(config, dataset, mesh, model, steps_per_epoch, chunk, train_chunks,
                    optim.schedule(config, steps_per_epoch), make_predict(model.apply, preprocess, config.test_time_flip),
                    device_images,
                    time.perf_counter() - compile_start)
  return trainer, state


def train_epoch(trainer: Trainer, state: TrainState, epoch: int) -> tuple[TrainState, dict]:
  """One epoch of training steps in the (seed, epoch) order; the running loss and accuracy in a progress bar."""
  config = trainer.config
  batches = data.train_batches(config.seed, epoch, len(trainer.dataset.train), config.batch_size)
  loss_sum, correct_sum = 0.0, 0
  with tqdm(total=trainer.steps_per_epoch, desc=f"epoch {epoch}/{config.num_epochs}", unit="step", leave=False,
            dynamic_ncols=True, mininterval=0.5, disable=not distributed.is_primary()) as bar:
    for start in range(0, trainer.steps_per_epoch, trainer.steps_per_call):
      idx = batches[start:start + trainer.steps_per_call]
      state, (losses, corrects) = trainer.train_chunks[len(idx)](
          state, *trainer.device_images["train"], meshes.shard_batches(idx, trainer.mesh))
      losses = np.asarray(losses)
      _check_not_diverged(losses, int(state.step) - len(idx), epoch, config, len(trainer.dataset.class_names))
      loss_sum += float(losses.sum())
      correct_sum += int(np.asarray(corrects).sum())
      done = start + len(idx)
      bar.update(len(idx))
      bar.set_postfix(loss=f"{loss_sum / done:.4f}", acc=f"{correct_sum / (done * config.batch_size):.4f}")
  row = {"train_loss": loss_sum / trainer.steps_per_epoch,
         "train_accuracy": correct_sum / (trainer.steps_per_epoch * config.batch_size)}
  classes = len(trainer.dataset.class_names)
  # A whole epoch at chance with a loss ten times a uniform guess's: exploded without reaching inf.
  if row["train_accuracy"] < 1.5 / classes and row["train_loss"] > 10 * np.log(classes):
    raise TrainingDiverged(f"loss exploded: {row['train_loss']:.3g} on average over epoch {epoch} at chance accuracy "
                           f"({row['train_accuracy']:.1%}); lower optimizer.learning_rate "
                           f"(now {config.optimizer.learning_rate:g})")
  return state, row


# Losses this many times a uniform guess's (ln classes) on every one of a call's last steps mean divergence.
EXPLODED_LOSS_FACTOR = 100


def _check_not_diverged(losses: np.ndarray, first_step: int, epoch: int, config, classes: int):
  """Raises TrainingDiverged on a non-finite loss, or one that exploded and stayed there (see EXPLODED_LOSS_FACTOR)."""
  advice = f"lower optimizer.learning_rate (now {config.optimizer.learning_rate:g})"
  if not np.isfinite(losses).all():
    bad = int(np.argmin(np.isfinite(losses)))
    raise TrainingDiverged(f"loss became {losses[bad]} at step {first_step + bad + 1} (epoch {epoch}); {advice}")
  last = losses[-10:]
  if (last > EXPLODED_LOSS_FACTOR * np.log(classes)).all():
    raise TrainingDiverged(f"loss exploded to {last[-1]:.3g} at step {first_step + len(losses)} (epoch {epoch}), over "
                           f"{EXPLODED_LOSS_FACTOR}x a uniform guess's {np.log(classes):.2f}; {advice}")


def evaluate(trainer: Trainer, variables, split: str) -> dict:
  """Loss, accuracy and count of `variables` (params, batch_stats) over every example of a split."""
  labels = getattr(trainer.dataset, split).labels
  logits = predict_split(trainer.predict, variables, trainer.device_images[split], len(labels),
                         trainer.config.eval_batch_size, trainer.mesh)
  return classification_metrics(logits, labels)


def fit(trainer: Trainer, state: TrainState, progress: checkpoint.Progress, manager, workdir, log=print, on_epoch=None):
  """Trains from `progress.epoch` to the config's last epoch or an early stop, checkpointing and logging each epoch.

  Returns (state, progress, the best epoch's evaluated variables). `on_epoch(row)` runs after each
  epoch's checkpoint is started; it may raise to stop training (a tuner's pruning), the run staying resumable.
  """
  config = trainer.config
  metrics_file = pathlib.Path(workdir) / "metrics.jsonl"
  if distributed.is_primary():
    checkpoint.write_history(metrics_file, progress.history)
  best_variables = None
  if progress.epoch:
    best, progress = checkpoint.restore_best(manager, state, progress)
    best_variables = meshes.replicate(best.evaluated_variables(), trainer.mesh)
  for epoch in range(progress.epoch + 1, config.num_epochs + 1):
    if progress.epochs_without_improvement >= config.patience > 0:
      log(f"early stop: no better validation accuracy for {config.patience} epochs")
      break
    epoch_start = time.perf_counter()
    try:
      state, row = train_epoch(trainer, state, epoch)
    except TrainingDiverged as e:
      raise TrainingDiverged(f"{e}; the last good checkpoint, epoch {progress.epoch}, is kept in "
                             f"{pathlib.Path(workdir) / 'checkpoints'}") from None
    row = {"epoch": epoch, **row, "val_loss": None, "val_accuracy": None,
           "learning_rate": optim.current_learning_rate(state.opt_state, trainer.relative_rate, state.step)}
    if len(trainer.dataset.validation):
      val = evaluate(trainer, state.evaluated_variables(), "validation")
      row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    row["epoch_seconds"] = time.perf_counter() - epoch_start
    improved = row["val_accuracy"] is None or row["val_accuracy"] > progress.best_val_accuracy
    if improved:
      best_variables = jax.tree.map(jnp.copy, state.evaluated_variables())
    progress = progress.after_epoch(row, improved)
    if distributed.is_primary():
      with open(metrics_file, "a") as f:
        f.write(json.dumps(row) + "\n")
    log(_epoch_line(row, config.num_epochs))
    if epoch % config.checkpoint.every_epochs == 0 or epoch == config.num_epochs:
      checkpoint.save(manager, state, progress, config)
    if on_epoch is not None:
      on_epoch(row)
  return state, progress, best_variables


def resume(trainer: Trainer, state: TrainState, manager, workdir, log=print):
  """(state, Progress): the newest readable checkpoint's, with the config's learning rate and weight decay, or a fresh start."""
  restored = checkpoint.restore_latest(manager, state, trainer.config)
  if restored is None:
    return state, checkpoint.Progress()
  state, progress = restored
  if progress.epoch > trainer.config.num_epochs:
    raise UserError(f"{workdir} has trained {progress.epoch} epochs already, more than num_epochs="
                    f"{trainer.config.num_epochs}; pass --config.num_epochs={progress.epoch} or more to resume it, "
                    "or --restart to start over")
  state = state.replace(opt_state=optim.with_config_hyperparams(state.opt_state, trainer.config))
  log(f"resuming from epoch {progress.epoch} (step {int(state.step)}) in {workdir}")
  return meshes.replicate(state, trainer.mesh), progress


def train_and_evaluate(config, workdir, log=print, on_epoch=None, test=True) -> dict:
  """Trains as `config` says, resuming from WORKDIR/checkpoints when there are any; returns the summary.

  `test=False` leaves the test split out of the summary (a tuning trial: nothing chosen may see it).
  """
  workdir = pathlib.Path(workdir)
  trainer, state = build(config, log)
  manager = checkpoint.manager(workdir, config)
  try:
    state, progress = resume(trainer, state, manager, workdir, log)
    if distributed.is_primary():
      workdirs.write_config(workdir, config)
    state, progress, best_variables = fit(trainer, state, progress, manager, workdir, log, on_epoch)
  finally:
    checkpoint.close(manager, state)
  summary = {}
  if test:
    test_metrics = evaluate(trainer, best_variables, "test")
    summary = {"test_loss": test_metrics["loss"], "test_accuracy": test_metrics["accuracy"],
               "test_examples": test_metrics["count"]}
  summary |= {
      "best_val_accuracy": progress.best_val_accuracy if len(trainer.dataset.validation) else None,
      "best_epoch": progress.best_epoch, "epochs_run": progress.epoch, "num_epochs": config.num_epochs,
      "train_seconds": sum(row["epoch_seconds"] for row in progress.history),
      "compile_seconds": trainer.compile_seconds,
      "num_params": count_params(state.params), "dataset": config.dataset.name, "model": config.model.name,
      "device": meshes.describe(),
  }
  if distributed.is_primary():
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def _epoch_line(row, num_epochs):
  val = "" if row["val_accuracy"] is None else f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}"
  return (f"epoch {row['epoch']:>3}/{num_epochs}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.4f}{val}"
          f"  lr {row['learning_rate']:.2e}  {row['epoch_seconds']:.1f}s")



def load_run(workdir, which: str = "best"):
  """(config, state, Progress) of a finished or interrupted run, for evaluation, reporting and prediction.

  `which` is 'best' (best validation accuracy) or 'latest'. The state is restored against an
  abstract state built from the run's own config.json, so optax's state keeps its types.
  """
  workdir = pathlib.Path(workdir)
  config_file = workdir / "config.json"
  if not config_file.is_file():
    raise UserError(f"{workdir} is not a fluxdigits run (no config.json); pass the --workdir of a training run")
  try:
    config = configs.from_flat(json.loads(config_file.read_text()))
  except (json.JSONDecodeError, UserError) as e:
    raise UserError(f"{config_file} is unreadable ({e}); it must be the config.json a training run wrote") from e
  mngr = checkpoint.manager(workdir, config, create=False, this_process_only=True)
  restored = checkpoint.restore_latest(mngr, create_state(config, models.create(config), data.IMAGE_SHAPES[config.dataset.name], 1))
  if restored is None:
    raise UserError(f"{workdir / 'checkpoints'} holds no checkpoint; train the run first (python -m fluxdigits.run ...)")
  state, progress = restored
  if which == "best":
    state, progress = checkpoint.restore_best(mngr, state, progress)
  mngr.close()
  return config, state, progress
