"""The speed of this checkout against an earlier commit's, alternated in one sitting: did a change keep the speed?

  python benchmarks/before_after.py REF [--rows 2,4] [--runs mnist_cnn,mnist_cnn_deep] [--rounds 3] [--tag NAME]

REF is checked out into a scratch git worktree (with the oneDNN extension this checkout built). Each round runs, in
each tree, one after another in fresh processes: `model_throughput.py --one fluxdigits:ROW` for each of --rows (the
compiled train call alone, as in the throughput table), and for each of --runs a whole
`python -m fluxdigits.run experiments/NAME.py` of --epochs on all of MNIST (train images/s from its summary: the
training loop as a user runs it, its calls, progress and checkpoints included). The JSON goes to benchmarks/results/.
Run it with nothing else on the machine (`flock` the lock file other timings use).
"""

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from step_throughput import ROOT, device_name, write_record  # noqa: E402


def run_in(tree: pathlib.Path, command: list) -> str:
  env = {**os.environ, "PYTHONPATH": str(tree)}
  return subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True, text=True).stdout


def throughput(tree, row) -> dict:
  out = run_in(tree, [sys.executable, "benchmarks/model_throughput.py", "--one", f"fluxdigits:{row}"])
  return json.loads(out.strip().splitlines()[-1])


def whole_run(tree, experiment, epochs) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    run_in(
      tree,
      [
        sys.executable,
        "-m",
        "fluxdigits.run",
        f"experiments/{experiment}.py",
        "--workdir",
        workdir,
        f"--config.num_epochs={epochs}",
        "--config.report=false",
        "--config.tensorboard=false",
      ],
    )
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    batch_size = json.loads((pathlib.Path(workdir) / "config.json").read_text())["batch_size"]
  return {
    "train_images_per_s": summary["train_steps"] * batch_size / summary["train_seconds"],
    "compile_s": summary["compile_seconds"],
    "test_accuracy": summary["test_accuracy"],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("ref", help="the earlier commit")
  parser.add_argument("--rows", default="2,4", help="model_throughput.py rows (0-based), or ''")
  parser.add_argument("--runs", default="mnist_cnn,mnist_cnn_deep", help="experiments run whole, or ''")
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--tag", default="before-after")
  args = parser.parse_args()
  commit = subprocess.run(
    ["git", "rev-parse", "--short", args.ref], cwd=ROOT, check=True, capture_output=True, text=True
  )
  before = pathlib.Path(tempfile.mkdtemp()) / "before"
  subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before), args.ref], cwd=ROOT, check=True)
  try:
    for built in ROOT.glob("fluxdigits/**/*.so"):
      shutil.copy2(built, before / built.relative_to(ROOT))
    trees = {commit.stdout.strip(): before, "this checkout": ROOT}
    runs = []
    for round_ in range(1, args.rounds + 1):
      for row in filter(None, args.rows.split(",")):
        for code, tree in trees.items():
          runs.append({"what": f"model_throughput row {row}", "round": round_, "code": code, **throughput(tree, row)})
          print(json.dumps(runs[-1]), flush=True)
      for experiment in filter(None, args.runs.split(",")):
        for code, tree in trees.items():
          figures = whole_run(tree, experiment, args.epochs)
          runs.append({"what": f"{experiment}, {args.epochs} epochs", "round": round_, "code": code, **figures})
          print(json.dumps(runs[-1]), flush=True)
  finally:
    subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
  record = {
    "what": f"before_after.py {' '.join(sys.argv[1:])}: this checkout against {args.ref}, alternated in one sitting",
    "device": device_name(),
    "date": datetime.date.today().isoformat(),
    "runs": runs,
  }
  print(write_record(record, str(ROOT / "benchmarks" / "results"), tag=args.tag))


if __name__ == "__main__":
  main()
