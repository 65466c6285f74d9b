"""notebooks/colab.ipynb, executed top to bottom on the CPU with tiny parameters, as CI runs it."""

import json

import nbformat
from conftest import REPO, SHARED
from nbclient import NotebookClient

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"


def with_parameters(notebook, **values):
  """papermill's convention: a cell of new values right after the one tagged 'parameters'."""
  tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  for name in values:
    assert f"\n{name} = " in "\n" + notebook.cells[tagged[0]].source, f"{name} is not a parameter of the notebook"
  source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
  notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
  return notebook


def test_colab_notebook_runs_top_to_bottom_on_cpu(tmp_path):
  notebook = with_parameters(
    nbformat.read(NOTEBOOK, as_version=4),
    REPO_DIR=str(REPO),
    INSTALL=False,
    RUNS_DIR=str(tmp_path),
    MNIST_OVERRIDES="--config.num_epochs=1 --config.dataset.max_train_examples=2000",
    CIFAR10="no",
    TUNE_TRIALS=2,
    TUNE_OVERRIDES="--config.num_epochs=1 --config.dataset.max_train_examples=1000",
    PHOTO=str(sorted((SHARED / "data" / "real-digits").glob("7_*"))[0]),
  )
  NotebookClient(
    notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()

  summary = json.loads((tmp_path / "colab_mnist_cnn" / "summary.json").read_text())
  assert summary["epochs_run"] == 1 and summary["test_examples"] == 10_000 and summary["test_accuracy"] > 0.85
  outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
  assert sum("image/png" in output.get("data", {}) for output in outputs) >= 3  # curves, confusion matrix, mistakes
  shown = "".join(output.get("text", "") + output.get("data", {}).get("text/markdown", "") for output in outputs)
  assert f"test accuracy **{summary['test_accuracy']:.2%}**" in shown
  assert "runtime: cpu" in shown and "CIFAR-10 skipped" in shown
