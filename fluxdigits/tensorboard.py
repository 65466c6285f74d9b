"""TensorBoard event files for each run in RUN/tb/ (written by tensorboardX: no TensorFlow), and profiler traces.

Tags, on one x axis, the global train step:
  train/<metric>  the mean over each compiled call's steps, as often as a call returns;
  epoch/<key>     each epoch's row of metrics.jsonl (train and validation figures, learning rate, seconds);
  test/<metric>   the test figures, at the end;
  report/<name>   the report's pictures.
The run's hyperparameters go to the HParams plugin (a session start and end per run), so seeds and trials compare in
its table. A resumed run's first event purges whatever the killed one wrote after its last checkpoint, so its curves
go on without duplicated or backward steps.
"""

import functools
import os
import pathlib
import sys
import time

FOLDER = "tb"
# Shown for every run, so a sweep's table has them even where a trial's value is the default.
HPARAMS_ALWAYS = (
  "seed",
  "model.name",
  "batch_size",
  "num_epochs",
  "optimizer.name",
  "optimizer.learning_rate",
  "optimizer.weight_decay",
  "model.dropout_rate",
  "label_smoothing",
)


@functools.cache
def _tensorboardx():
  # tensorboardX's writer imports torch when it is installed (a second and hundreds of MB at start-up) to accept its
  # tensors; fluxdigits gives it numpy, so torch is kept out unless something imported it before.
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None
  try:
    import tensorboardX
    import tensorboardX.event_file_writer
    import tensorboardX.proto.event_pb2
    import tensorboardX.proto.summary_pb2
    import tensorboardX.summary
  finally:
    if blocked:
      del sys.modules["torch"]
  return tensorboardX


def hparams(config) -> dict:
  """The hyperparameters a run shows in the HParams table: HPARAMS_ALWAYS, and every config key set away from its
  default (but where the data lies)."""
  from fluxdigits import config as configs

  defaults = configs.flatten(configs.defaults())
  chosen = {
    key: value
    for key, value in configs.flatten(config).items()
    if key in HPARAMS_ALWAYS or (value != defaults.get(key) and key != "dataset.data_dir")
  }
  return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in chosen.items()}


class Boards:
  """The event files of a population's members (one run each), opened when training starts. Events are written and
  flushed as they come (a handful a compiled call), so a run killed at any moment leaves them on disk. Without writers
  (tensorboard off, or not process 0) every method does nothing."""

  def __init__(self, member_dirs, members, primary: bool):
    self.runs = [(pathlib.Path(d) / FOLDER, m) for d, m in zip(member_dirs, members)]
    self.primary = primary
    self.writers = {}

  def start(self, member: int, resumed_step: int) -> None:
    """Opens a member's event file. Its first event purges whatever an earlier process wrote after `resumed_step` (the
    checkpoint this one starts from; 0 for none), so the curves of a killed run go on from there."""
    if not self.primary or member in self.writers or not self.runs[member][1].tensorboard:
      return
    folder, config = self.runs[member]
    tbx = _tensorboardx()
    folder.mkdir(parents=True, exist_ok=True)
    # Named by the second it was made, as TensorBoard orders a run's files, and the pid, to stay apart from others.
    writer = tbx.event_file_writer.EventsWriter(str(folder / "events"), f".{os.getpid()}")
    restart = tbx.proto.event_pb2.SessionLog(status=tbx.proto.event_pb2.SessionLog.START)
    writer.write_event(tbx.proto.event_pb2.Event(wall_time=time.time(), step=resumed_step + 1, session_log=restart))
    self.writers[member] = writer
    self._write(member, 0, [tbx.summary.hparams(hparams(config), {})[1]])

  def _write(self, member: int, step: int, summaries) -> None:
    writer = self.writers[member]
    event_pb2 = _tensorboardx().proto.event_pb2
    for summary in summaries:
      writer.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    writer.flush()

  def scalars(self, member: int, step: int, values: dict, prefix: str) -> None:
    if member in self.writers:
      scalar = _tensorboardx().summary.scalar
      self._write(
        member, step, [scalar(f"{prefix}/{name}", float(value)) for name, value in values.items() if value is not None]
      )

  def images(self, member: int, step: int, pictures: dict) -> None:
    """The PNG files of `pictures` (tag -> path) as images, their bytes as they are."""
    if member not in self.writers:
      return
    from PIL import Image

    summary_pb2 = _tensorboardx().proto.summary_pb2
    summaries = []
    for tag, path in pictures.items():
      with Image.open(path) as image:
        size, channels = image.size, len(image.getbands())
      picture = summary_pb2.Summary.Image(
        width=size[0], height=size[1], colorspace=channels, encoded_image_string=pathlib.Path(path).read_bytes()
      )
      summaries.append(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=f"report/{tag}", image=picture)]))
    self._write(member, step, summaries)

  def close(self, ended: bool = True) -> None:
    """Closes the event files; `ended`: the runs finished (the HParams table shows their sessions as ended)."""
    for member, writer in self.writers.items():
      if ended:
        self._write(member, 0, [_tensorboardx().summary.hparams({}, {})[2]])
      writer.close()
    self.writers = {}


OFF = Boards((), (), primary=False)


class Profiler:
  """A jax.profiler trace of the train calls that cover `steps` steps after the process's first call (its warm-up),
  into `folder`, where TensorBoard's profile plugin finds it."""

  def __init__(self, folder, steps: int):
    self.folder, self.left = pathlib.Path(folder), steps
    self.calls = 0
    self.tracing = False

  def before_call(self) -> None:
    self.calls += 1
    if self.left > 0 and self.calls >= 2 and not self.tracing:
      import jax

      jax.profiler.start_trace(str(self.folder))
      self.tracing = True

  def after_call(self, steps: int) -> None:
    if self.tracing:
      self.left -= steps
      if self.left <= 0:
        self.stop()

  def stop(self) -> None:
    if self.tracing:
      import jax

      jax.profiler.stop_trace()
      self.tracing = False
