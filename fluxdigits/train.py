"""The train state, the compiled train and predict steps, and the epoch loop, for a population of runs.

Steps are pure functions of (state, batch) -> state. Many of them run inside one compiled call
(a lax.scan over `steps_per_call` batches gathered from the dataset already on the devices), so
the host only starts a call per chunk and reads back its per-step losses.

A population is K configs that differ only in what can be data (seed, learning rate, weight decay,
dropout rate, label smoothing: see population.py), trained at once: their states are stacked along
a leading member axis and the compiled call runs the same step over them (`members_in_parallel`). A
single run is a population of one, through the same functions.
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
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from fluxdigits import (augment, checkpoint, config as configs, cpu, data, distributed, images, layers, mesh as meshes,
                        metrics, optim, population, registry, tensorboard, workdir as workdirs)
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

  def __call__(self, images_uint8, rng=None, augment_fn=None, labels=None):
    x = images_uint8.astype(jnp.float32) / 255.0
    if augment_fn is not None:
      x = augment_fn(rng, x, labels)
    return augment.standardize(x, self.mean, self.std, self.dtype)


def preprocess_for(config, dataset: data.Dataset) -> Preprocess:
  return Preprocess(dataset.mean, dataset.std, registry.compute_dtype(config))


def create_states(members, model, image_shape, tx) -> TrainState:
  """The members' fresh states, stacked: each from its own seed, with its own learning rate and weight decay.

  `tx` is optim.create()'s for the members: states compiled against must share that same object.
  """
  config = members[0]

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

  state = checkpoint.stack([init(jax.random.key(m.seed)) for m in members])
  return state.replace(opt_state=optim.with_members_hyperparams(state.opt_state, members))


def create_state(config, model, image_shape, steps_per_epoch) -> TrainState:
  """One run's fresh state (unstacked)."""
  return checkpoint.member(create_states([config], model, image_shape, optim.create(config, steps_per_epoch)), 0)


def whiten_stem(state, images, stem: str) -> TrainState:
  """The 3x3 convolution `stem` (raw and averaged weights) set to whiten the 3x3 patches of `images`."""
  shape = state.params[stem]["kernel"].shape  # stacked: every member's stem is the same whitening
  kernel = jnp.broadcast_to(layers.whitening_kernel(images, shape[-1]), shape)
  # A copy each: the train step donates its state, and one buffer cannot be donated twice.
  with_kernel = lambda params: {**params, stem: {**params[stem], "kernel": jnp.copy(kernel)}}
  ema = {**state.ema, "params": with_kernel(state.ema["params"])} if state.ema else state.ema
  return state.replace(params=with_kernel(state.params), ema=ema)


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def cross_entropy(logits, labels, label_smoothing=0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def hyperparams_of(config) -> dict:
  """What the train step takes as data besides the state and the batch."""
  return {"label_smoothing": np.float32(config.label_smoothing), "dropout_rate": np.float32(config.model.dropout_rate)}


def member_hyperparams(members) -> dict:
  """Each member's hyperparams_of(), stacked."""
  return jax.tree.map(lambda *values: np.stack(values), *[hyperparams_of(m) for m in members])


def train_step(state: TrainState, images, labels, hyperparams, *, config, num_classes, preprocess, augment_fn):
  """One member's step; `hyperparams` is its hyperparams_of()."""
  augment_rng, dropout_rng = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
  x = preprocess(images, augment_rng, augment_fn, labels)
  model = registry.create(config, num_classes, dropout_rate=hyperparams["dropout_rate"])

  def loss_fn(params, x, labels, dropout_rng):
    apply = functools.partial(model.apply, train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    logits, updates = cpu.formulated(apply)({"params": params, "batch_stats": state.batch_stats}, x)
    return cross_entropy(logits, labels, hyperparams["label_smoothing"]).mean(), (logits, updates)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if config.microbatches == 1:
    (loss, (logits, updates)), grads = grad_fn(state.params, x, labels, dropout_rng)
  else:
    (loss, logits), grads = microbatch_gradients(grad_fn, state.params, x, labels, dropout_rng, config.microbatches)
    updates = {}  # config.validate refuses microbatches with BatchNorm models
  state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
  return state, {"loss": loss, **metrics.sums(logits, labels)}


def microbatch_gradients(grad_fn, params, x, labels, rng, slices: int):
  """grad_fn's mean loss, logits and gradients over the batch, computed slice after slice (a lax.scan)
  and averaged: the batch's own gradient, with each slice's working set small enough for a CPU's cache.

  Slice m holds examples m, m + slices, m + 2 * slices, ...: on a mesh every device keeps its rows.
  """
  split = lambda a: a.reshape(-1, slices, *a.shape[1:]).swapaxes(0, 1)

  def accumulate(total, inputs):
    (loss, (logits, _)), grads = grad_fn(params, *inputs)
    return jax.tree.map(jnp.add, total, (loss, grads)), logits

  zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), logits = jax.lax.scan(accumulate, zero, (split(x), split(labels), jax.random.split(rng, slices)))
  loss, grads = jax.tree.map(lambda total: total / slices, (loss, grads))
  return (loss, logits.swapaxes(0, 1).reshape(-1, logits.shape[-1])), grads


def _switch(value: str, auto: bool) -> bool:
  """A config's 'auto' / 'true' / 'false' key, as a bool."""
  return auto if value == "auto" else value == "true"


def members_in_parallel(config, model) -> bool:
  """Whether a population's members step together under jax.vmap, or one after another inside the compiled call
  (jax.lax.map). On a CPU one convolutional member's step already fills the cores, and vmap pushes the members'
  activations out of the caches; small dense models gain from it (benchmarks/NOTES.md, "Populations")."""
  return _switch(config.vectorize_members,
                 jax.default_backend() != "cpu" or registry.declared(model, "vectorize_members", False))


def splits_batch_over_cpu_cores(config, model) -> bool:
  """Whether a run on a CPU splits each batch over fluxdigits' one device per core: long steps of narrow layers fill
  two cores better as two calls; millisecond steps and wide matmuls lose (benchmarks/NOTES.md)."""
  return _switch(config.split_batch_over_cpu_cores, registry.declared(model, "cpu_batch_split", False))


def data_mesh_for(config, model):
  """The devices a run of `config` splits its batches over (mesh.data_mesh)."""
  split = splits_batch_over_cpu_cores(config, model)
  return meshes.data_mesh(batch_sizes=(config.batch_size, config.eval_batch_size) if split else ())


def make_train_chunk(config, model, num_classes, preprocess, augment_fn, lanes=None):
  """(stacked state, images, labels, (members, steps, batch) indices, member_hyperparams, active members)
  -> (stacked state, per-member per-step (loss, correct)).

  A population of one runs its steps as they are; a larger one runs them for every member (`members_in_parallel`),
  and members no longer active (stopped early, pruned, diverged) keep their state. With `lanes` (a 'members' mesh of
  CPU devices, mesh.member_lanes) the members are split evenly over the lanes, which run at once: each lane's share is
  padded with inactive copies of member 0, whose results are dropped.
  """
  step = functools.partial(train_step, config=config, num_classes=num_classes, preprocess=preprocess,
                           augment_fn=augment_fn)

  def member_steps(state, images, labels, batch_indices, hyperparams):
    return jax.lax.scan(lambda s, idx: step(s, images[idx], labels[idx], hyperparams), state, batch_indices)

  def train_chunk(state, images, labels, batch_indices, hyperparams, active):
    if checkpoint.population_size(state) == 1:
      one, outputs = member_steps(checkpoint.member(state, 0), images, labels, batch_indices[0],
                                  checkpoint.member(hyperparams, 0))
      return checkpoint.stack([one]), jax.tree.map(lambda x: x[None], outputs)
    if members_in_parallel(config, model):
      trained, outputs = jax.vmap(member_steps, in_axes=(0, None, None, 0, 0))(state, images, labels, batch_indices,
                                                                              hyperparams)
    else:
      trained, outputs = jax.lax.map(lambda member: member_steps(member[0], images, labels, *member[1:]),
                                     (state, batch_indices, hyperparams))
    kept = lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    return jax.tree.map(kept, trained, state), outputs

  if lanes is None:
    return jax.jit(train_chunk, donate_argnums=0)
  split = P("members")
  in_lanes = jax.shard_map(train_chunk, mesh=lanes, in_specs=(split, P(), P(), split, split, split), out_specs=split,
                           check_vma=False)

  def train_chunk_in_lanes(state, images, labels, batch_indices, hyperparams, active):
    members = checkpoint.population_size(state)
    padding = -members % lanes.size
    pad = lambda x, fill=None: jnp.concatenate([x, jnp.repeat(x[:1] if fill is None else fill, padding, 0)])
    state, batch_indices, hyperparams = jax.tree.map(pad, (state, batch_indices, hyperparams))
    trained, outputs = in_lanes(state, images, labels, batch_indices, hyperparams, pad(active, jnp.zeros(1, bool)))
    return jax.tree.map(lambda x: x[:members], (trained, outputs))

  return jax.jit(train_chunk_in_lanes, donate_argnums=0, out_shardings=meshes.replicated_sharding(lanes))


def make_predict(apply_fn, preprocess, flip=False):
  """Logits for one batch, with BatchNorm's running statistics and without dropout.

  With `flip`, the mean of the logits of each image and of its mirror image (test-time augmentation).
  """

  @jax.jit
  def predict(params, batch_stats, images, idx):
    x = preprocess(images[idx])
    if flip:
      x = jnp.concatenate([x, x[:, :, ::-1]])
    apply = cpu.formulated(functools.partial(apply_fn, train=False))
    logits = apply({"params": params, "batch_stats": batch_stats}, x).astype(jnp.float32)
    return logits.reshape(2, -1, logits.shape[-1]).mean(0) if flip else logits

  return predict


def predict_split(predict_fn, variables, images_on_device, n, batch_size, mesh) -> np.ndarray:
  """(n, classes) logits: every example exactly once, the last batch padded and its padding dropped."""
  indices, mask = data.eval_batches(n, batch_size)
  logits = [predict_fn(*variables, images_on_device, meshes.shard_batches(idx, mesh)) for idx in indices]
  return np.concatenate([meshes.to_host(l) for l in logits])[mask.reshape(-1)]


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
  """The mean loss and metrics (metrics.METRICS) over the examples, and their count."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  means = {name: float(total) / len(labels) for name, total in metrics.sums(logits, labels).items()}
  return {"loss": float(-log_probs[np.arange(len(labels)), labels].mean()), **means, "count": int(len(labels))}


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What the configs fix before the first step: the data on the devices, the model and its compiled calls."""
  config: Any  # what every member shares (model, data, batch size, schedule, epochs): member 0's config
  members: tuple  # each member's config; a single run is a population of one
  dataset: data.Dataset
  mesh: Any
  model: Any
  steps_per_epoch: int
  steps_per_call: int
  train_chunks: dict  # steps per call -> the compiled lax.scan of train steps (the last call of an epoch may be shorter)
  relative_rate: Any  # step -> multiplier of the peak learning rate
  predict: Any
  device_images: dict  # split name -> its images on the devices ('train' with its labels, on train_mesh)
  hyperparams: dict  # member_hyperparams() on train_mesh
  lanes: Any  # the CPU devices the members are split over (mesh.member_lanes), or None: the train calls run on mesh
  compile_seconds: float

  @property
  def train_mesh(self):
    """The devices the train calls run on: the lanes, or the data mesh."""
    return self.lanes or self.mesh


def build(members, log=print) -> tuple[Trainer, TrainState]:
  """Loads the data, places it on the devices and compiles the train calls; returns them with fresh stacked states."""
  members = tuple(members)
  population.check_shared_shape(members)
  config = members[0]
  dataset = data.load(config, log)
  steps_per_epoch = len(dataset.train) // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f"batch_size={config.batch_size} is larger than the {len(dataset.train)} training examples")
  num_classes, image_shape = len(dataset.class_names), dataset.info.image_shape
  read_as = images.preparation(config.dataset.photos, image_shape)
  if read_as != config.dataset.photos:
    log(f"note: dataset.photos={config.dataset.photos!r} makes 28x28 grayscale inputs, but these images are "
        f"{'x'.join(map(str, image_shape))}: predict will read files as these were read, {read_as!r}")
  model = registry.create(config, num_classes)
  variables = registry.check_output(model, config, image_shape, num_classes)
  if config.microbatches > 1 and variables.get("batch_stats"):
    raise UserError(f"microbatches={config.microbatches} would normalise each slice alone in {config.model.name}'s "
                    "BatchNorm; use microbatches=1 with BatchNorm models")
  mesh = data_mesh_for(config, model)
  meshes.check_divisible(config.batch_size, "batch_size", mesh)
  meshes.check_divisible(config.eval_batch_size, "eval_batch_size", mesh)
  tx = optim.create(config, steps_per_epoch)
  preprocess = preprocess_for(config, dataset)
  lanes = None if members_in_parallel(config, model) else meshes.member_lanes(len(members))
  train_mesh = lanes or mesh
  device_images = {"train": meshes.replicate((dataset.train.images, dataset.train.labels), train_mesh),
                   "validation": meshes.replicate(dataset.validation.images, mesh),
                   "test": meshes.replicate(dataset.test.images, mesh)}
  hyperparams = meshes.replicate(member_hyperparams(members), train_mesh)
  active = meshes.replicate(np.ones(len(members), bool), train_mesh)

  # Compiled against the shapes of the stacked state, so that a population too large for memory is refused
  # before its states are made.
  replicated = meshes.replicated_sharding(train_mesh)
  member_state = jax.eval_shape(lambda: create_states(members[:1], model, image_shape, tx))
  train_chunk = make_train_chunk(config, model, num_classes, preprocess, augment.make(config), lanes)
  chunk = min(config.steps_per_call, steps_per_epoch)

  def compile_chunk(length, population):
    state_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct((population, *x.shape[1:]), x.dtype, sharding=replicated),
                                member_state)
    idx = _place_batches(np.zeros((population, length, config.batch_size), np.int32), mesh, lanes)
    member_data = (hyperparams, active)
    if population < len(members):  # a smaller population's call, compiled for its memory need only
      member_data = jax.tree.map(lambda x: x[:population], member_data)
    return train_chunk.lower(state_shapes, *device_images["train"], idx, *member_data).compile()

  log(f"compiling the train step for {meshes.describe(mesh)}" + (f", {len(members)} members" if len(members) > 1 else "")
      + (f" side by side on {lanes.size} CPU devices" if lanes else "")
      + (f" (convolutions: {cpu.describe()})" if jax.default_backend() == "cpu" else ""))
  available = meshes.free_memory_bytes(train_mesh)  # on a CPU each lane's share of the host's memory
  compile_start = time.perf_counter()
  try:
    train_chunks = {length: compile_chunk(length, len(members)) for length in {chunk, steps_per_epoch % chunk} - {0}}
  except jax.errors.JaxRuntimeError as e:
    # A GPU's compiler runs the largest operations while it autotunes them, so a population too large for memory
    # fails there, before any memory analysis: smaller populations' compiled calls (2 and 4 members a device) tell
    # how many fit.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    smaller = sorted({min(k * (lanes.size if lanes else 1), len(members) - 1) for k in (2, 4)} - {0})
    _refuse_too_large({k: _memory_needed(compile_chunk(chunk, k)) for k in smaller}, len(members), available, e)
  compile_seconds = time.perf_counter() - compile_start
  needed = _memory_needed(train_chunks[chunk])
  if needed is not None and available is not None and needed > available:
    half = {len(members) // 2: _memory_needed(compile_chunk(chunk, len(members) // 2))} if len(members) > 1 else {}
    _refuse_too_large({len(members): needed, **half}, len(members), available)

  state = create_states(members, model, image_shape, tx)
  stem = registry.declared(model, "whitened_stem")
  if stem:
    state = whiten_stem(state, preprocess(dataset.train.images[:1000]), stem)
  state = meshes.replicate(state, mesh)
  trainer = Trainer(config, members, dataset, mesh, model, steps_per_epoch, chunk, train_chunks,
                    optim.schedule(config, steps_per_epoch), make_predict(model.apply, preprocess, config.test_time_flip),
                    device_images, hyperparams, lanes, compile_seconds)
  return trainer, state


def _place_batches(indices: np.ndarray, mesh, lanes):
  """(members, steps, batch) indices for a train call: split along the batch over the data mesh, or whole in every
  lane."""
  return meshes.replicate(indices, lanes) if lanes else meshes.shard_batches(indices, mesh)


def _memory_needed(compiled) -> int | None:
  """Bytes of device memory a compiled call needs: its arguments, outputs and temporaries, less the donated."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
          - analysis.alias_size_in_bytes)


def _refuse_too_large(needed: dict, members: int, available: int | None, compile_error=None):
  """Raises UserError naming the largest population that fits in `available` bytes (a device's free memory), from
  what the compiled calls of one or two population sizes need ({size: bytes}): a line through two sizes, since the
  data is shared and the rest grows per member; from one size, its bytes per member (an overestimate, so the advice
  errs on the safe side)."""
  available = available or 0
  sizes = sorted(k for k, v in needed.items() if v is not None)
  if len(sizes) >= 2:
    small, large = sizes[-2:]
    per_member = max((needed[large] - needed[small]) / (large - small), 1)
    fixed = needed[large] - per_member * large
  elif sizes:
    per_member, fixed = needed[sizes[0]] / sizes[0], 0
  else:
    per_member, fixed = float("inf"), 0
  largest = int((available - fixed) // per_member) if per_member != float("inf") else 0
  what = f"a population of {members}" if members > 1 else "this run"
  advice = (f"the largest population that fits is {largest}: pass fewer members" if largest >= 1 else
            "lower batch_size")
  need = ("ran out of device memory while compiling" if compile_error is not None else
          f"needs about {(fixed + per_member * members) / 2**30:.1f} GiB of memory per device ({per_member / 2**20:,.0f} MiB "
          "per member)")
  raise UserError(f"{what} {need}, {available / 2**30:.1f} GiB are free; {advice}") from compile_error


def train_epoch(trainer: Trainer, state: TrainState, epoch: int, active, after_call=None,
                profiler=None) -> tuple[TrainState, list, list]:
  """One epoch of the `active` members' steps, each in its (seed, epoch) order; the running loss and accuracy in a
  progress bar. Returns the state, each member's {train_loss, train_accuracy} and why it diverged (None if it did not).

  `after_call(step, {member: its means over the call})` runs after each compiled call; `profiler` (a
  tensorboard.Profiler) may trace calls."""
  config, members = trainer.config, trainer.members
  n = len(trainer.dataset.train)
  batches = np.stack([data.train_batches(m.seed, epoch, n, config.batch_size) for m in members])
  classes = len(trainer.dataset.class_names)
  active = np.array(active, bool)
  diverged = [None] * len(members)
  sums = None  # {'loss': each member's sum of step losses, metric: each member's sum over examples}
  if trainer.lanes:
    state = meshes.replicate(state, trainer.lanes)
  with tqdm(total=trainer.steps_per_epoch, desc=f"epoch {epoch}/{config.num_epochs}", unit="step", leave=False,
            dynamic_ncols=True, mininterval=0.5, disable=not distributed.is_primary()) as bar:
    for start in range(0, trainer.steps_per_epoch, trainer.steps_per_call):
      idx = batches[:, start:start + trainer.steps_per_call]
      if profiler:
        profiler.before_call()
      state, per_step = trainer.train_chunks[idx.shape[1]](
          state, *trainer.device_images["train"], _place_batches(idx, trainer.mesh, trainer.lanes), trainer.hyperparams,
          meshes.replicate(active, trainer.train_mesh))
      per_step = {name: np.asarray(values) for name, values in per_step.items()}  # (members, steps) each
      first_step = start + (epoch - 1) * trainer.steps_per_epoch
      for i in np.flatnonzero(active):
        diverged[i] = _divergence(per_step["loss"][i], first_step, epoch, members[i], classes)
        active[i] = diverged[i] is None
      chunk_sums = {name: values.sum(1) for name, values in per_step.items()}
      sums = chunk_sums if sums is None else {name: sums[name] + chunk_sums[name] for name in sums}
      done = start + idx.shape[1]
      if profiler:
        profiler.after_call(idx.shape[1])
      if after_call:
        members_mask = np.arange(len(members))
        after_call(first_step + idx.shape[1], {
            i: _epoch_means(chunk_sums, members_mask == i, idx.shape[1], config.batch_size)
            for i in np.flatnonzero(active)})
      bar.update(idx.shape[1])
      if not active.any():
        break
      bar.set_postfix({name: f"{value:.4f}" for name, value in _epoch_means(sums, active, done, config.batch_size).items()})
  if trainer.lanes:
    state = meshes.replicate(state, trainer.mesh)
  rows = []
  for i, m in enumerate(members):
    row = {f"train_{name}": float(value) for name, value in
           _epoch_means(sums, np.arange(len(members)) == i, trainer.steps_per_epoch, config.batch_size).items()}
    rows.append(row)
    # A whole epoch at chance with a loss ten times a uniform guess's: exploded without reaching inf.
    if diverged[i] is None and row["train_accuracy"] < 1.5 / classes and row["train_loss"] > 10 * np.log(classes):
      diverged[i] = (f"loss exploded: {row['train_loss']:.3g} on average over epoch {epoch} at chance accuracy "
                     f"({row['train_accuracy']:.1%}); lower optimizer.learning_rate "
                     f"(now {m.optimizer.learning_rate:g})")
  return state, rows, diverged


def _epoch_means(sums: dict, members, steps: int, batch_size: int) -> dict:
  """The mean loss a step and the mean of each metric an example, over `steps` steps of the selected members."""
  return {name: values[members].mean() / (steps if name == "loss" else steps * batch_size)
          for name, values in sums.items()}


# Losses this many times a uniform guess's (ln classes) on every one of a call's last steps mean divergence.
EXPLODED_LOSS_FACTOR = 100


def _divergence(losses: np.ndarray, first_step: int, epoch: int, config, classes: int) -> str | None:
  """Why a member diverged: a non-finite loss, or one that exploded and stayed there (see EXPLODED_LOSS_FACTOR)."""
  advice = f"lower optimizer.learning_rate (now {config.optimizer.learning_rate:g})"
  if not np.isfinite(losses).all():
    bad = int(np.argmin(np.isfinite(losses)))
    return f"loss became {losses[bad]} at step {first_step + bad + 1} (epoch {epoch}); {advice}"
  last = losses[-10:]
  if (last > EXPLODED_LOSS_FACTOR * np.log(classes)).all():
    return (f"loss exploded to {last[-1]:.3g} at step {first_step + len(losses)} (epoch {epoch}), over "
            f"{EXPLODED_LOSS_FACTOR}x a uniform guess's {np.log(classes):.2f}; {advice}")
  return None


def evaluate(trainer: Trainer, variables, split: str) -> dict:
  """Loss, accuracy and count of one member's `variables` (params, batch_stats) over every example of a split."""
  labels = getattr(trainer.dataset, split).labels
  logits = predict_split(trainer.predict, variables, trainer.device_images[split], len(labels),
                         trainer.config.eval_batch_size, trainer.mesh)
  return classification_metrics(logits, labels)


def _early_stopped(progress: checkpoint.Progress, config) -> checkpoint.Progress:
  """The progress, stopped if `patience` epochs passed without a better validation accuracy before the last epoch."""
  if (not progress.stopped and progress.epochs_without_improvement >= config.patience > 0
      and progress.epoch < config.num_epochs):
    return dataclasses.replace(progress, stopped=f"early stop: no better validation accuracy for {config.patience} epochs")
  return progress


def fit(trainer: Trainer, state: TrainState, progresses: tuple, manager, member_dirs, log=print, on_epoch=None,
        boards=tensorboard.OFF, profiler=None):
  """Trains every member from its progress to the last epoch or its stop, checkpointing and logging each epoch.

  Returns (state, progresses, each member's best evaluated variables). `on_epoch(member, row)` runs after each
  member's epoch; it returns why that member should stop (a tuner's pruning) or None. `boards` receive the train
  figures of every call and each epoch's row; `profiler` may trace train calls.
  """
  config, members = trainer.config, trainer.members
  single = len(members) == 1
  spe = trainer.steps_per_epoch
  for i, progress in enumerate(progresses):
    boards.start(i, progress.epoch * spe)

  def after_call(step, means):
    for i, values in means.items():
      boards.scalars(i, step, values, "train")

  def say(i, line):
    log(line if single else f"[{member_dirs[i].name}] {line}")

  metrics_files = [pathlib.Path(d) / "metrics.jsonl" for d in member_dirs]
  if distributed.is_primary():
    for path, progress in zip(metrics_files, progresses):
      checkpoint.write_history(path, progress.history)
  best_variables = [None] * len(members)
  first_epoch = max(p.epoch for p in progresses) + 1
  if first_epoch > 1:
    best, progresses = checkpoint.restore_best(manager, state, progresses)
    best = meshes.replicate(best.evaluated_variables(), trainer.mesh)
    best_variables = [checkpoint.member(best, i) for i in range(len(members))]
  # Checkpoints of older versions did not record an early stop.
  progresses = [_early_stopped(p, m) for p, m in zip(progresses, members)]
  for epoch in range(first_epoch, config.num_epochs + 1):
    active = [not p.stopped for p in progresses]
    if not any(active):
      break
    epoch_start = time.perf_counter()
    state, rows, diverged = train_epoch(trainer, state, epoch, active, after_call, profiler)
    trained = []
    for i in np.flatnonzero(active):
      if diverged[i] is not None:
        if single:
          raise TrainingDiverged(f"{diverged[i]}; the last good checkpoint, epoch {progresses[i].epoch}, is kept in "
                                 f"{pathlib.Path(member_dirs[i]) / 'checkpoints'}")
        progresses[i] = dataclasses.replace(progresses[i], stopped=f"diverged: {diverged[i]}")
        say(i, f"stopped: {progresses[i].stopped}")
        continue
      row = {"epoch": epoch, **rows[i], **{f"val_{name}": None for name in ("loss", *metrics.METRICS)},
             "learning_rate": optim.current_learning_rate(state.opt_state, trainer.relative_rate,
                                                          int(state.step[i]), i)}
      variables = checkpoint.member(state.evaluated_variables(), i)
      if len(trainer.dataset.validation):
        val = evaluate(trainer, variables, "validation")
        row.update({f"val_{name}": val[name] for name in ("loss", *metrics.METRICS)})
      trained.append((i, row, variables))
    # The population's epoch, every member's validation included: what each member's epoch cost.
    epoch_seconds = time.perf_counter() - epoch_start
    for i, row, variables in trained:
      row["epoch_seconds"] = epoch_seconds
      improved = row["val_accuracy"] is None or row["val_accuracy"] > progresses[i].best_val_accuracy
      if improved:
        best_variables[i] = jax.tree.map(jnp.copy, variables)
      progresses[i] = progresses[i].after_epoch(row, improved)
      if distributed.is_primary():
        with open(metrics_files[i], "a") as f:
          f.write(json.dumps(row) + "\n")
      boards.scalars(i, epoch * spe, {k: v for k, v in row.items() if k != "epoch"}, "epoch")
      say(i, _epoch_line(row, config.num_epochs))
      reason = on_epoch(i, row) if on_epoch is not None else None
      if reason:
        progresses[i] = dataclasses.replace(progresses[i], stopped=reason)
      progresses[i] = _early_stopped(progresses[i], members[i])
      if progresses[i].stopped:
        say(i, progresses[i].stopped)
    stopped_now = any(progresses[i].stopped for i in np.flatnonzero(active))
    if epoch % config.checkpoint.every_epochs == 0 or epoch == config.num_epochs or stopped_now:
      checkpoint.save(manager, state, tuple(progresses), members)
      workdirs.held_for_tests("checkpoint", first=manager.wait_until_finished)
  return state, tuple(progresses), best_variables


def resume(trainer: Trainer, state: TrainState, manager, workdir, log=print):
  """(stacked state, each member's Progress): the newest readable checkpoint's, with the configs' learning rates and
  weight decays, or a fresh start."""
  restored = checkpoint.restore_latest(manager, state, trainer.members)
  if restored is None:
    return state, (checkpoint.Progress(),) * len(trainer.members)
  state, progresses = restored
  epoch = max(p.epoch for p in progresses)
  if epoch > trainer.config.num_epochs:
    raise UserError(f"{workdir} has trained {epoch} epochs already, more than num_epochs="
                    f"{trainer.config.num_epochs}; pass --config.num_epochs={epoch} or more to resume it, "
                    "or --restart to start over")
  state = state.replace(opt_state=optim.with_members_hyperparams(state.opt_state, trainer.members))
  log(f"resuming from epoch {epoch} (step {int(state.step.max())}) in {workdir}")
  return meshes.replicate(state, trainer.mesh), progresses


def train_population(members, workdir, member_dirs, log=print, on_epoch=None, test=True,
                     boards=tensorboard.OFF) -> list[dict]:
  """Trains the members as one population, resuming from WORKDIR/checkpoints when there are any; returns their summaries.

  Each member's config.json, metrics.jsonl and summary.json go to its own folder in `member_dirs` (WORKDIR itself for
  a single run); a larger population also leaves each member's latest and best state there as checkpoints, so a
  member folder is a finished run like any other (report, predict, export). `test=False` leaves the test split out
  of the summaries (tuning trials: nothing chosen may see it). `boards` get the curves and test figures; a config's
  profile_steps traces train calls into WORKDIR/tb.
  """
  workdir, member_dirs = pathlib.Path(workdir), [pathlib.Path(d) for d in member_dirs]
  trainer, state = build(members, log)
  manager = checkpoint.manager(workdir, trainer.config)
  profiler = tensorboard.Profiler(workdir / tensorboard.FOLDER, trainer.config.profile_steps) if (
      trainer.config.profile_steps and distributed.is_primary()) else None
  try:
    state, progresses = resume(trainer, state, manager, workdir, log)
    if distributed.is_primary():
      for member_dir, member_config in zip(member_dirs, trainer.members):
        member_dir.mkdir(exist_ok=True)
        workdirs.write_config(member_dir, member_config)
        workdirs.write_dataset_info(member_dir, trainer.dataset.info)
    state, progresses, best_variables = fit(trainer, state, progresses, manager, member_dirs, log, on_epoch, boards,
                                            profiler)
    if member_dirs != [workdir]:
      _write_member_checkpoints(trainer, manager, state, progresses, member_dirs)
  finally:
    if profiler:
      profiler.stop()
    checkpoint.close(manager, state)
  summaries = []
  for i, (member_dir, progress) in enumerate(zip(member_dirs, progresses)):
    summary = {}
    if test:
      test_metrics = evaluate(trainer, best_variables[i], "test")
      summary = {**{f"test_{name}": test_metrics[name] for name in ("loss", *metrics.METRICS)},
                 "test_examples": test_metrics["count"]}
      boards.scalars(i, progress.epoch * trainer.steps_per_epoch,
                     {name: test_metrics[name] for name in ("loss", *metrics.METRICS)}, "test")
    summary |= {
        "best_val_accuracy": progress.best_val_accuracy if len(trainer.dataset.validation) else None,
        "best_epoch": progress.best_epoch, "epochs_run": progress.epoch, "num_epochs": trainer.config.num_epochs,
        "train_steps": progress.epoch * trainer.steps_per_epoch,
        "train_seconds": sum(row["epoch_seconds"] for row in progress.history),
        "compile_seconds": trainer.compile_seconds,
        "num_params": count_params(checkpoint.member(state.params, i)), "dataset": trainer.config.dataset.name,
        "model": trainer.config.model.name, "device": meshes.describe(trainer.train_mesh),
    } | ({"stopped": progress.stopped} if progress.stopped else {})
    if distributed.is_primary():
      (member_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    summaries.append(summary)
  return summaries


def _write_member_checkpoints(trainer, manager, state, progresses, member_dirs):
  """Each member's latest and best state, saved in its folder as a single run saves them."""
  epochs = checkpoint.restore_epochs(manager, state, max(p.epoch for p in progresses),
                                     [e for p in progresses for e in (p.epoch, p.best_epoch)])
  for i, (member_dir, progress, member_config) in enumerate(zip(member_dirs, progresses, trainer.members)):
    at_best = checkpoint.Progress(epoch=progress.best_epoch, best_val_accuracy=progress.best_val_accuracy,
                                  best_epoch=progress.best_epoch, history=progress.history[:progress.best_epoch])
    saves = [(at_best, progress.best_epoch)] if 0 < progress.best_epoch != progress.epoch else []
    member_manager = checkpoint.manager(member_dir, member_config)
    try:
      for member_progress, epoch in [*saves, (progress, progress.epoch)]:
        if epoch in epochs and epoch not in member_manager.all_steps():
          saved = checkpoint.stack([checkpoint.member(epochs[epoch], i)])
          checkpoint.save(member_manager, saved, (member_progress,), (member_config,))
    finally:
      checkpoint.close(member_manager, state)


def train_and_evaluate(config, workdir, log=print, test=True) -> dict:
  """Trains one run as `config` says in WORKDIR (a population of one); returns its summary."""
  return train_population([config], workdir, [workdir], log, test=test)[0]


def _epoch_line(row, num_epochs):
  names = ("loss", *metrics.METRICS)
  train = "  ".join(f"{name} {row[f'train_{name}']:.4f}" for name in names)
  val = "" if row["val_accuracy"] is None else "".join(f"  val_{name} {row[f'val_{name}']:.4f}" for name in names)
  return f"epoch {row['epoch']:>3}/{num_epochs}  {train}{val}  lr {row['learning_rate']:.2e}  {row['epoch_seconds']:.1f}s"



def load_run(workdir, which: str = "best"):
  """(config, state, Progress) of a finished or interrupted run, for evaluation, reporting and prediction.

  `which` is 'best' (best validation accuracy) or 'latest'. The state is restored against an
  abstract state built from the run's own config.json, so optax's state keeps its types.
  """
  workdir = pathlib.Path(workdir)
  config_file = workdir / "config.json"
  if (workdir / workdirs.POPULATION_FILE).is_file():
    raise UserError(f"{workdir} is a population of runs ({workdir / workdirs.POPULATION_FILE} lists them); pass one "
                    f"of its members' folders, e.g. {workdir / 'seed-0'}")
  if not config_file.is_file():
    raise UserError(f"{workdir} is not a fluxdigits run (no config.json); pass the --workdir of a training run")
  try:
    config = configs.from_flat(json.loads(config_file.read_text()))
  except (json.JSONDecodeError, UserError) as e:
    raise UserError(f"{config_file} is unreadable ({e}); it must be the config.json a training run wrote") from e
  info = dataset_info(workdir, config)
  mngr = checkpoint.manager(workdir, config, create=False, this_process_only=True)
  # Abstract: restoring needs the state's structure and shapes, not a compiled initialiser.
  template = jax.eval_shape(lambda: create_states([config], registry.create(config, len(info.class_names)),
                                                  info.image_shape, optim.create(config, 1)))
  restored = checkpoint.restore_latest(mngr, template)
  if restored is None:
    raise UserError(f"{workdir / 'checkpoints'} holds no checkpoint; train the run first (python -m fluxdigits.run ...)")
  state, progresses = restored
  if which == "best":
    state, progresses = checkpoint.restore_best(mngr, state, progresses)
  mngr.close()
  return config, checkpoint.member(state, 0), progresses[0]


def dataset_info(workdir, config) -> data.Info:
  """What a run's model knows of its data: its dataset.json, or (a run of an older fluxdigits) the data's own."""
  return workdirs.read_dataset_info(pathlib.Path(workdir)) or data.load(config, log=lambda line: None).info
