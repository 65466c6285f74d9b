"""config.model -> a Flax module: a built-in name (models.BUILTIN), or the user's own class by import path.

`model.name` is `FILE.py:NAME` (a path relative to the working directory, or absolute) or `package.module:NAME`;
NAME is a Flax module class whose call maps a float batch (N, H, W, C) to logits (N, num_classes):
  - flax.linen: `__call__(x, train)` (or `training`, or `deterministic` meaning the opposite, or no such argument);
  - flax.nnx: `__init__(..., rngs)` and `__call__(x)` (it may take `rngs` too); train() and eval() set its mode.
Its constructor's arguments come from `model.kwargs`; `num_classes` (from the dataset), `dtype` (from
mixed_precision) and `dropout_rate` (model.dropout_rate) fill arguments of those names that the kwargs leave out.
Either kind becomes a Linen module with `__call__(x, train)`, so every step, checkpoint and export sees one
interface and plain {'params', 'batch_stats'} variables. A bad reference is one line (UserError) naming it.
"""

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import pathlib
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import FrozenDict
from flax.nnx import bridge

from fluxdigits import models
from fluxdigits.cpu import onednn
from fluxdigits.errors import UserError

# Filled by the trainer or the dataset, never by model.kwargs: Flax's own fields, and what a run decides.
_NOT_KWARGS = ("parent", "name", "rngs")
_HOW = "model.name takes a built-in name ({}), FILE.py:CLASS or package.module:CLASS"
_KINDS = "a flax.linen.Module or flax.nnx.Module class"
# How a Linen model's __call__ may be told it trains: argument name -> its value when training.
_TRAIN_ARGUMENTS = {"train": True, "training": True, "deterministic": False}


def _is_module_class(value) -> bool:
  return isinstance(value, type) and issubclass(value, (nn.Module, nnx.Module))


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
    found = sorted(n for n, v in vars(module).items() if _is_module_class(v) and v.__module__ == module.__name__)
    raise UserError(
      f"model.name {reference!r}: {where} defines no {attribute!r}"
      + (f"; its Flax modules: {', '.join(found)}" if found else "; it defines no Flax module")
    )
  cls = getattr(module, attribute)
  if not _is_module_class(cls):
    raise UserError(
      f"model.name {reference!r} is a {type(cls).__name__}, not {_KINDS}; name the class whose "
      "__call__ returns the logits"
    )
  return cls, {}


@functools.cache
def _load_file(path: str):
  # Cached: every step traced and every state restored must see the same class object.
  file = pathlib.Path(path).expanduser().absolute()
  if not file.is_file():
    raise UserError(
      f"model file {file} not found; in model.name=FILE.py:CLASS give FILE relative to the working "
      "directory, or absolute"
    )
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
  if issubclass(cls, nnx.Module):
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:] if p.kind in kinds]
  else:
    names = [f.name for f in dataclasses.fields(cls) if f.init]
  return tuple(name for name in names if name not in _NOT_KWARGS and name not in fixed)


def check_kwargs(config) -> None:
  """Raises UserError unless model.name resolves and every key of model.kwargs is one of its fields."""
  allowed = fields(config.model.name)
  for key in config.model.kwargs:
    if key not in allowed:
      raise UserError(
        f"model.kwargs.{key}: {config.model.name} has no field {key!r}; its fields: {', '.join(allowed) or '(none)'}"
      )


def compute_dtype(config):
  """The dtype of activations and matmuls (config.mixed_precision); parameters stay float32 either way."""
  if config.mixed_precision == "auto":  # bf16 where the hardware computes in it
    return jnp.bfloat16 if jax.default_backend() != "cpu" or onednn.native_bf16() else jnp.float32
  return jnp.bfloat16 if config.mixed_precision == "true" else jnp.float32


def dropout_rate_is_data(config) -> bool:
  """Whether the model takes a traced dropout rate, so that a population's members may differ in it: the built-in
  models do (layers.Dropout); flax's Dropout branches on its rate in Python, so other models get it as a number."""
  return config.model.name in models.BUILTIN


def create(config, num_classes: int, dropout_rate=None) -> nn.Module:
  """The config's model for `num_classes` classes, as a Linen module called `(x, train)`; `dropout_rate` (a
  population member's, traced) stands in for config.model.dropout_rate where the model takes it as data."""
  cls, fixed = _constructor(config.model.name)
  given = {key: tuple(v) if isinstance(v, list) else v for key, v in config.model.kwargs.items()}
  if dropout_rate is None or not dropout_rate_is_data(config):
    dropout_rate = config.model.dropout_rate
  filled = {"num_classes": num_classes, "dtype": compute_dtype(config), "dropout_rate": dropout_rate}
  names = _fields(cls, fixed)
  arguments = {**fixed, **{k: v for k, v in filled.items() if k in names and k not in given}, **given}
  if issubclass(cls, nnx.Module):
    return from_nnx(cls, arguments)
  parameters = inspect.signature(cls.__call__).parameters
  argument = next((name for name in _TRAIN_ARGUMENTS if name in parameters), None)
  return cls(**arguments) if argument == "train" else WithTrainArgument(cls(**arguments), argument)


class WithTrainArgument(nn.Module):
  """A Linen model whose __call__ names its mode otherwise (`training`, `deterministic`) or not at all, called as
  `(x, train)`; its variables stay where they were (share_scope)."""

  module: nn.Module
  argument: str | None

  def setup(self):
    nn.share_scope(self, self.module)

  def __call__(self, x, train: bool = False):
    if self.argument is None:
      return self.module(x)
    return self.module(x, **{self.argument: train == _TRAIN_ARGUMENTS[self.argument]})


def _nnx_forward(module, x, *, train: bool, rngs):
  (module.train if train else module.eval)()
  return module(x) if rngs is None else module(x, rngs=rngs)


def _nnx_construct(cls, *, rngs: nnx.Rngs, **kwargs):
  """cls(**kwargs) with one stream that every stream it asks for draws from: the init's params key, else the
  training call's dropout key (evaluation: bridge's default)."""
  stream = next(name for name in ("params", "dropout", "default") if name in rngs)
  return cls(**kwargs, rngs=nnx.Rngs(rngs[stream]()))


class FromNNX(bridge.ToLinen):
  """An nnx.Module class as a Linen model called `(x, train)` (flax's nnx.bridge): built from `kwargs` at each call,
  set to train() or eval(), its nnx.Param in 'params' and nnx.BatchStat in 'batch_stats'. A __call__ that takes
  `rngs` gets the call's dropout stream there."""

  model_class: Any = None
  metadata_fn: Any = None  # plain arrays in the collections, not NNX's metadata boxes

  def __call__(self, x, train: bool = False):
    takes_rngs = "rngs" in inspect.signature(self.model_class.__call__).parameters
    rngs = nnx.Rngs(dropout=self.make_rng("dropout")) if train and takes_rngs else None
    return super().__call__(x, nnx_method=functools.partial(_nnx_forward, train=train, rngs=rngs))


def from_nnx(cls, kwargs: dict) -> FromNNX:
  return FromNNX(functools.partial(_nnx_construct, cls), kwargs=FrozenDict(kwargs), model_class=cls)


def check_output(model: nn.Module, config, image_shape, num_classes: int) -> dict:
  """The model's variables, abstract (nothing is computed or compiled); raises UserError unless `model` maps a batch
  of `image_shape` images to (N, num_classes) logits."""
  x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  try:
    variables = jax.eval_shape(functools.partial(model.init, train=False), rngs, x)
    logits, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]),
      variables,
      x,
    )
  except UserError:
    raise
  except Exception as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise UserError(
      f"model {config.model.name} failed on a batch of {tuple(image_shape)} images "
      f"({type(e).__name__}: {message[:300]}); its __call__ must map (N, H, W, C) floats to "
      "(N, num_classes) logits"
    ) from None
  if logits.shape != (2, num_classes):
    raise UserError(
      f"model {config.model.name} returned shape {tuple(logits.shape)} for a batch of 2 "
      f"{tuple(image_shape)} images; it must return logits of shape (N, num_classes) = (2, {num_classes})"
    )
  return variables


def declared(model: nn.Module, prop: str, default=None):
  """What the model declares of itself (models.py's docstring lists the properties); `default` if nothing."""
  if isinstance(model, WithTrainArgument):
    model = model.module
  return getattr(model.model_class if isinstance(model, FromNNX) else model, prop, default)
