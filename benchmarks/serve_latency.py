"""Latency of one POST /predict to `python -m fluxdigits.serve`: a 28x28 MNIST test digit (PNG, taken as it is), and
a 280x280 drawing such as the page's canvas sends while the user draws (made into 28x28 by the digit reader).

  python benchmarks/serve_latency.py RUN [RUN ...] [--repeats 100]

Each run is served by the command itself in a fresh process on a free port; the client sends from this process on
one kept-alive connection, as the page does, one request at a time: 10 warm-up requests, then --repeats timed, from
the first byte sent to the whole answer read; median kept.
"""

import argparse
import datetime
import http.client
import io
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from step_throughput import device_name, write_record  # noqa: E402

WARMUP = 10


def digit_png() -> bytes:
  """The first MNIST test image as a 28x28 PNG, white on black: a file already in the dataset's format."""
  from PIL import Image

  from fluxdigits import data

  image = data.read_tfds_split("mnist", "test", os.environ.get("TFDS_DATA_DIR"), True, log=lambda *_: None).images[0]
  return png(Image.fromarray(image.squeeze(-1)))


def drawing_png() -> bytes:
  """A 7 in black on white, 280x280, strokes 18 px wide with round ends, as the page's canvas draws one."""
  from PIL import Image, ImageDraw

  image = Image.new("L", (280, 280), 255)
  ImageDraw.Draw(image).line([(70, 56), (210, 56), (112, 238)], fill=0, width=18, joint="curve")
  return png(image)


def png(image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()


def start_server(run):
  process = subprocess.Popen(
    [sys.executable, "-m", "fluxdigits.serve", str(run), "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT
  )
  line = process.stdout.readline()
  found = re.search(r"http://([^:/]+):(\d+)/", line)
  if not found:
    process.kill()
    raise SystemExit(f"{run}: the server did not start ({line!r})")
  return process, found.group(1), int(found.group(2))


def latencies_ms(host, port, name: str, data: bytes, repeats: int) -> list[float]:
  boundary = uuid.uuid4().hex
  body = (
    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
    f"Content-Type: image/png\r\n\r\n".encode()
    + data
    + f"\r\n--{boundary}--\r\n".encode()
  )
  headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
  connection = http.client.HTTPConnection(host, port, timeout=60)
  times = []
  for i in range(WARMUP + repeats):
    start = time.perf_counter()
    connection.request("POST", "/predict", body, headers)
    response = connection.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
      raise SystemExit(f"POST /predict of {name}: {response.status} {answer[:200]!r}")
    if i >= WARMUP:
      times.append(elapsed * 1e3)
  connection.close()
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs", nargs="+", help="finished run directories")
  parser.add_argument("--repeats", type=int, default=100)
  parser.add_argument("--tag", default="serve-latency")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args()
  inputs = {"digit 28x28": ("digit.png", digit_png()), "drawing 280x280": ("drawing.png", drawing_png())}
  results = []
  for run in args.runs:
    config = json.loads((pathlib.Path(run) / "config.json").read_text())
    process, host, port = start_server(run)
    try:
      for what, (name, data) in inputs.items():
        times = latencies_ms(host, port, name, data, args.repeats)
        results.append(
          {
            "run": pathlib.Path(run).name,
            "model": config.get("model.name"),
            "input": what,
            "bytes": len(data),
            "median_ms": statistics.median(times),
            "p90_ms": statistics.quantiles(times, n=10)[-1],
            "min_ms": min(times),
          }
        )
    finally:
      process.terminate()
      process.wait()
  record = {
    "device": device_name(),
    "date": datetime.date.today().isoformat(),
    "repeats": args.repeats,
    "client": "http.client in another process, one kept-alive connection, one request at a time",
    "results": results,
  }
  out = write_record(record, args.out, tag=args.tag)
  print(table([record]))
  print(f"-> {out}")


def table(records) -> str:
  rows = ["| run | model | input | median ms | p90 ms |", "|---|---|---|---:|---:|"]
  for record in records:
    for r in record["results"]:
      rows.append(f"| {r['run']} | {r['model']} | {r['input']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
