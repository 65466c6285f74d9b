"""Faults from outside a run, with real processes: a second process on the workdir, SIGTERM and Ctrl-C,
a full disk, an exploding loss. Each must end in one clear line and lose nothing already trained."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import time

import pytest
from conftest import EXPERIMENTS, REPO, module_command, read_summary, run_cli, signal_handlers_installed

from fluxdigits import workdir as workdirs

MLP = str(EXPERIMENTS / "mnist_mlp.py")
TINY = ["--config.dataset.max_train_examples=2000", "--config.dataset.max_test_examples=2000", "--config.report=false"]


def metrics_epochs(workdir):
  return [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def start(*args, env=None):
  return subprocess.Popen(
    module_command("run", *args),
    cwd=REPO,
    text=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    env={**os.environ, **(env or {})},
  )


def wait_for(condition, process, timeout=300):
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, f"the run ended first: {process.communicate()}"
    assert time.time() < deadline, "timed out"
    time.sleep(0.02)


def assert_one_error_line(stderr, *fragments):
  assert "Traceback" not in stderr, stderr
  last = stderr.strip().splitlines()[-1]
  assert all(f in last for f in fragments), last


def test_a_second_process_on_a_workdir_is_refused_and_the_first_run_is_unharmed(tmp_path):
  workdir, hold = tmp_path / "run", tmp_path / "hold"
  hold.touch()  # the first run waits, holding its lock, until this file is gone: alive whatever the load
  first = start(MLP, "--workdir", workdir, "--config.num_epochs=3", *TINY, env={workdirs.HOLD_ENV: f"lock:{hold}"})
  lock = workdir / ".lock"
  wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first)
  for extra in ([], ["--restart"]):  # started beside it, or trying to move it aside under its feet
    second = run_cli(MLP, "--workdir", workdir, "--config.num_epochs=3", *TINY, *extra)
    assert second.returncode == 2
    assert_one_error_line(second.stderr, f"in use by another fluxdigits process (pid {first.pid})", "--workdir")
  assert first.poll() is None
  hold.unlink()
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err
  assert metrics_epochs(workdir) == [1, 2, 3] and read_summary(workdir)["epochs_run"] == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_sigterm_mid_training_stops_cleanly_and_the_same_command_resumes(tmp_path):
  workdir, hold = tmp_path / "run", tmp_path / "hold"
  args = [MLP, "--workdir", workdir, "--config.num_epochs=12", *TINY]
  hold.touch()  # the run waits after each checkpoint while this exists: alive when the signal comes
  run = start(*args, env={workdirs.HOLD_ENV: f"checkpoint:{hold}"})
  wait_for(lambda: (workdir / "checkpoints" / "1").is_dir(), run)
  run.send_signal(signal.SIGTERM)
  _, err = run.communicate(timeout=120)
  assert run.returncode == 143
  assert_one_error_line(err, "SIGTERM: stopped", "resume with python -m fluxdigits.run", "--workdir")
  assert not (workdir / "summary.json").exists()
  resumed = run_cli(*args)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from epoch" in resumed.stdout
  assert metrics_epochs(workdir) == list(range(1, 13))


def test_sigterm_mid_epoch_stops_within_seconds_and_resumes_to_the_uninterrupted_summary(tmp_path):
  """A model slow per step, its epoch once a single compiled call (steps_per_call as cifar10_fast's): the signal is
  answered at the next call, a second or so, with the place in the epoch saved, and the resumed run ends as if never
  stopped."""
  args = [
    str(EXPERIMENTS / "mnist_resnet.py"),
    "--config.num_epochs=1",
    "--config.dataset.max_train_examples=3200",
    "--config.validation_fraction=0",
    "--config.steps_per_call=2000",
    *TINY[1:],
  ]
  hold = tmp_path / "hold"
  hold.touch()  # the run waits after its first call while this exists: trained, compiled, and alive
  run = start(*args, "--workdir", tmp_path / "cut", env={workdirs.HOLD_ENV: f"call:{hold}"})
  wait_for(lambda: pathlib.Path(f"{hold}.held").exists(), run)
  hold.unlink()
  time.sleep(1)  # into the second call, of about a second's steps: the signal comes while one runs
  asked = time.perf_counter()
  run.send_signal(signal.SIGTERM)
  _, err = run.communicate(timeout=120)
  waited = time.perf_counter() - asked
  assert run.returncode == 143, err
  assert waited < 10, f"stopped {waited:.1f}s after SIGTERM"
  assert_one_error_line(err, "SIGTERM: stopped; epoch 1 is saved at its step", "resume with python -m fluxdigits.run")
  resumed = run_cli(*args, "--workdir", tmp_path / "cut")
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming epoch 1 at its step" in resumed.stdout
  whole = run_cli(*args, "--workdir", tmp_path / "whole")
  assert whole.returncode == 0, whole.stderr
  figures = lambda summary: {k: v for k, v in summary.items() if not k.endswith("seconds")}
  assert figures(read_summary(tmp_path / "cut")) == figures(read_summary(tmp_path / "whole"))
  assert not (tmp_path / "cut" / workdirs.WITHIN_EPOCH).exists()  # the finished run holds all of it


def test_checkpoint_every_minutes_saves_the_place_a_kill_9_resumes_from(tmp_path):
  workdir, hold = tmp_path / "run", tmp_path / "hold"
  # Calls of a few steps, the place saved before each: a kill lands mid-epoch, after a save.
  args = [MLP, "--workdir", workdir, "--config.num_epochs=1", "--config.dataset.max_train_examples=20000"]
  args += ["--config.seconds_per_call=0.02", "--config.checkpoint.every_minutes=0.0001", "--config.report=false"]
  hold.touch()
  run = start(*args, env={workdirs.HOLD_ENV: f"call:{hold}"})
  wait_for(lambda: pathlib.Path(f"{hold}.held").exists(), run)
  hold.unlink()
  saved = workdir / workdirs.WITHIN_EPOCH
  wait_for(lambda: any(p.name.isdigit() for p in saved.iterdir()), run)
  run.send_signal(signal.SIGKILL)
  run.wait()
  resumed = run_cli(*args)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming epoch 1 at its step" in resumed.stdout
  assert metrics_epochs(workdir) == [1] and not saved.exists()


def test_ctrl_c_during_startup_and_compiling_is_a_clean_stop(tmp_path):
  args = [MLP, "--workdir", tmp_path / "run", "--config.num_epochs=1", *TINY]
  early = start(*args)
  wait_for(lambda: signal_handlers_installed(early.pid), early)  # its first act; the imports of JAX follow
  early.send_signal(signal.SIGINT)
  _, err = early.communicate(timeout=120)
  assert early.returncode == 130
  assert_one_error_line(err, "SIGINT: stopped")

  hold = tmp_path / "hold"
  hold.touch()  # were compiling done before the signal, the run would wait at its first checkpoint, not finish
  compiling = start(*args, env={workdirs.HOLD_ENV: f"checkpoint:{hold}"})
  for line in compiling.stdout:
    if line.startswith("compiling"):
      compiling.send_signal(signal.SIGINT)
      break
  _, err = compiling.communicate(timeout=120)
  assert compiling.returncode == 130
  assert_one_error_line(err, "SIGINT: stopped")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a small tmpfs")
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
  disk = tmp_path / "disk"
  disk.mkdir()
  command = module_command("run", MLP, "--workdir", disk / "run", "--config.num_epochs=2", *TINY)
  # A 2.5 MB disk holds one MLP checkpoint (1.6 MB), not two; then the disk grows and the run resumes.
  script = (
    f"mount -t tmpfs -o size=2500k tmpfs {disk} || exit 99\n"
    f"{subprocess.list2cmdline(command)} > {tmp_path}/full.out 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc\n"
    f"ls {disk}/run/checkpoints > {tmp_path}/kept\n"
    f"mount -o remount,size=64m {disk}\n"
    f"{subprocess.list2cmdline(command)} > {tmp_path}/resumed.out 2> {tmp_path}/resumed.err; "
    f"echo $? > {tmp_path}/resumed.rc\n"
  )
  done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=REPO, timeout=600)
  if done.returncode == 99:
    pytest.skip("this machine allows no tmpfs mount in a user namespace")
  full_err = (tmp_path / "full.err").read_text()
  assert (tmp_path / "full.rc").read_text().strip() == "2", full_err
  assert_one_error_line(
    full_err,
    "cannot write a checkpoint in",
    "No space left on device",
    "it needs about 2 MB",
    "the checkpoints kept are [1]",
    "re-run the same command to resume",
  )
  assert (tmp_path / "kept").read_text().split()[0] == "1"
  assert (tmp_path / "resumed.rc").read_text().strip() == "0", (tmp_path / "resumed.err").read_text()
  assert "resuming from epoch 1" in (tmp_path / "resumed.out").read_text()


def test_an_exploding_loss_stops_with_advice(tmp_path):
  result = run_cli(
    MLP, "--workdir", tmp_path / "run", "--config.num_epochs=2", "--config.optimizer.learning_rate=1e4", *TINY
  )
  assert result.returncode == 1
  assert_one_error_line(result.stderr, "error: loss", "lower optimizer.learning_rate (now 10000)")
  assert not (tmp_path / "run" / "summary.json").exists()
