"""Optimizers and learning-rate schedules from a config.

The peak learning rate and the weight decay are hyperparameters held in the optimizer state
(`optax.inject_hyperparams`), not constants baked into the compiled step: a sweep can change or
`jax.vmap` them without recompiling. The schedule is a relative shape in [0, 1] that multiplies
the peak rate.
"""

import jax
import jax.numpy as jnp
import optax


def schedule(config, steps_per_epoch: int):
  """step -> multiplier of the peak learning rate."""
  s = config.schedule
  total = max(config.num_epochs * steps_per_epoch, 1)
  if s.name == "constant":
    return optax.constant_schedule(1.0)
  if s.name == "cosine":
    return optax.cosine_decay_schedule(1.0, total)
  if s.name == "warmup_cosine":
    warmup = int(s.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total)
  if s.name == "one_cycle":
    return optax.cosine_onecycle_schedule(total, 1.0, pct_start=s.one_cycle_pct_start)
  raise ValueError(s.name)  # config.validate() admits only the names above


def _direction(o) -> optax.GradientTransformation:
  """The update direction before scaling by the learning rate."""
  if o.name == "sgd":
    return optax.identity()
  if o.name == "momentum":
    return optax.trace(decay=o.momentum, nesterov=o.nesterov)
  if o.name in ("adam", "adamw"):
    return optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps)
  if o.name == "rmsprop":
    return optax.scale_by_rms(decay=o.rms_decay, eps=o.eps)
  raise ValueError(o.name)


def _is_kernel(params):
  # Biases and BatchNorm scales are not decayed.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create(config, steps_per_epoch: int) -> optax.GradientTransformation:
  o = config.optimizer
  relative_rate = schedule(config, steps_per_epoch)

  def optimizer(learning_rate, weight_decay):
    decay = optax.add_decayed_weights(weight_decay, mask=_is_kernel)
    # adamw decays weights after the Adam rescaling (decoupled); the others add an L2 gradient.
    steps = [_direction(o), decay] if o.name == "adamw" else [decay, _direction(o)]
    return optax.chain(*steps, optax.scale_by_schedule(relative_rate), optax.scale(-learning_rate))

  return optax.inject_hyperparams(optimizer)(learning_rate=o.learning_rate, weight_decay=o.weight_decay)


HYPERPARAMS = ("learning_rate", "weight_decay")


def with_config_hyperparams(opt_state, config):
  """The optimizer state with the config's learning rate and weight decay, e.g. a lower rate on resume."""
  return _with_hyperparams(opt_state, {name: config.optimizer[name] for name in HYPERPARAMS})


def with_members_hyperparams(opt_state, members):
  """A population's stacked optimizer state with each member config's learning rate and weight decay."""
  return _with_hyperparams(opt_state, {name: [m.optimizer[name] for m in members] for name in HYPERPARAMS})


def _with_hyperparams(opt_state, values: dict):
  hyperparams = dict(opt_state.hyperparams)
  for name, value in values.items():
    hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
  return opt_state._replace(hyperparams=hyperparams)


def current_learning_rate(opt_state, relative_rate, step, member: int = 0) -> float:
  """The learning rate of the next step; `member` picks one of a population's stacked optimizer states."""
  learning_rate = opt_state.hyperparams["learning_rate"]
  return float((learning_rate[member] if learning_rate.ndim else learning_rate) * relative_rate(step))
