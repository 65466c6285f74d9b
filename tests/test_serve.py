"""python -m fluxdigits.serve: the endpoint against predict, bad uploads, 32 requests at once, the page in headless
Chromium, and Ctrl-C; one short MNIST run and one server for the whole module.

FLUXDIGITS_SERVE_SCREENSHOT=docs/serve.png python -m pytest tests/test_serve.py -k browser  # renews the README's
"""

import base64
import concurrent.futures
import http.client
import io
import json
import os
import pathlib
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib

import numpy as np
import pytest
from conftest import EXPERIMENTS, REPO, SHARED, module_command, read_summary, run_cli
from PIL import Image

import fluxdigits
from fluxdigits import serve

pytestmark = pytest.mark.xdist_group("serve")  # one worker trains the run and starts the server once
REAL_DIGITS = SHARED / "data" / "real-digits"
CHROMIUM = os.environ.get("FLUXDIGITS_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("serve") / "mnist_fast"
  result = run_cli(EXPERIMENTS / "mnist_fast.py", "--workdir", workdir, env={"FLUXDIGITS_SMOKE": "1"})
  assert result.returncode == 0, result.stderr
  return workdir


@pytest.fixture(scope="module")
def classifier(run_dir):
  return fluxdigits.load_classifier(run_dir)


@pytest.fixture(scope="module")
def server(run_dir):
  """The command as a user starts it, on a port the OS chooses; yields (url, process, its stderr file)."""
  stderr = tempfile.TemporaryFile("w+")
  process = subprocess.Popen(
    module_command("serve", run_dir, "--port", "0"),
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=stderr,
    text=True,
    # Ctrl-C's default action, as in a user's terminal: a child inherits an ignored SIGINT (CI's run exited 0).
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  deadline, line = time.time() + 300, ""
  while not line and process.poll() is None and time.time() < deadline:
    if select.select([process.stdout], [], [], 1)[0]:
      line = process.stdout.readline()
  found = re.search(r"http://\S+/", line)
  if not found:
    process.kill()
    stderr.seek(0)
    pytest.fail(f"the server did not start: {line!r} {stderr.read()}")
  yield found.group(0), process, stderr
  if process.poll() is None:
    process.kill()
  process.wait()


def get(url):
  try:
    with urllib.request.urlopen(url, timeout=60) as response:
      return response.status, response.read()
  except urllib.error.HTTPError as e:
    return e.code, e.read()


def post_files(url, files, field="file", extra=b""):
  """POST /predict a multipart form of (name, bytes) files: (status, JSON answer)."""
  boundary = uuid.uuid4().hex
  body = b"".join(
    f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
    f"Content-Type: application/octet-stream\r\n\r\n".encode()
    + data
    + b"\r\n"
    for name, data in files
  )
  body += extra.replace(b"BOUNDARY", boundary.encode()) + f"--{boundary}--\r\n".encode()
  request = urllib.request.Request(
    url + "predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST"
  )
  status, answer = get(request)
  return status, json.loads(answer)


def real_digits(pattern="*.png"):
  return sorted(REAL_DIGITS.glob(pattern))


def predicted_classes(classifier, files):
  probs = classifier.predict(np.stack([classifier.prepare(f) for f in files]))
  return [classifier.class_names[i] for i in probs.argmax(-1)], probs


def test_info_describes_the_run_and_links_its_report(server, run_dir):
  url, _, _ = server
  status, body = get(url + "info")
  info = json.loads(body)
  assert status == 200
  assert info["dataset"] == "mnist" and info["classes"] == [str(d) for d in range(10)]
  assert info["input_shape"] == [28, 28, 1] and info["run"] == "mnist_fast" and info["draw"]
  assert info["test_accuracy"] == read_summary(run_dir)["test_accuracy"]
  assert get(url + info["report"])[0] == 200 and get(url + "report/curves.png")[0] == 200
  # The report's own files only: no other name, and no path, reaches the disk.
  for name in ("config.json", "..%2Fconfig.json", "%2Fetc%2Fpasswd"):
    assert get(url + "report/" + name)[0] == 404, name


def test_predict_answers_are_predicts(server, classifier):
  url, _, _ = server
  files = real_digits()
  status, answer = post_files(url, [(f.name, f.read_bytes()) for f in files])
  assert status == 200 and answer["run"] == "mnist_fast"
  classes, probs = predicted_classes(classifier, files)
  assert [p["file"] for p in answer["predictions"]] == [f.name for f in files]
  assert [p["class"] for p in answer["predictions"]] == classes
  served = np.array([list(p["probabilities"].values()) for p in answer["predictions"]])
  np.testing.assert_allclose(served, probs, atol=1e-6)
  first = answer["predictions"][0]
  assert [t["class"] for t in first["top"]] == [classifier.class_names[i] for i in np.argsort(-probs[0])[:3]]
  seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(first["input"].split(",", 1)[1]))))
  np.testing.assert_array_equal(seen, classifier.prepare(files[0])[..., 0])  # the input, as predict --show draws it


def upload_100_mb(url) -> tuple[int, str]:
  """100 MB sent as a browser sends it, without waiting for the server's leave (no Expect: 100-continue)."""
  parsed = urllib.parse.urlparse(url)
  connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
  head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
  body = head + b"\0" * (100 << 20) + b"\r\n--b--\r\n"
  try:
    connection.request("POST", "/predict", body, {"Content-Type": "multipart/form-data; boundary=b"})
  except OSError:  # the server may answer and close before the last byte is sent
    pass
  response = connection.getresponse()
  return response.status, json.loads(response.read())["error"]


def test_bad_uploads_get_one_line_and_4xx_while_others_are_answered(server, classifier, tmp_path):
  url, process, _ = server
  good = real_digits("3_*.png")[:2]
  expected, _ = predicted_classes(classifier, good)
  huge = io.BytesIO()
  Image.new("L", (8000, 8000), 255).save(huge, "PNG")  # 64 megapixels in a few kB
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    big = pool.submit(upload_100_mb, url)
    bad = {
      "text": pool.submit(post_files, url, [("notes.txt", b"not an image, just words")]),
      "truncated": pool.submit(post_files, url, [("cut.png", good[0].read_bytes()[:400])]),
      "blank": pool.submit(post_files, url, [("blank.png", _png(Image.new("L", (64, 64), 255)))]),
      "pixels": pool.submit(post_files, url, [("huge.png", huge.getvalue())]),
      "bomb": pool.submit(post_files, url, [("bomb.png", png_header(40_000, 40_000))]),
      "no file": pool.submit(post_files, url, [], extra=b""),
      "a path": pool.submit(
        post_files, url, [], extra=b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"\r\n\r\n/etc/passwd\r\n'
      ),
    }
    answered = [pool.submit(post_files, url, [(f.name, f.read_bytes())]) for f in good * 3]
    status, message = big.result()
    assert status == 413 and "100.0 MB" in message and "10 MB" in message
    for what, future in bad.items():
      status, answer = future.result()
      assert status == 400 and "\n" not in answer["error"], (what, answer)
    for future, klass in zip(answered, expected * 3):
      status, answer = future.result()
      assert status == 200 and answer["predictions"][0]["class"] == klass
  assert "notes.txt: not an image" in bad["text"].result()[1]["error"]
  assert "megapixels" in bad["pixels"].result()[1]["error"] and "megapixels" in bad["bomb"].result()[1]["error"]
  assert "no ink" in bad["blank"].result()[1]["error"]
  assert process.poll() is None


def png_header(width, height) -> bytes:
  """A PNG's signature, header and an empty first data chunk: what an image that decodes to gigapixels shows first."""
  chunk = lambda kind, data=b"": struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT")


def _png(image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return buffer.getvalue()


def test_32_requests_at_once_are_all_answered_right(server, classifier):
  url, _, _ = server
  files = real_digits()[:32]
  expected, _ = predicted_classes(classifier, files)
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    answers = list(pool.map(lambda f: post_files(url, [(f.name, f.read_bytes())]), files))
  assert [status for status, _ in answers] == [200] * 32
  assert [answer["predictions"][0]["class"] for _, answer in answers] == expected


def test_the_page_draws_and_reads_files_in_chromium(server, classifier, tmp_path):
  if not pathlib.Path(CHROMIUM).exists() and not shutil.which("chromium"):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
  from playwright.sync_api import sync_playwright

  url, _, _ = server
  photo = real_digits("3_krisut_*.png")[0]
  expected = predicted_classes(classifier, [photo])[0][0]
  with sync_playwright() as playwright:
    executable = CHROMIUM if pathlib.Path(CHROMIUM).exists() else shutil.which("chromium")
    browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 900, "height": 440})
    page.goto(url)
    page.wait_for_selector("body[data-ready]")
    assert page.get_attribute("#about a", "href") == "report/index.html"
    box = page.locator("#pad").bounding_box()
    at = lambda x, y: (box["x"] + x * box["width"], box["y"] + y * box["height"])
    for stroke in (((0.25, 0.2), (0.75, 0.2)), ((0.75, 0.2), (0.4, 0.85))):  # a 7
      page.mouse.move(*at(*stroke[0]))
      page.mouse.down()
      page.mouse.move(*at(*stroke[1]), steps=12)
      page.mouse.up()
    page.wait_for_selector("body[data-drawing=answered]")  # the finished drawing's answer, not a stroke's
    assert re.fullmatch(r"reads \d", page.text_content("#answer"))
    assert page.locator("#bars .bar").count() == 3 and page.text_content("#error") == ""
    assert page.get_attribute("#seen", "src").startswith("data:image/png;base64,")
    page.screenshot(path=os.environ.get("FLUXDIGITS_SERVE_SCREENSHOT", str(tmp_path / "serve.png")))
    before = int(page.get_attribute("body", "data-predictions"))
    page.set_input_files("#file", str(photo))
    page.wait_for_function(f"Number(document.body.dataset.predictions) > {before}")
    assert page.text_content("#answer") == f"reads {expected}"
    page.click("#clear")
    assert page.text_content("#answer") == ""
    browser.close()


@pytest.mark.fast
def test_a_busy_port_and_bad_arguments_are_one_line(tmp_path, capsys):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    assert serve.main([str(tmp_path), "--port", str(taken.getsockname()[1])]) == 2
  assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
  assert serve.main([str(tmp_path / "missing"), "--port", "0"]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert serve.main([str(tmp_path), "--max-mb", "0"]) == 2
  assert capsys.readouterr().err.strip() == "error: --max-mb must be above 0 and at most 1024, got 0"


def test_ctrl_c_stops_the_server_cleanly(server):  # last: it stops the module's server
  url, process, stderr = server
  process.send_signal(signal.SIGINT)
  assert process.wait(timeout=60) == 130
  stderr.seek(0)
  errors = stderr.read()
  assert "interrupted; the server stopped" in errors and "Traceback" not in errors
  with pytest.raises(OSError):
    urllib.request.urlopen(url + "info", timeout=5)
