"""A workdir is one run, held by one process, never a user's other files: the lock, --restart, config.json checks.

These use fake runs (a config.json and a checkpoints/1 folder): what is checked happens before any training.
Two real processes on one workdir are in test_faults.py.
"""

import json
import os
import pathlib

import pytest
from conftest import EXPERIMENTS, run_cli

from fluxdigits import config as configs, workdir as workdirs
from fluxdigits.errors import UserError

CNN = str(EXPERIMENTS / "mnist_cnn.py")


def cnn_config(*overrides):
  return configs.validate(configs.override(configs.load(CNN), list(overrides)))


def fake_run(folder: pathlib.Path, config=None) -> pathlib.Path:
  """A folder as a run with one checkpoint leaves it."""
  (folder / "checkpoints" / "1").mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(configs.flatten(config or cnn_config())))
  (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
  return folder


def test_a_held_workdir_refuses_a_second_holder_naming_the_pid(tmp_path):
  with workdirs.open_run(tmp_path / "run", cnn_config()):
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(UserError, match=rf"in use by another fluxdigits process \(pid {os.getpid()}\)"):
      with workdirs.open_run(tmp_path / "run", cnn_config()):
        pass
    with pytest.raises(UserError, match="in use by another fluxdigits process"):  # --restart waits its turn too
      with workdirs.open_run(tmp_path / "run", cnn_config(), restart=True):
        pass
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing was moved aside
  with workdirs.open_run(tmp_path / "run", cnn_config()):  # released at the end of the run
    pass


def test_restarts_in_the_same_second_each_get_their_own_folder(tmp_path):
  run = tmp_path / "run"
  for attempt in range(3):
    fake_run(run)
    (run / "metrics.jsonl").write_text(f'{{"attempt": {attempt}}}\n')
    with workdirs.open_run(run, cnn_config(), restart=True, log=lambda _: None):
      pass
  aside = sorted(p for p in tmp_path.iterdir() if p.name.startswith("run.old-"))
  assert len(aside) == 3, aside
  # Each old run is whole and beside the others, never moved inside one of them.
  assert sorted((p / "metrics.jsonl").read_text() for p in aside) == [f'{{"attempt": {i}}}\n' for i in range(3)]
  assert all({"checkpoints", "config.json", "metrics.jsonl"} <= {q.name for q in p.iterdir()} for p in aside)
  assert not any(q.name.startswith("run.old-") for p in aside for q in p.iterdir())


def test_restart_never_moves_the_current_directory(tmp_path, monkeypatch):
  fake_run(tmp_path / "run")
  monkeypatch.chdir(tmp_path / "run")
  with pytest.raises(UserError, match="holds the current directory"):
    with workdirs.open_run(".", cnn_config(), restart=True):
      pass
  assert (tmp_path / "run" / "config.json").is_file()


@pytest.mark.parametrize("restart", [False, True])
def test_a_folder_that_is_not_a_run_is_left_untouched(tmp_path, restart):
  mine = tmp_path / "thesis"
  mine.mkdir()
  (mine / "chapter1.tex").write_text("precious")
  with pytest.raises(UserError, match=r"is not a fluxdigits run \(it holds chapter1.tex\) and is left untouched"):
    with workdirs.open_run(mine, cnn_config(), restart=restart):
      pass
  assert [p.name for p in tmp_path.iterdir()] == ["thesis"] and [p.name for p in mine.iterdir()] == ["chapter1.tex"]


def test_impossible_workdirs_are_one_line_errors(tmp_path):
  (tmp_path / "a-file").write_text("")
  for workdir, message in (
    (tmp_path / "a-file", "is a file, not a folder"),
    (tmp_path / "a-file" / "run", "cannot create the workdir"),
    (pathlib.Path("/proc/fluxdigits-run"), "cannot create the workdir"),
  ):
    with pytest.raises(UserError, match=message):
      with workdirs.open_run(workdir, cnn_config()):
        pass


def test_a_run_that_failed_before_training_does_not_block_the_corrected_command(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(configs.flatten(cnn_config("batch_size=100000"))))
  with workdirs.open_run(run, cnn_config()):  # no checkpoint: nothing was trained with the old config
    pass


def test_another_config_is_refused_when_checkpoints_exist(tmp_path):
  run = fake_run(tmp_path / "run")
  with pytest.raises(UserError, match=r"another config: batch_size \(32 -> 64\)"):
    with workdirs.open_run(run, cnn_config("batch_size=64")):
      pass
  with workdirs.open_run(run, cnn_config("num_epochs=9", "dataset.data_dir=/elsewhere")):  # resumable changes
    pass


@pytest.mark.parametrize(
  "content, message",
  [
    (b"\x89PNG\r\n\x1a\n\x00\xff", "is unreadable (UnicodeDecodeError"),
    (b"[1, 2]", "holds list, not a JSON object"),
    (b"null", "holds NoneType, not a JSON object"),
    (b"{broken", "is unreadable (JSONDecodeError"),
    (None, "is a folder"),
  ],
)
def test_a_damaged_config_json_is_a_one_line_error(tmp_path, content, message):
  run = fake_run(tmp_path / "run")
  (run / "config.json").unlink()
  if content is None:
    (run / "config.json").mkdir()
  else:
    (run / "config.json").write_bytes(content)
  with pytest.raises(UserError, match=message.replace("(", r"\(")):
    with workdirs.open_run(run, cnn_config()):
      pass


def test_cli_refuses_a_non_run_folder_in_one_line(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  result = run_cli(CNN, "--workdir", tmp_path, "--restart")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
    f"error: {tmp_path} is not a fluxdigits run (it holds notes.txt) and is left untouched; "
    "pass a new or empty --workdir"
  ]
  assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
