"""Populations: configs that differ only in what the train step takes as data, trained at once (steps.py, loop.py),
their states stacked along a leading member axis.

Members may differ in DATA_KEYS (the dropout rate only where the model takes it as data, registry.py).
Everything else (model, data, batch size, optimizer family, schedule, epochs, augmentation, weight
averaging) fixes the shape of the compiled program and is shared; configs of different shapes form
different populations (`groups`).
"""

import math

import jax
import numpy as np

from fluxdigits import config as configs, registry
from fluxdigits.errors import UserError

DATA_KEYS = ("seed", "optimizer.learning_rate", "optimizer.weight_decay", "model.dropout_rate", "label_smoothing")
# Figures of the members' summaries that WORKDIR/summary.json aggregates.
AGGREGATED = ("test_accuracy", "test_loss", "best_val_accuracy", "best_epoch", "train_seconds")


def member(tree, i: int):
  """Member i's slice of a stacked (population) pytree."""
  return jax.tree.map(lambda x: x[i], tree)


def stack(trees):
  """One pytree whose leaves hold the given trees' leaves along a new leading (member) axis."""
  return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *trees)


def population_size(state) -> int:
  return int(state.step.shape[0])


def data_keys(config) -> tuple:
  """The keys members of `config`'s population may differ in."""
  return (
    DATA_KEYS if registry.dropout_rate_is_data(config) else tuple(k for k in DATA_KEYS if k != "model.dropout_rate")
  )


def shape_key(config) -> tuple:
  """What a config shares with every member of its population."""
  varied = data_keys(config)
  return tuple(sorted((k, v) for k, v in configs.flatten(config).items() if k not in varied))


def check_shared_shape(members) -> None:
  first = dict(shape_key(members[0]))
  for member in members[1:]:
    other = dict(shape_key(member))
    differing = sorted(k for k in first if first[k] != other[k])
    if differing:
      raise UserError(
        f"population members differ in {', '.join(differing)}, which fix the compiled program; "
        f"members may differ only in {', '.join(data_keys(members[0]))}"
      )


def groups(members) -> list[list[int]]:
  """Indices of `members` grouped by shape, in order of first appearance."""
  by_shape = {}
  for i, member in enumerate(members):
    by_shape.setdefault(shape_key(member), []).append(i)
  return list(by_shape.values())


MAX_SEEDS = 65536


def parse_seeds(text: str) -> list[int]:
  """'0-7' or '0,3,5' or '1-3,9' -> the seeds, in order, each once."""
  usage = f"--seeds {text!r} is not a list of seeds in [0, 2**32); write e.g. --seeds 0-7 or --seeds 0,3,5"
  seeds = []
  for part in text.split(","):
    first, sep, last = part.strip().partition("-")
    try:
      first, last = int(first), int(last) if sep else int(first)
    except ValueError:
      raise UserError(usage) from None
    if not 0 <= first <= last < 2**32 or len(seeds) + last - first >= MAX_SEEDS:
      raise UserError(usage)
    seeds += range(first, last + 1)
  return list(dict.fromkeys(seeds))


def with_seeds(config, seeds) -> list:
  return [configs.override(config, [f"seed={seed}"]) for seed in seeds]


def aggregate(summaries: list[dict], names: list[str]) -> dict:
  """Mean, standard deviation (ddof=1), min and max over the members of each AGGREGATED figure, and the members'."""
  result = {"members": len(summaries)}
  for key in AGGREGATED:
    values = [s[key] for s in summaries if isinstance(s.get(key), (int, float))]
    if values:
      result[key] = {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "min": float(np.min(values)),
        "max": float(np.max(values)),
      }
  result["per_member"] = {
    name: {k: s.get(k) for k in (*AGGREGATED, "stopped") if k in s} for name, s in zip(names, summaries)
  }
  return result


def describe(figure: dict, scale: float = 100.0, unit: str = "%") -> str:
  """'98.71% ± 0.08% (min 98.60%, max 98.83%)'."""
  if not figure or any(math.isnan(figure[k]) for k in ("mean", "std")):
    return "-"
  return (
    f"{figure['mean'] * scale:.2f}{unit} ± {figure['std'] * scale:.2f}{unit} "
    f"(min {figure['min'] * scale:.2f}{unit}, max {figure['max'] * scale:.2f}{unit})"
  )
