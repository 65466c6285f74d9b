"""The pure functions of training: the train state, the loss, a train step, a call of many steps (a population's
under vmap), and the predict step. Each takes its state and data and returns new ones; nothing here touches a file,
prints, or knows a run's folder (loop.py does).

Many steps run inside one compiled call, `train_steps`: a loop over up to `steps_per_call` batches gathered from the
dataset already on the devices, so the host only starts a call per chunk and reads back its per-step figures. A
population is K configs that differ only in what can be data (seed, learning rate, weight decay, dropout rate, label
smoothing: population.py); their states are stacked along a leading member axis and the same steps run for each.
A single run is a population of one.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from fluxdigits import augment, config as configs, cpu, data, layers, mesh as meshes, metrics, optim, registry
from fluxdigits.population import member, population_size, stack


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

  # One compiled call: run op by op, the initialisers would compile dozens of tiny programs.
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

  state = stack([init(jax.random.key(m.seed)) for m in members])
  return state.replace(opt_state=optim.with_members_hyperparams(state.opt_state, members))


def create_state(config, model, image_shape, steps_per_epoch) -> TrainState:
  """One run's fresh state (unstacked)."""
  return member(create_states([config], model, image_shape, optim.create(config, steps_per_epoch)), 0)


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


def train_step(
  state: TrainState, batch_indices, *, images, labels, hyperparams, config, num_classes, preprocess, augment_fn
):
  """One member's step on the batch `images[batch_indices]`; `hyperparams` is its hyperparams_of()."""
  augment_rng, dropout_rng = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
  labels = labels[batch_indices]
  x = preprocess(images[batch_indices], augment_rng, augment_fn, labels)
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


def members_in_parallel(config, model) -> bool:
  """Whether a population's members step together under jax.vmap, or one after another inside the compiled call
  (jax.lax.map). On a CPU one convolutional member's step already fills the cores, and vmap pushes the members'
  activations out of the caches; small dense models gain from it (benchmarks/NOTES.md, "Populations")."""
  return configs.switch(
    config.vectorize_members, jax.default_backend() != "cpu" or registry.declared(model, "vectorize_members", False)
  )


def steps_loop(step, state, indices, count):
  """lax.scan's (state, stacked outputs) of `step` over the first `count` rows of `indices`, `count` known only when
  the call runs: one compiled call serves calls of any length, each computing its steps exactly alike (XLA compiles a
  loop of a known length to other code for other lengths, which moves the last bits of the results)."""
  _, shapes = jax.eval_shape(step, state, indices[0])
  outputs = jax.tree.map(lambda s: jnp.zeros((len(indices), *s.shape), s.dtype), shapes)

  def body(i, carry):
    state, outputs = carry
    state, out = step(state, indices[i])
    return state, jax.tree.map(lambda buffer, value: buffer.at[i].set(value), outputs, out)

  return jax.lax.fori_loop(0, count, body, (state, outputs))


def train_steps(
  state,
  images,
  labels,
  batch_indices,
  hyperparams,
  active,
  count,
  *,
  config,
  model,
  num_classes,
  preprocess,
  augment_fn,
):
  """(stacked state, images, labels, (members, steps, batch) indices, member_hyperparams(), active members, how many
  of the steps to run) -> (stacked state, each member's per-step figures, zero past `count`): one compiled call.

  A population of one runs its steps as they are; a larger one runs them for every member (`members_in_parallel`),
  and members no longer active (stopped early, pruned, diverged) keep their state.
  """
  step = functools.partial(
    train_step,
    images=images,
    labels=labels,
    config=config,
    num_classes=num_classes,
    preprocess=preprocess,
    augment_fn=augment_fn,
  )
  if population_size(state) == 1:
    one, outputs = steps_loop(
      functools.partial(step, hyperparams=member(hyperparams, 0)), member(state, 0), batch_indices[0], count
    )
    return stack([one]), jax.tree.map(lambda x: x[None], outputs)
  member_steps = lambda state, indices, hyperparams: steps_loop(
    functools.partial(step, hyperparams=hyperparams), state, indices, count
  )
  if members_in_parallel(config, model):
    trained, outputs = jax.vmap(member_steps)(state, batch_indices, hyperparams)
  else:
    trained, outputs = jax.lax.map(lambda m: member_steps(*m), (state, batch_indices, hyperparams))
  kept = lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
  return jax.tree.map(kept, trained, state), outputs


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
  return np.concatenate([meshes.to_host(batch_logits) for batch_logits in logits])[mask.reshape(-1)]


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
  """The mean loss and metrics (metrics.METRICS) over the examples, and their count."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  means = {name: float(total) / len(labels) for name, total in metrics.sums(logits, labels).items()}
  return {"loss": float(-log_probs[np.arange(len(labels)), labels].mean()), **means, "count": int(len(labels))}
