"""Each model of the zoo (tests/zoo/: Linen and NNX, written with flax's own layers, pooling called positionally,
strided convolutions with BatchNorm and a residual add, LayerNorm and GroupNorm, gelu and swish, Sequential, with
and without dropout) trains, resumes to the same figures, predicts its test files as evaluation classified them,
and exports to ONNX agreeing with JAX: in this process, on the folder of real digits."""

import csv
import pathlib

import numpy as np
import onnx
import pytest

from conftest import REPO, read_summary
from fluxdigits import export, predict, run
from test_any_flax_model import digits, folder_args  # noqa: F401 (a fixture)

ZOO = REPO / "tests" / "zoo"
MODELS = ["PooledCNN", "ResidualNet", "NormNet", "GeluSwishNet", "SequentialNet"]
POOLS = {"PooledCNN": "MaxPool", "SequentialNet": "MaxPool"}
QUIET = ["--config.report=false", "--config.tensorboard=false"]


def train(digits, model, workdir, epochs):
  assert run.main([*map(str, folder_args(digits, model, epochs)), "--workdir", str(workdir), *QUIET]) == 0


@pytest.mark.parametrize("kind", ["linen", "nnx"])
@pytest.mark.parametrize("name", MODELS)
def test_a_zoo_model_trains_resumes_predicts_and_exports(kind, name, digits, tmp_path, capsys):
  model = f"{ZOO / f'{kind}_models.py'}:{name}"
  train(digits, model, tmp_path / "whole", 2)
  train(digits, model, tmp_path / "resumed", 1)
  train(digits, model, tmp_path / "resumed", 2)
  assert "resuming from epoch 1" in capsys.readouterr().out
  whole, resumed = read_summary(tmp_path / "whole"), read_summary(tmp_path / "resumed")
  assert whole["test_accuracy"] > 0.2, whole  # chance: 10%
  for key in ("test_accuracy", "test_loss", "best_val_accuracy"):
    assert resumed[key] == whole[key], key

  assert predict.main([str(tmp_path / "whole"), str(digits / "test"), "--csv", str(tmp_path / "p.csv")]) == 0
  with open(tmp_path / "p.csv") as f:
    rows = list(csv.DictReader(f))
  right = np.mean([pathlib.Path(row["file"]).parent.name == row["predicted"] for row in rows])
  assert abs(right - whole["test_accuracy"]) <= 0.01

  path, error, checked = export.export(tmp_path / "whole", "onnx")
  assert error <= export.TOLERANCE and checked == 256
  operations = {node.op_type for node in onnx.load(path).graph.node}
  assert {"Conv", POOLS.get(name, "Conv")} <= operations, operations
