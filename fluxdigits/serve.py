"""A demo page and an HTTP endpoint for a finished run.

python -m fluxdigits.serve RUN [--host 127.0.0.1] [--port 8000] [--max-mb 10] [--top 3]

http://HOST:PORT/ is a page to draw a digit on (runs that read digits) or to drop an image file on, showing the input
as the model saw it and the top classes; GET /info gives the run's dataset, classes, input shape and test accuracy;
POST /predict takes one or more image files (multipart form fields named `file`) and returns the probabilities as JSON.
Files are made into inputs by predict's own code (Classifier.prepare), so the answers are `fluxdigits.predict`'s.
Only the bytes a client sends are read: no request names a file on the server's disk. Ctrl-C stops it.
Needs the serve extra: pip install -e ".[serve]".
"""

import argparse
import base64
import io
import os
import pathlib
import socket
import sys
import warnings

import numpy as np
from PIL import Image

from fluxdigits import cli, images as image_files
from fluxdigits.errors import UserError

USAGE = "python -m fluxdigits.serve RUN [--host 127.0.0.1] [--port 8000] [--max-mb 10] [--top 3]"
MAX_FILES = 64  # image files in one POST /predict
MAX_PIXELS = 50_000_000  # an upload's decoded size: a 10 MB PNG of one colour can hold gigapixels
EXTRA = 'pip install -e ".[serve]"'


class Upload(io.BytesIO):
  """An uploaded file's bytes; str() is the client's name for it, which error lines name."""

  def __init__(self, data: bytes, name: str):
    super().__init__(data)
    self.name = name

  def __str__(self):
    return self.name


class TooLarge(Exception):
  pass


class Model:
  """The run behind the endpoint: its classifier (predict's), what /info tells, and its report's files."""

  def __init__(self, workdir, top: int):
    from fluxdigits import report
    from fluxdigits.predict import load_classifier

    self.classifier = load_classifier(workdir)
    self.workdir = pathlib.Path(workdir)
    self.name = self.workdir.resolve().name
    self.top = min(top, len(self.classifier.class_names))
    self.summary = report.read_run(self.workdir).summary
    self.photos = image_files.preparation(self.classifier.config.dataset.photos, self.classifier.image_shape)
    folder = self.workdir / "report"
    # Fixed at start: a request picks one of these names, never a path of its own.
    self.report_files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}

  def info(self, max_bytes: int) -> dict:
    return {
      "run": self.name,
      "dataset": self.classifier.dataset,
      "classes": list(self.classifier.class_names),
      "input_shape": list(self.classifier.image_shape),
      "test_accuracy": self.summary.get("test_accuracy"),
      "photos": self.photos,
      "draw": self.photos == "digit",  # the page's canvas: digits drawn are read as MNIST was made
      "top": self.top,
      "max_upload_bytes": max_bytes,
      "max_files": MAX_FILES,
      "report": "report/index.html" if "index.html" in self.report_files else None,
    }

  def predict(self, uploads: list[Upload]) -> dict:
    """The predictions of uploaded files, as POST /predict answers; a file that is no usable image is a UserError."""
    for upload in uploads:
      _check_pixels(upload)
    inputs = np.stack([self.classifier.prepare(upload) for upload in uploads])
    probs = self.classifier.predict(inputs)
    names = self.classifier.class_names
    predictions = []
    for upload, model_input, p in zip(uploads, inputs, probs):
      order = np.argsort(-p)[: self.top]
      predictions.append(
        {
          "file": upload.name,
          "class": names[order[0]],
          "probability": float(p[order[0]]),
          "top": [{"class": names[i], "probability": float(p[i])} for i in order],
          "probabilities": {name: float(q) for name, q in zip(names, p)},
          "input": png_data_url(model_input),
        }
      )
    return {"run": self.name, "predictions": predictions}


def _check_pixels(upload: Upload):
  """Refuses an image whose header promises more than MAX_PIXELS, before anything decodes it."""
  limit = f"over this server's limit of {MAX_PIXELS // 1_000_000} megapixels"
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(upload) as image:
        width, height = image.size
  except Image.DecompressionBombError:
    raise UserError(f"{upload}: {limit}") from None
  except Exception:  # not an image: prepare() says so in its own words
    return
  finally:
    upload.seek(0)
  if width * height > MAX_PIXELS:
    raise UserError(f"{upload}: {width}x{height} pixels, {limit}")


def png_data_url(model_input: np.ndarray) -> str:
  """The model's uint8 input as a PNG data URL: its pixels as they are, as `predict --show` draws them."""
  buffer = io.BytesIO()
  Image.fromarray(model_input.squeeze(-1) if model_input.shape[-1] == 1 else model_input).save(buffer, "PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def app(model: Model, max_bytes: int):
  """The Starlette application: the page, /info, /predict and the run's report."""
  import anyio
  from starlette.applications import Starlette
  from starlette.exceptions import HTTPException
  from starlette.requests import Request
  from starlette.responses import FileResponse, HTMLResponse, JSONResponse
  from starlette.routing import Route

  # Preparing images is CPU work: more threads than cores would only hold more images in memory.
  limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 1))
  limit_text = f"{max_bytes / 2**20:g} MB"

  def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)

  async def page(request):
    return HTMLResponse(PAGE)

  async def info(request):
    return JSONResponse(model.info(max_bytes))

  async def report(request):
    path = model.report_files.get(request.path_params["name"])
    if path is None:
      return error(404, f"no such file in {model.name}'s report")
    return FileResponse(path)

  async def predict(request):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
      return error(413, f"the upload is {int(declared) / 2**20:.1f} MB, over this server's limit of {limit_text}")
    received = 0

    async def receive():  # bodies sent without a length are counted as they come
      nonlocal received
      message = await request.receive()
      received += len(message.get("body", b""))
      if received > max_bytes:
        raise TooLarge
      return message

    try:
      async with Request(request.scope, receive).form(max_files=MAX_FILES, max_fields=MAX_FILES) as form:
        files = [value for _, value in form.multi_items() if not isinstance(value, str)]
        uploads = [Upload(await f.read(), pathlib.PurePath(f.filename or "upload").name) for f in files]
    except TooLarge:
      return error(413, f"the upload is over this server's limit of {limit_text}")
    except HTTPException as e:  # a malformed form, or too many files
      return error(400, f"{e.detail}; send image files as form fields named file: curl -F file=@digit.png")
    if not uploads:
      return error(400, "no image file in the request; send one as a form field named file: curl -F file=@digit.png")
    try:
      return JSONResponse(await anyio.to_thread.run_sync(model.predict, uploads, limiter=limiter))
    except UserError as e:
      return error(400, str(e))

  async def http_error(request, e):
    return error(e.status_code, e.detail)

  routes = [
    Route("/", page),
    Route("/info", info),
    Route("/predict", predict, methods=["POST"]),
    Route("/report/{name}", report),
  ]
  return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def listening_socket(host: str, port: int) -> socket.socket:
  try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
  except OSError as e:
    raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --host or --port") from None
  sock.listen(128)
  sock.set_inheritable(True)
  return sock


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog="python -m fluxdigits.serve",
    usage=USAGE,
    description=__doc__,
    epilog="example: python -m fluxdigits.serve runs/mnist_handwriting  # then open http://127.0.0.1:8000",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("run", help="a finished run directory (the --workdir of python -m fluxdigits.run)")
  parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
  parser.add_argument("--port", type=int, default=8000, help="port (8000; 0: any free one, printed)")
  parser.add_argument("--max-mb", type=float, default=10.0, help="largest request accepted, in MB (10)")
  parser.add_argument("--top", type=int, default=3, help="classes listed per image (3)")
  args = parser.parse_args(argv)
  if args.top < 1:
    raise UserError(f"--top must be at least 1, got {args.top}")
  if not 0 < args.max_mb <= 1024:
    raise UserError(f"--max-mb must be above 0 and at most 1024, got {args.max_mb:g}")
  if not 0 <= args.port <= 65535:
    raise UserError(f"--port must be 0 to 65535, got {args.port}")
  return args


def serve(args) -> int:
  try:
    import python_multipart  # noqa: F401 (Starlette's forms need it)
    import starlette  # noqa: F401
    import uvicorn
  except ImportError as e:
    raise UserError(f"python -m fluxdigits.serve needs the serve extra ({e.name} is missing): {EXTRA}") from None
  with listening_socket(args.host, args.port) as sock:  # first: a busy port is said before the model loads
    model = Model(args.run, args.top)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app(model, int(args.max_mb * 2**20)), log_level="warning", access_log=False)
    print(f"serving {model.name} ({model.classifier.dataset}) at http://{shown}:{port}/ ; Ctrl-C stops", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
  return 0


def main(argv=None) -> int:
  return cli.main(lambda: serve(parse_args(sys.argv[1:] if argv is None else argv)), "the server stopped")


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fluxdigits</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 60rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
  #about { color: #555; margin-bottom: 1rem; }
  .row { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
  .panel { display: flex; flex-direction: column; gap: .5rem; }
  .panel h2 { font-size: .95rem; margin: 0; color: #444; }
  #pad { border: 1px solid #888; border-radius: 4px; touch-action: none; cursor: crosshair; background: #fff; }
  #drop { width: 200px; height: 200px; border: 2px dashed #888; border-radius: 4px; display: flex;
    align-items: center; justify-content: center; text-align: center; color: #555; overflow: hidden; }
  #drop.over { background: #eef5fb; border-color: #0072B2; }
  #drop img { max-width: 100%; max-height: 100%; }
  #seen { width: 140px; height: 140px; image-rendering: pixelated; background: #000; border: 1px solid #888; }
  #answer { font-size: 2.2rem; font-weight: bold; min-height: 2.6rem; }
  #bars { display: grid; grid-template-columns: max-content 160px max-content; gap: .3rem .4rem; align-items: center;
    font-variant-numeric: tabular-nums; }
  .bar { display: contents; }
  .bar .name { max-width: 10rem; text-align: right; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .bar .track { height: .9rem; background: #eee; }
  .bar .fill { height: 100%; background: #0072B2; }
  #error { color: #b00020; min-height: 1.2rem; }
  button { width: 6rem; }
</style>
</head>
<body>
<h1 id="title">fluxdigits</h1>
<div id="about">loading the run's details ...</div>
<div class="row">
  <div class="panel" id="draw" hidden>
    <h2>Draw a digit</h2>
    <canvas id="pad" width="280" height="280"></canvas>
    <button id="clear" type="button">Clear</button>
  </div>
  <div class="panel">
    <h2>Or an image file</h2>
    <label id="drop">drop an image here<br>or click to choose one
      <input id="file" type="file" accept="image/*" hidden></label>
  </div>
  <div class="panel">
    <h2>What the model sees</h2>
    <img id="seen" alt="the model's input">
    <div id="answer"></div>
    <div id="bars"></div>
    <div id="error" role="alert"></div>
  </div>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;

async function start() {
  const response = await fetch("info");
  info = await response.json();
  $("title").textContent = `fluxdigits: ${info.run}`;
  const accuracy = info.test_accuracy == null ? "" : `, ${(100 * info.test_accuracy).toFixed(2)}% on its test split`;
  $("about").textContent = `${info.dataset}, ${info.classes.length} classes, ` +
    `input ${info.input_shape.join("x")}${accuracy}. `;
  if (info.report) {
    const link = document.createElement("a");
    link.href = info.report;
    link.textContent = "The run's report";
    $("about").append(link);
  }
  $("draw").hidden = !info.draw;
  document.body.dataset.ready = "true";
}

function show(prediction) {
  $("error").textContent = "";
  $("seen").src = prediction.input;
  $("answer").textContent = `reads ${prediction.class}`;
  $("bars").replaceChildren(...prediction.top.map(({ class: name, probability }) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.textContent = probability.toFixed(3);
    bar.append(label, track, value);
    return bar;
  }));
  document.body.dataset.predictions = String(Number(document.body.dataset.predictions || 0) + 1);
}

function fail(message) {
  $("answer").textContent = "";
  $("bars").replaceChildren();
  $("seen").removeAttribute("src");
  $("error").textContent = message;
}

async function predict(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch("predict", { method: "POST", body: form });
    const answer = await response.json();
    if (response.ok) show(answer.predictions[0]);
    else fail(answer.error);
  } catch (e) {
    fail(`the server did not answer (${e.message})`);
  }
}

// The drawing: one request in flight at a time, the latest strokes sent when it returns.
const pad = $("pad"), pen = pad.getContext("2d");
let drawing = false, inked = false, busy = false, changed = false;
function blank() {
  pen.fillStyle = "#fff";
  pen.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}
function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
}
async function send() {
  if (busy || !changed || !inked) return;
  busy = true;
  changed = false;
  document.body.dataset.drawing = "sent";
  const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
  await predict(blob, "drawing.png");
  busy = false;
  if (changed) send();
  else document.body.dataset.drawing = "answered";
}
pad.addEventListener("pointerdown", (event) => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  const [x, y] = point(event);
  pen.beginPath();
  pen.moveTo(x, y);
  pen.lineTo(x + 0.1, y);
  pen.stroke();
  inked = changed = true;
  send();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  pen.lineTo(x, y);
  pen.stroke();
  changed = true;
  send();
});
const lift = () => { drawing = false; send(); };
pad.addEventListener("pointerup", lift);
pad.addEventListener("pointercancel", lift);
$("clear").addEventListener("click", () => {
  blank();
  changed = false;
  $("answer").textContent = "";
  $("bars").replaceChildren();
  $("seen").removeAttribute("src");
  $("error").textContent = "";
});
pen.lineWidth = 18;
pen.lineCap = pen.lineJoin = "round";
pen.strokeStyle = "#000";
blank();

// A file, chosen or dropped: shown as it is, then as the model sees it.
function take(file) {
  if (!file) return;
  const preview = document.createElement("img");
  preview.alt = file.name;
  preview.src = URL.createObjectURL(file);
  $("drop").replaceChildren(preview, $("file"));
  if (info && file.size > info.max_upload_bytes) {
    fail(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB, over this server's limit of ` +
      `${(info.max_upload_bytes / 2 ** 20).toFixed(0)} MB`);
    return;
  }
  predict(file, file.name);
}
$("file").addEventListener("change", () => take($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  take(event.dataTransfer.files[0]);
});
start();
</script>
</body>
</html>
"""


if __name__ == "__main__":
  sys.exit(main())
