"""config.model -> a Flax module: a built-in name (models.BUILTIN), or the user's own class by import path.

`model.name` is `FILE.py:NAME` (a path relative to the working directory, or absolute) or `package.module:NAME`;
NAME is a flax.linen.Module whose `__call__(x, train)` maps a float batch (N, H, W, C) to logits (N, num_classes).
Its constructor's fields come from `model.kwargs`; `num_classes` (from the dataset), `dtype` (from
mixed_precision) and `dropout_rate` (model.dropout_rate, which a population may vary) fill fields of those names
that the kwargs leave out. A bad reference is one line (UserError) naming it.
"""

import dataclasses
import functools
import importlib
import importlib.util
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from fluxdigits import models
from fluxdigits.errors import UserError

# Filled by the trainer or the dataset, never by model.kwargs: Flax's own fields, and what a run decides.
_NOT_KWARGS = ("parent", "name")
_HOW = "model.name takes a built-in name ({}), FILE.py:CLASS or package.module:CLASS"


def _constructor(reference: str):
  """(the Module class, arguments the reference fixes) for a model.name."""
  if reference in models.BUILTIN:
    built_in = models.BUILTIN[reference]
    if isinstance(built_in, functools.partial):
      return built_in.func, dict(built_in.keywords)
    return built_in, {}
  where, sep, attribute = reference.rpartition(":")
  if not sep or not where or not attribute:
    raise UserError(f"unknown model.name {reference!r}; " + _HOW.format(", ".join(models.BUILTIN)))
  module = _load_file(where) if where.endswith(".py") else _import(where)
  if not hasattr(module, attribute):
    found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                   and v.__module__ == module.__name__)
    raise UserError(f"model.name {reference!r}: {where} defines no {attribute!r}"
                    + (f"; its Flax modules: {', '.join(found)}" if found else "; it defines no flax.linen.Module"))
  cls = getattr(module, attribute)
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise UserError(f"model.name {reference!r} is a {type(cls).__name__}, not a flax.linen.Module class; "
                    "name the class whose __call__(x, train) returns the logits")
  return cls, {}


@functools.cache
def _load_file(path: str):
  # Cached: every step traced and every state restored must see the same class object.
  file = pathlib.Path(path).expanduser().absolute()
  if not file.is_file():
    raise UserError(f"model file {file} not found; in model.name=FILE.py:CLASS give FILE relative to the working "
                    "directory, or absolute")
  name = f"fluxdigits_user_model_{abs(hash(str(file)))}"
  spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses and pickling look classes up by their module
  try:
    spec.loader.exec_module(module)
  except (Exception, SystemExit) as e:
    del sys.modules[name]
    raise UserError(f"model file {path!r} failed to load: {type(e).__name__}: {e}") from None
  return module


def _import(dotted: str):
  try:
    return importlib.import_module(dotted)
  except ImportError as e:
    raise UserError(f"model module {dotted!r} cannot be imported ({e}); install it, or give FILE.py:CLASS") from None
  except Exception as e:
    raise UserError(f"model module {dotted!r} failed to import: {type(e).__name__}: {e}") from None


def fields(reference: str) -> tuple:
  """The names of the constructor arguments model.kwargs may set."""
  return _fields(*_constructor(reference))


def _fields(cls, fixed: dict) -> tuple:
  return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_KWARGS and f.name not in fixed)


def check_kwargs(config) -> None:
  """Raises UserError unless model.name resolves and every key of model.kwargs is one of its fields."""
  allowed = fields(config.model.name)
  for key in config.model.kwargs:
    if key not in allowed:
      raise UserError(f"model.kwargs.{key}: {config.model.name} has no field {key!r}; its fields: "
                      f"{', '.join(allowed) or '(none)'}")


def compute_dtype(config):
  """The dtype of activations and matmuls; parameters stay float32 either way."""
  return jnp.bfloat16 if config.mixed_precision else jnp.float32


def create(config, num_classes: int, dropout_rate=None) -> nn.Module:
  """The config's model for `num_classes` classes; `dropout_rate` (a population member's, traced) stands in for
  config.model.dropout_rate."""
  cls, fixed = _constructor(config.model.name)
  given = {key: tuple(v) if isinstance(v, list) else v for key, v in config.model.kwargs.items()}
  filled = {"num_classes": num_classes, "dtype": compute_dtype(config),
            "dropout_rate": config.model.dropout_rate if dropout_rate is None else dropout_rate}
  names = _fields(cls, fixed)
  return cls(**fixed, **{k: v for k, v in filled.items() if k in names and k not in given}, **given)


def check_output(model: nn.Module, config, image_shape, num_classes: int) -> dict:
  """The model's variables, abstract (nothing is computed or compiled); raises UserError unless `model` maps a batch
  of `image_shape` images to (N, num_classes) logits."""
  x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  try:
    variables = jax.eval_shape(functools.partial(model.init, train=False), rngs, x)
    logits, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                                                        mutable=["batch_stats"]), variables, x)
  except UserError:
    raise
  except Exception as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise UserError(f"model {config.model.name} failed on a batch of {tuple(image_shape)} images "
                    f"({type(e).__name__}: {message[:300]}); its __call__(x, train) must map (N, H, W, C) floats to "
                    "(N, num_classes) logits") from None
  if logits.shape != (2, num_classes):
    raise UserError(f"model {config.model.name} returned shape {tuple(logits.shape)} for a batch of 2 "
                    f"{tuple(image_shape)} images; it must return logits of shape (N, num_classes) = (2, {num_classes})")
  return variables


def declared(model: nn.Module, prop: str, default=None):
  """What the model declares of itself (models.py's docstring lists the properties); `default` if nothing."""
  return getattr(model, prop, default)
