"""Shared test setup: where the real MNIST lies, and running the command line as a user does."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

# One JAX compilation cache for the session's processes, set before JAX starts: the suite trains the same models
# in many fresh processes, and each would compile their programs again.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(tempfile.gettempdir()) / "fluxdigits-tests-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from fluxdigits import cpu, workdir as workdirs  # noqa: E402 (after the cache's settings)

cpu.set_up()  # as the command lines set up the CPU before JAX starts

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
os.environ.setdefault("TFDS_DATA_DIR", str(SHARED / "tfds"))
IDX_DIR = pathlib.Path(os.environ.get("FLUXDIGITS_IDX_DIR", SHARED / "data" / "mnist-idx"))
EXPERIMENTS = REPO / "experiments"


@pytest.fixture(scope="session", autouse=True)
def real_mnist_present():
  if not (pathlib.Path(os.environ["TFDS_DATA_DIR"]) / "mnist").is_dir():
    pytest.exit(
      f"real MNIST for tfds not found in TFDS_DATA_DIR={os.environ['TFDS_DATA_DIR']}; "
      "set TFDS_DATA_DIR to the folder holding mnist/ (../shared/tfds in a checkout)",
      returncode=4,
    )


def module_command(module, *args) -> list[str]:
  """The argv of `python -m fluxdigits.MODULE ARGS`, with this interpreter."""
  return [sys.executable, "-m", f"fluxdigits.{module}", *map(str, args)]


def run_module(module, *args, env=None, timeout=900, cwd=REPO, **popen):
  """`python -m fluxdigits.MODULE ...` in a fresh process, as a user types it."""
  return subprocess.run(
    module_command(module, *args),
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, **(env or {})},
    cwd=cwd,
    **popen,
  )


def run_cli(*args, **kwargs):
  """`python -m fluxdigits.run ...` in a fresh process, as a user types it."""
  return run_module("run", *args, **kwargs)


def kill_once_written(args, path, what: str):
  """Starts `python -m fluxdigits.run ARGS`, kills it with SIGKILL once `path` (a checkpoint) exists, and checks it
  was still running then: the run waits there until the kill (workdir.HOLD_ENV), so it is alive whatever the load."""
  with tempfile.TemporaryDirectory() as folder:
    hold = pathlib.Path(folder) / "hold"
    hold.touch()
    env = {**os.environ, workdirs.HOLD_ENV: f"checkpoint:{hold}", workdirs.HOLD_AFTER_ENV: str(path)}
    process = subprocess.Popen(
      module_command("run", *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    deadline = time.time() + 300
    while not pathlib.Path(path).is_dir() and process.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert process.returncode == -signal.SIGKILL, f"{what} ended before it could be killed"


def signal_handlers_installed(pid: int) -> bool:
  """Whether the process catches SIGTERM: fluxdigits' handlers are in place (Python catches SIGINT from its start)."""
  caught = next(
    line for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigCgt:")
  )
  return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def read_summary(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "summary.json").read_text())


# --- the fast layer's data: made-up digits, in MNIST's files --------------------------------------

UNIT_TESTS = REPO / "tests" / "unit"
IMAGE_SIZE = 28


def pytest_collection_modifyitems(items):
  """tests/unit/ is the fast layer: `pytest -m fast` selects it, with the tests marked fast elsewhere."""
  for item in items:
    if UNIT_TESTS in pathlib.Path(item.fspath).parents:
      item.add_marker(pytest.mark.fast)


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """n (28, 28) uint8 images of 10 classes: class c is a bright bar in row band c, over noise. Learnable in steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.uint8)
  images = rng.integers(0, 60, (n, IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint8)
  for image, label in zip(images, labels):
    image[2 + 2 * label : 4 + 2 * label, 4:24] = 255
  return images, labels


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  """An IDX file of unsigned bytes, as MNIST's are."""
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def idx_folder(tmp_path_factory) -> pathlib.Path:
  """MNIST's four IDX files, as Kaggle ships them, holding synthetic_digits: 600 to train on, 200 to test."""
  folder = tmp_path_factory.mktemp("idx")
  for split, n, seed in (("train", 600, 0), ("t10k", 200, 1)):
    images, labels = synthetic_digits(n, seed)
    write_idx(folder / f"{split}-images-idx3-ubyte", images)
    write_idx(folder / f"{split}-labels-idx1-ubyte", labels)
  return folder
