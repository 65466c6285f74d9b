"""An epoch's progress as it trains: tqdm's bar in a terminal or a notebook; elsewhere (CI, a log file) one line at
most every LINE_SECONDS, not a bar redrawn into the log. Both give images/s and the time left in the epoch and run.
"""

import sys
import time

from tqdm.auto import tqdm

LINE_SECONDS = 10.0


def _interactive() -> bool:
  return sys.stderr.isatty() or "ipykernel" in sys.modules


class Epoch:
  """`with Epoch(...) as shown: shown.update(steps, {metric: running mean})`, after each compiled call."""

  def __init__(self, epoch: int, num_epochs: int, steps: int, done: int, images_per_step: int, enabled: bool = True):
    self.epoch, self.num_epochs, self.steps, self.done = epoch, num_epochs, steps, done
    self.images_per_step = images_per_step
    self.enabled = enabled
    self.began, self.first = time.perf_counter(), done
    self.last_line = self.began
    self.bar = None
    if enabled and _interactive():
      self.bar = tqdm(
        total=steps,
        initial=done,
        desc=f"epoch {epoch}/{num_epochs}",
        unit="step",
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
      )

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.bar is not None:
      self.bar.close()

  def update(self, steps: int, means: dict):
    self.done += steps
    if not self.enabled:
      return
    now = time.perf_counter()
    rate = (self.done - self.first) / max(now - self.began, 1e-9)  # steps/s
    left = self.steps - self.done
    run_left = left + (self.num_epochs - self.epoch) * self.steps
    figures = {name: f"{value:.4f}" for name, value in means.items()}
    figures["images/s"] = f"{rate * self.images_per_step:,.0f}"
    figures["run ETA"] = tqdm.format_interval(run_left / rate)
    if self.bar is not None:
      self.bar.update(steps)
      self.bar.set_postfix(figures, refresh=False)
    elif now - self.last_line >= LINE_SECONDS and left:
      self.last_line = now
      shown = "  ".join(f"{name} {value}" for name, value in figures.items())
      print(
        f"epoch {self.epoch}/{self.num_epochs}  step {self.done}/{self.steps}  {shown}  "
        f"epoch ETA {tqdm.format_interval(left / rate)}",
        file=sys.stderr,
        flush=True,
      )
