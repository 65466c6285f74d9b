"""Exports hold the graphs users expect: the built-in models' ONNX files hold Conv and MaxPool (not the CPU training
forms) and agree with JAX; an operation ONNX cannot express is one line naming it."""

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from fluxdigits import config as configs, export, registry
from fluxdigits.errors import UserError


@pytest.mark.parametrize(
  "name, kwargs, shape, expected",
  [
    ("cnn", {}, (28, 28, 1), {"Conv", "MaxPool"}),
    ("cnn_deep", {}, (28, 28, 1), {"Conv", "MaxPool"}),
    ("resnet", {"depth": 20}, (32, 32, 3), {"Conv"}),
    ("airbench", {"width": 8}, (32, 32, 3), {"Conv", "MaxPool"}),
  ],
)
def test_a_built_in_model_s_onnx_graph_holds_conv_and_max_pool_and_agrees_with_jax(
  tmp_path, name, kwargs, shape, expected
):
  config = configs.defaults()
  config.model.name = name
  config.model.kwargs.update(kwargs)
  model = registry.create(configs.validate(config), 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
  variables = jax.tree.map(lambda v: v + 0.01 * jax.random.normal(jax.random.key(1), v.shape), variables)
  fn = lambda images: model.apply(variables, images, train=False)
  export.export_onnx(fn, shape, tmp_path / "model.onnx")
  operations = {node.op_type for node in onnx.load(tmp_path / "model.onnx").graph.node}
  assert expected <= operations and "GatherND" not in operations, operations  # GatherND: the CPU forms' windows
  images = np.random.default_rng(0).random((5, *shape), np.float32)
  np.testing.assert_allclose(export.run_onnx(tmp_path / "model.onnx", images), fn(images), atol=1e-4, rtol=1e-4)


def test_an_operation_onnx_cannot_express_is_one_line_naming_it(tmp_path):
  def fn(images):
    scale = jax.pure_callback(lambda: np.float32(2.0), jax.ShapeDtypeStruct((), jnp.float32))
    return images.reshape(images.shape[0], -1) * scale

  with pytest.raises(UserError, match=r"ONNX export cannot convert the model's pure_callback operation") as error:
    export.export_onnx(fn, (4, 4, 1), tmp_path / "model.onnx")
  assert "\n" not in str(error.value) and not (tmp_path / "model.onnx").exists()
