"""The package's shape: no import circles, and a single run's train step a few frames below the command."""

import ast
import inspect
import json
import pathlib

from fluxdigits import run, steps

PACKAGE = pathlib.Path(run.__file__).parent
EXPERIMENTS = PACKAGE.parent / "experiments"


def import_graph() -> dict[str, set[str]]:
  """Each fluxdigits module -> the fluxdigits modules it imports anywhere in its text (inside functions too)."""
  files = {
    ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): f
    for f in PACKAGE.rglob("*.py")
  }
  graph = {}
  for name, file in files.items():
    imported = set()
    for node in ast.walk(ast.parse(file.read_text())):
      if isinstance(node, ast.Import):
        imported |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        submodules = {f"{node.module}.{alias.name}" for alias in node.names} & files.keys()
        imported |= submodules or {node.module}
    # a module's own packages run first anyway: importing them closes no circle
    graph[name] = {m for m in imported & files.keys() if m != name and not name.startswith(m + ".")}
  return graph


def test_no_module_of_the_package_imports_itself_back():
  graph, done, path = import_graph(), set(), []

  def visit(module):
    path.append(module)
    for imported in sorted(graph[module]):
      assert imported not in path, f"import circle: {' -> '.join(path[path.index(imported) :] + [imported])}"
      if imported not in done:
        visit(imported)
    path.pop()
    done.add(module)

  assert len(graph) > 20 and graph["fluxdigits.run"]
  for module in sorted(graph):
    if module not in done:
      visit(module)


def test_a_single_run_reaches_its_train_step_within_seven_frames(idx_folder, tmp_path, monkeypatch):
  """run.main -> cli.main -> the command -> loop.train -> the compiled call's builder -> train_steps -> train_step,
  counting fluxdigits' own frames only (jax's tracing frames between them are not ours to flatten)."""
  depths, train_step = [], steps.train_step

  def probed_train_step(*args, **kwargs):
    ours = [frame for frame in inspect.stack() if pathlib.Path(frame.filename).is_relative_to(PACKAGE)]
    depths.append([frame.function for frame in ours])
    return train_step(*args, **kwargs)

  monkeypatch.setattr(steps, "train_step", probed_train_step)
  workdir = tmp_path / "run"
  code = run.main(
    [
      str(EXPERIMENTS / "mnist_mlp.py"),
      "--workdir",
      str(workdir),
      "--config.dataset.name=idx",
      f"--config.dataset.data_dir={idx_folder}",
      "--config.num_epochs=1",
      "--config.report=false",
    ]
  )
  assert code == 0
  assert json.loads((workdir / "summary.json").read_text())["epochs_run"] == 1
  chain = ["train_step"] + depths[0][1:]  # the probe's frame stands for the step's
  assert chain[-1] == "main" and len(chain) <= 7, chain
