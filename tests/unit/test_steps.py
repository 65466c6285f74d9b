"""The pure step on synthetic digits: it learns, and a population is the same step for each member."""

import functools
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_digits

from fluxdigits import config as configs, optim, registry, steps
from fluxdigits.population import member

EXPERIMENTS = pathlib.Path(steps.__file__).parents[1] / "experiments"
BATCH, STEPS = 32, 8


@pytest.fixture(scope="module")
def digits():
  images, labels = synthetic_digits(BATCH * STEPS, seed=0)
  return jnp.asarray(images[..., None]), jnp.asarray(labels.astype(np.int32))


def mlp_config(**changes):
  config = configs.load(str(EXPERIMENTS / "mnist_mlp.py"))
  config.batch_size = BATCH
  config.update(changes)
  return configs.validate(config)


def fixed(config, **more):
  """The step's static arguments."""
  return dict(
    config=config, num_classes=10, preprocess=steps.Preprocess((0.0,), (1.0,), jnp.float32), augment_fn=None, **more
  )


def test_the_train_step_learns_synthetic_digits(digits):
  config = mlp_config()
  model = registry.create(config, 10)
  state = steps.create_state(config, model, (28, 28, 1), STEPS)
  step = jax.jit(
    functools.partial(
      steps.train_step, hyperparams=steps.hyperparams_of(config), images=digits[0], labels=digits[1], **fixed(config)
    )
  )
  losses, accuracies = [], []
  for i in range(3 * STEPS):
    state, figures = step(state, jnp.arange(BATCH) + BATCH * (i % STEPS))
    losses.append(float(figures["loss"]))
    accuracies.append(float(figures["accuracy"]) / BATCH)
  assert int(state.step) == 3 * STEPS
  assert np.mean(losses[-STEPS:]) < 0.3 * np.mean(losses[:2]), losses
  assert np.mean(accuracies[-STEPS:]) > 0.9, accuracies


@pytest.mark.parametrize("vectorize", ["true", "false"])  # under jax.vmap, or one after another (lax.map)
def test_a_population_steps_each_member_as_it_would_alone_and_an_inactive_one_not_at_all(digits, vectorize):
  members = [mlp_config(seed=seed, vectorize_members=vectorize) for seed in (0, 1, 2)]
  members[1].optimizer.learning_rate = 3e-3
  model = registry.create(members[0], 10)
  tx = optim.create(members[0], STEPS)
  forward = jnp.arange(BATCH * STEPS).reshape(STEPS, BATCH)
  order = jnp.stack([forward, forward[::-1], forward])  # each member its own batches
  train = jax.jit(functools.partial(steps.train_steps, **fixed(members[0], model=model)))
  start = steps.create_states(members, model, (28, 28, 1), tx)
  hyperparams, active = steps.member_hyperparams(members), jnp.array([True, True, False])
  together, figures = train(start, *digits, order, hyperparams, active, STEPS)
  assert int(member(together, 2).step) == 0
  chex.assert_trees_all_equal(member(together, 2).params, member(start, 2).params)
  for i, config in enumerate(members[:2]):
    alone, alone_figures = train(
      steps.create_states([config], model, (28, 28, 1), tx),
      *digits,
      order[i : i + 1],
      steps.member_hyperparams([config]),
      jnp.array([True]),
      STEPS,
    )
    np.testing.assert_allclose(alone_figures["loss"][0], figures["loss"][i], rtol=1e-4)
    chex.assert_trees_all_close(member(alone, 0).params, member(together, i).params, rtol=1e-4, atol=1e-6)


def test_a_call_of_any_length_computes_its_steps_exactly_alike(digits):
  """What a stop within an epoch and calls sized by time rest on: the steps split over calls of any lengths end
  bit for bit where one call of all of them ends, and a call runs only the steps it is given."""
  config = mlp_config(seed=0)
  model = registry.create(config, 10)
  tx = optim.create(config, STEPS)
  order = jnp.arange(BATCH * STEPS).reshape(1, STEPS, BATCH)
  train = jax.jit(functools.partial(steps.train_steps, **fixed(config, model=model)), donate_argnums=0)
  arguments = lambda indices, count: (*digits, indices, steps.member_hyperparams([config]), jnp.array([True]), count)
  start = lambda: steps.create_states([config], model, (28, 28, 1), tx)
  whole, figures = train(start(), *arguments(order, STEPS))
  state, losses = start(), []
  for first, count in [(0, 1), (1, 2), (3, STEPS - 3)]:
    indices = jnp.zeros_like(order).at[:, :count].set(order[:, first : first + count])
    state, part = train(state, *arguments(indices, count))
    assert not part["loss"][0, count:].any()  # the steps past `count` did not run
    losses.extend(part["loss"][0, :count])
  assert int(member(state, 0).step) == STEPS
  chex.assert_trees_all_equal(state, whole)
  np.testing.assert_array_equal(np.array(losses), figures["loss"][0])
