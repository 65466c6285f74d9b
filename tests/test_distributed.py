"""A multi-process job on one machine: 2 processes x 1 CPU device each, as 2 hosts would run it.

The processes talk over localhost (jax.distributed, gloo collectives); the figures must be those of
1 process with 2 devices, across a kill -9 and a resume.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest
from conftest import EXPERIMENTS, REPO, module_command, read_summary, run_cli

from fluxdigits import tensorboard, workdir as workdirs

ARGS = [
  str(EXPERIMENTS / "mnist_cnn.py"),
  "--config.num_epochs=3",
  "--config.dataset.max_train_examples=2000",
  "--config.report=false",
]
ONE_DEVICE_EACH = {"XLA_FLAGS": "", "JAX_NUM_CPU_DEVICES": "1"}
HEARTBEAT_SECONDS = 10


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_job(workdir, hold=None, point="checkpoint", args=ARGS):
  """Both processes of the job: process 0 told by flags, process 1 by environment variables. With `hold`, each
  waits at `point` (after its checkpoint saves) while that file exists (workdir.HOLD_ENV)."""
  port = free_port()
  flags = ["--coordinator", f"localhost:{port}", "--num_processes", "2", "--process_id", "0"]
  variables = {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  command = module_command("run", *args, "--workdir", workdir, "--heartbeat_timeout", HEARTBEAT_SECONDS)
  # Unbuffered: a process that jax.distributed aborts still shows what it printed.
  env_all = {
    **os.environ,
    **ONE_DEVICE_EACH,
    "PYTHONUNBUFFERED": "1",
    **({workdirs.HOLD_ENV: f"{point}:{hold}"} if hold else {}),
  }
  return [
    subprocess.Popen(
      command + extra, cwd=REPO, env={**env_all, **env}, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    for extra, env in ((flags, {}), ([], variables))
  ]


def wait_for_checkpoint(workdir, epoch, job):
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / str(epoch)).is_dir():
    assert time.time() < deadline and all(p.poll() is None for p in job), [p.communicate() for p in job]
    time.sleep(0.01)


def finish(job, timeout=300):
  return [(p.wait(timeout), *p.communicate()) for p in job]


def metrics_epochs(workdir):
  return [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_two_devices_across_a_kill_and_a_resume(tmp_path):
  one = run_cli(*ARGS, "--workdir", tmp_path / "one", env={"XLA_FLAGS": "", "JAX_NUM_CPU_DEVICES": "2"})
  assert one.returncode == 0, one.stderr

  # kill -9 of process 1: process 0 stops by itself, with a message, well within the heartbeat timeout.
  workdir, hold = tmp_path / "job", tmp_path / "hold"
  hold.touch()  # both processes wait after their first checkpoint: alive when the kill comes, whatever the load
  job = start_job(workdir, hold)
  wait_for_checkpoint(workdir, 1, job)
  job[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  hold.unlink()  # process 0 goes on, into a collective with the dead process
  (rc, out, err), (rc_killed, _, _) = finish(job)
  assert time.time() - killed_at < HEARTBEAT_SECONDS + 20
  assert rc_killed == -signal.SIGKILL and rc != 0 and "epoch   1/3" in out
  assert "another process of the job has probably died" in err or "another task died" in err, err[-2000:]
  assert not (workdir / "summary.json").exists()

  resumed = start_job(workdir)
  (rc0, out0, err0), (rc1, out1, err1) = finish(resumed)
  assert rc0 == 0 and rc1 == 0, err0[-2000:] + err1[-2000:]
  assert "resuming from epoch" in out0 and "test accuracy" in out0
  assert "epoch" not in out1 + err1 and "test accuracy" not in out1  # only process 0 prints: lines and progress bar
  assert metrics_epochs(workdir) == [1, 2, 3]
  # TensorBoard's event files, named by the process that wrote them: process 0 of each start, no other.
  writers = {path.name.rsplit(".", 1)[1] for path in (workdir / tensorboard.FOLDER).glob("events.out.tfevents.*")}
  assert writers == {str(job[0].pid), str(resumed[0].pid)}

  a, b = read_summary(tmp_path / "one"), read_summary(workdir)
  assert a["device"] == "2x cpu (cpu)" and b["device"] == "2x cpu (cpu) in 2 processes"
  assert b["test_examples"] == a["test_examples"] == 10_000 and b["best_epoch"] == a["best_epoch"]
  assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
  assert abs(b["test_accuracy"] - a["test_accuracy"]) <= 0.0005  # at most 5 of 10,000 predictions flip
  assert b["best_val_accuracy"] == pytest.approx(a["best_val_accuracy"], abs=0.003)


def test_sigterm_to_one_process_stops_the_job_together_and_it_resumes_to_the_same_figures(tmp_path):
  args = [*ARGS, "--config.num_epochs=1"]
  whole = finish(start_job(tmp_path / "whole", args=args))
  assert [rc for rc, _, _ in whole] == [0, 0], whole[0][2][-2000:]

  workdir, hold = tmp_path / "job", tmp_path / "hold"
  hold.touch()  # both processes wait after their first train call: compiled and training when the signal comes
  job = start_job(workdir, hold, "call", args)
  deadline = time.time() + 300
  while not pathlib.Path(f"{hold}.held").exists():
    assert time.time() < deadline and all(p.poll() is None for p in job), [p.communicate() for p in job]
    time.sleep(0.01)
  job[1].send_signal(signal.SIGTERM)  # the process that does not speak for the job
  hold.unlink()
  (rc0, _, err0), (rc1, _, _) = finish(job, timeout=60)
  assert rc0 == rc1 == 143, err0[-2000:]
  assert "SIGTERM: stopped; epoch 1 is saved at its step" in err0

  resumed = finish(start_job(workdir, args=args))
  assert [rc for rc, _, _ in resumed] == [0, 0], resumed[0][2][-2000:]
  assert "resuming epoch 1 at its step" in resumed[0][1]
  figures = lambda summary: {k: v for k, v in summary.items() if not k.endswith("seconds")}
  assert figures(read_summary(workdir)) == figures(read_summary(tmp_path / "whole"))


def test_a_refused_workdir_stops_every_process_with_one_line(tmp_path):
  workdir = tmp_path / "other"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("a folder of the user's, not a run")
  results = finish(start_job(workdir), timeout=120)
  assert [rc for rc, _, _ in results] == [2, 2]
  assert "is not a fluxdigits run" in results[0][2].splitlines()[-1]
  assert results[1][2].strip().splitlines()[-1] == (
    "error: process 0 stopped with an error (see its output); fix it and start all processes again"
  )


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--num_processes", "two"], "num_processes must be an integer, got 'two'"),
    (["--num_processes", "2", "--process_id", "0"], "could not join the multi-process job"),
  ],
)
def test_a_job_that_cannot_start_is_one_line_and_exit_code_2(tmp_path, flags, message):
  result = run_cli(*ARGS, "--workdir", tmp_path / "run", *flags, env=ONE_DEVICE_EACH)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr
