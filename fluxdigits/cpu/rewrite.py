"""Any model's convolutions and max-pools in the CPU forms (forms.py): its forward pass traced to a jaxpr, and
evaluated again with those operations swapped."""

import functools

import jax
import jax.extend.core
from jax import lax

from fluxdigits.cpu.forms import conv1x1, conv3x3, lax_ops, max_pool_2x2

_NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def formulated(fn):
  """`fn` (a Flax model's apply, Linen or NNX, or any function of arrays) computing lax's 3x3 and 1x1 convolutions
  and 2x2 max-pools as `conv3x3`, `conv1x1` and `max_pool_2x2` do on a CPU: traced to a jaxpr, then evaluated again
  with those operations swapped, so that a model written with nn.Conv and nn.max_pool trains as fast as one built
  from fluxdigits.layers. Elsewhere (an accelerator, canonical()) `fn` as it is."""

  @functools.wraps(fn)
  def formulated(*args):
    if lax_ops():
      return fn(*args)
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    return jax.tree.unflatten(jax.tree.structure(shapes), _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args)))

  return formulated


def _evaluate(jaxpr, consts, args) -> list:
  """jax.core.eval_jaxpr's loop, with `_formulation` standing in where it applies and jit calls inlined (the
  operations may be inside)."""
  env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
  read = lambda var: var.val if isinstance(var, jax.extend.core.Literal) else env[var]
  made = {}  # var -> how it was made, for the peepholes of _formulation
  for eqn in jaxpr.eqns:
    inputs = [read(var) for var in eqn.invars]
    outputs = _formulation(eqn, inputs, made)
    if outputs is None and eqn.primitive.name in ("jit", "pjit"):
      outputs = _evaluate(eqn.params["jaxpr"].jaxpr, eqn.params["jaxpr"].consts, inputs)
    elif outputs is None:
      with eqn.ctx.manager:
        outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(eqn.params))
      outputs = outputs if eqn.primitive.multiple_results else [outputs]
    env.update(zip(eqn.outvars, outputs))
  return [read(var) for var in jaxpr.outvars]


def _formulation(eqn, inputs, made: dict) -> list | None:
  """The outputs of a 3x3 or 1x1 NHWC convolution or a 2x2 max-pool as these layers compute them, or None. Two
  peepholes give flax's own layers the built-in models' forms: a convolution's bias added after it joins the
  patches' matmul (conv3x3), and a ReLU before a max-pool comes after it, on a quarter of the values (they commute).
  What they replace is computed too, unused: XLA drops it."""
  p, name = eqn.params, eqn.primitive.name
  output = eqn.outvars[0]
  kind = lambda var: "" if isinstance(var, jax.extend.core.Literal) else made.get(var, ("",))[0]
  if eqn.primitive is lax.conv_general_dilated_p:
    x, kernel = inputs
    plain = (
      p["dimension_numbers"] == _NHWC_HWIO
      and p["feature_group_count"] == p["batch_group_count"] == 1
      and p["lhs_dilation"] == p["rhs_dilation"] == (1, 1)
      and p["preferred_element_type"] is None
      and x.dtype == kernel.dtype
      and p["window_strides"][0] == p["window_strides"][1]
    )
    strides = p["window_strides"][0]
    if plain and kernel.shape[:2] == (3, 3):
      padding = next(
        (
          name
          for name in ("VALID", "SAME")
          if tuple(p["padding"]) == tuple(lax.padtype_to_pads(x.shape[1:3], (3, 3), (strides,) * 2, name))
        ),
        None,
      )
      if padding is not None:
        made[output] = ("conv3x3", (x, kernel, strides, padding))
        return [conv3x3(x, kernel, None, strides, padding)]
    if plain and kernel.shape[:2] == (1, 1) and all(pair == (0, 0) for pair in p["padding"]):
      return [conv1x1(x, kernel, strides)]
  elif name == "reshape" and inputs[0].ndim == 1 and p["new_sizes"] == (1, 1, 1, inputs[0].shape[0]):
    made[output] = ("bias", inputs[0])
  elif name == "add":
    kinds = [kind(var) for var in eqn.invars]
    if sorted(kinds) == ["bias", "conv3x3"]:
      (x, kernel, strides, padding), bias = (made[eqn.invars[kinds.index(kind)]][1] for kind in ("conv3x3", "bias"))
      if bias.dtype == x.dtype:
        return [conv3x3(x, kernel, bias, strides, padding)]
  elif name == "custom_jvp_call" and _is_relu(p["call_jaxpr"].jaxpr):
    made[output] = ("relu", inputs[0])
  elif eqn.primitive is lax.reduce_window_max_p:
    pooled_2x2 = (
      p["window_dimensions"] == p["window_strides"] == (1, 2, 2, 1)
      and p["base_dilation"] == p["window_dilation"] == (1, 1, 1, 1)
      and all(pair == (0, 0) for pair in p["padding"])
    )
    if pooled_2x2 and kind(eqn.invars[0]) == "relu":
      return [jax.nn.relu(max_pool_2x2(made[eqn.invars[0]][1]))]
    return [max_pool_2x2(inputs[0])] if pooled_2x2 else None
  return None


def _is_relu(jaxpr) -> bool:
  """Whether a custom_jvp function is jax.nn.relu (a jit named relu inside)."""
  return (
    len(jaxpr.eqns) == 1 and jaxpr.eqns[0].primitive.name in ("jit", "pjit") and jaxpr.eqns[0].params["name"] == "relu"
  )
