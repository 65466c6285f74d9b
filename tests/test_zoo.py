"""Each model of the zoo (tests/zoo/: Linen and NNX, written with flax's own layers, pooling called positionally,
strided convolutions with BatchNorm and a residual add, LayerNorm and GroupNorm, gelu and swish, Sequential, with
and without dropout) trains, predicts its test files as evaluation classified them, and exports to ONNX agreeing
with JAX: in this process, on the folder of real digits. (Resuming Linen and NNX models, to the uninterrupted run's
figures, is shown in test_your_model_and_data.py and test_any_flax_model.py.)"""

import csv
import pathlib

import numpy as np
import onnx
import pytest
from conftest import REPO, read_summary
from test_any_flax_model import digits, folder_args  # noqa: F401 (a fixture)

from fluxdigits import export, predict, run

ZOO = REPO / "tests" / "zoo"
MODELS = ["PooledCNN", "ResidualNet", "NormNet", "GeluSwishNet", "SequentialNet"]
POOLS = {"PooledCNN": "MaxPool", "SequentialNet": "MaxPool"}
QUIET = ["--config.report=false", "--config.tensorboard=false"]


@pytest.mark.parametrize("kind", ["linen", "nnx"])
@pytest.mark.parametrize("name", MODELS)
def test_a_zoo_model_trains_predicts_and_exports(kind, name, digits, tmp_path):  # noqa: F811 (the imported fixture)
  model = f"{ZOO / f'{kind}_models.py'}:{name}"
  run_dir = tmp_path / "run"
  assert run.main([*map(str, folder_args(digits, model, 2)), "--workdir", str(run_dir), *QUIET]) == 0
  summary = read_summary(run_dir)
  assert summary["epochs_run"] == 2 and summary["test_accuracy"] > 0.2, summary  # chance: 10%

  assert predict.main([str(run_dir), str(digits / "test"), "--csv", str(tmp_path / "p.csv")]) == 0
  with open(tmp_path / "p.csv") as f:
    rows = list(csv.DictReader(f))
  right = np.mean([pathlib.Path(row["file"]).parent.name == row["predicted"] for row in rows])
  assert abs(right - summary["test_accuracy"]) <= 0.01

  path, error, checked = export.export(run_dir, "onnx")
  assert error <= export.TOLERANCE and checked == 256
  operations = {node.op_type for node in onnx.load(path).graph.node}
  assert {"Conv", POOLS.get(name, "Conv")} <= operations, operations
