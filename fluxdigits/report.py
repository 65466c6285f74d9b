"""Reports of finished runs: curves, confusion matrix, mistakes, per-class metrics; and run comparisons.

python -m fluxdigits.report WORKDIR              writes WORKDIR/report/ (index.html, report.md, PNGs, CSVs)
python -m fluxdigits.report WORKDIR WORKDIR ...  also compares the runs into --out (default runs/comparison)

The test predictions come from the run's best-validation checkpoint, the variables summary.json's
test metrics were computed with, so the report's mistakes are exactly the summary's test errors.
Figures are drawn on matplotlib `Figure`s without pyplot, so no GUI backend is ever touched.
"""

import argparse
import csv
import dataclasses
import html
import json
import math
import os
import pathlib
import sys

import jax
import numpy as np
from matplotlib import colors, ticker
from matplotlib.figure import Figure

from fluxdigits import checkpoint, cli, data, mesh as meshes, steps
from fluxdigits.errors import UserError

USAGE = "python -m fluxdigits.report WORKDIR [WORKDIR ...] [--out DIR]"
DEFAULT_COMPARISON_DIR = pathlib.Path("runs") / "comparison"
DPI = 150
MAX_MISTAKES_SHOWN = 36
PICTURES = ("curves", "confusion_matrix", "misclassified")  # a run report's PNG files, by name
TOP_CONFUSED_PAIRS = 10
# Okabe & Ito's palette: distinguishable with every common colour-vision deficiency, and in greyscale
# print when paired with distinct line styles.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
# Runs also differ in marker and line style, so a comparison survives greyscale print and more than 8 runs.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", ":", "-.")
CONFUSION_COLOURMAP = "cividis"


# --- reading a run --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  """What a run directory says about itself, without its checkpoints."""

  workdir: pathlib.Path
  config: dict  # flat, as config.json holds it
  history: tuple  # metrics.jsonl rows, one per epoch
  summary: dict


def read_run(workdir) -> Run:
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise UserError(f"run directory {workdir} does not exist; pass the --workdir of a training run")
  resume = f"train or resume it first: python -m fluxdigits.run EXPERIMENT.py --workdir {workdir}"
  if not (workdir / "config.json").is_file():
    raise UserError(f"{workdir} is not a fluxdigits run (no config.json); pass the --workdir of a training run")
  if not (workdir / "metrics.jsonl").is_file():
    raise UserError(f"{workdir} has no metrics.jsonl, so no epoch has finished; {resume}")
  if not (workdir / "summary.json").is_file():
    raise UserError(f"{workdir} has no summary.json, so the run has not finished; {resume}")
  history = tuple(_read_json_lines(workdir / "metrics.jsonl"))
  if not history:
    raise UserError(f"{workdir / 'metrics.jsonl'} is empty, so no epoch has finished; {resume}")
  return Run(workdir, _read_json(workdir / "config.json"), history, _read_json(workdir / "summary.json"))


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e}); it must be the file a training run wrote") from e


def _read_json_lines(path: pathlib.Path):
  try:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  except json.JSONDecodeError as e:
    raise UserError(f"{path} has a line that is not valid JSON ({e}); it must be the file a training run wrote") from e


def test_logits(config, state, dataset: data.Dataset) -> np.ndarray:
  """(n_test, classes) logits, computed by the same predict functions that training evaluates with."""
  mesh = meshes.data_mesh(local=True)  # the report is process 0's alone in a multi-process job
  meshes.check_divisible(config.eval_batch_size, "eval_batch_size", mesh)
  predict = steps.make_predict(state.apply_fn, steps.preprocess_for(config, dataset), config.test_time_flip)
  variables = meshes.replicate(state.evaluated_variables(), mesh)
  images = meshes.replicate(dataset.test.images, mesh)
  return steps.predict_split(predict, variables, images, len(dataset.test), config.eval_batch_size, mesh)


# --- what the predictions say (pure functions of arrays) ------------------------------------------


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """(classes, classes) counts: row = true class, column = predicted class."""
  flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
  return flat.reshape(num_classes, num_classes)


def per_class_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support of each class; 0 where a class is never predicted or never present."""
  hits = np.diag(confusion).astype(np.float64)
  support = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
  recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
  both = precision + recall
  f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
  return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def most_confused_pairs(confusion: np.ndarray, top: int) -> list[tuple[int, int, int]]:
  """(true class, predicted class, count) of the `top` largest off-diagonal cells that are not zero."""
  errors = confusion.copy()
  np.fill_diagonal(errors, 0)
  order = np.argsort(-errors, axis=None, kind="stable")[:top]
  pairs = [(int(t), int(p), int(errors[t, p])) for t, p in zip(*np.unravel_index(order, errors.shape))]
  return [pair for pair in pairs if pair[2] > 0]


def rank_mistakes(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
  """Indices of the misclassified examples, the most confident mistake first."""
  predictions = probabilities.argmax(-1)
  wrong = np.flatnonzero(predictions != labels)
  return wrong[np.argsort(-probabilities[wrong, predictions[wrong]], kind="stable")]


def mistake_title(true_name: str, predicted_name: str, confidence: float, two_lines: bool = False) -> str:
  """'7 → 2 (97.3%)'; `two_lines` puts the confidence on a line of its own, for long class names."""
  # A mistake is never 100% confident; rounding must not make it look so.
  shown = ">99.9%" if confidence >= 0.9995 else f"{confidence:.1%}"
  return f"{true_name} → {predicted_name}{chr(10) if two_lines else ' '}({shown})"


def has_long_names(class_names) -> bool:
  """Whether the names are words ('Ankle boot') rather than digits: they need more room on a figure."""
  return max(len(name) for name in class_names) > 2


# --- figures --------------------------------------------------------------------------------------


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
  fig.savefig(path, dpi=DPI, facecolor="white")
  return path


def _titled(run_name: str, title: str) -> str:
  """A figure's title naming its run, so a picture copied out of its folder still says what it shows."""
  return f"{run_name}: {title}" if run_name else title


def plot_curves(history, best_epoch: int, path: pathlib.Path, run_name: str = "") -> pathlib.Path:
  """Loss and accuracy per epoch, train and validation, in two panels."""
  fig = Figure(figsize=(8, 3.5), layout="constrained")
  fig.suptitle(_titled(run_name, "loss and accuracy per epoch"), fontsize=10)
  epochs = [row["epoch"] for row in history]
  for ax, metric, ylabel in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("Cross-entropy loss", "Accuracy")):
    for split, label, colour, style, marker in (
      ("train", "train", OKABE_ITO[0], "-", "o"),
      ("val", "validation", OKABE_ITO[1], "--", "s"),
    ):
      values = [row[f"{split}_{metric}"] for row in history]
      if None not in values:
        ax.plot(epochs, values, color=colour, linestyle=style, marker=marker, markersize=4, label=label)
    ax.axvline(best_epoch, color="0.45", linestyle=":", linewidth=1, label=f"best epoch ({best_epoch})")
    ax.set(xlabel="Epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if metric == "accuracy":
      ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    ax.grid(alpha=0.3)
  handles, labels = fig.axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
  return _save(fig, path)


def plot_misclassified(
  images, labels, probabilities, class_names, path: pathlib.Path, run_name: str = ""
) -> pathlib.Path:
  """Up to MAX_MISTAKES_SHOWN misclassified images, the most confident mistakes first."""
  ranked = rank_mistakes(labels, probabilities)
  shown = ranked[:MAX_MISTAKES_SHOWN]
  columns = max(1, min(6, len(shown)))
  rows = max(1, math.ceil(len(shown) / columns))
  long_names = has_long_names(class_names)
  cell_width, cell_height = (1.8, 1.85) if long_names else (1.45, 1.7)  # inches: an image and its title
  width = max(4.5, cell_width * columns + 0.2)  # room for the suptitle when few are shown
  grid_height = cell_height * rows
  fig = Figure(figsize=(width, grid_height + 0.45))
  fig.suptitle(
    _titled(run_name, f"misclassified test images, most confident first ({len(shown)} of {len(ranked)})"),
    fontsize=10,
    wrap=True,
  )
  if not len(shown):
    fig.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
  # One axes measured in inches holds every image and title: an axes per image costs seconds to lay out and draw.
  ax = fig.add_axes((0, 0, 1, grid_height / (grid_height + 0.45)))
  side = min(cell_width, cell_height - 0.45) - 0.1
  left = (width - cell_width * columns) / 2 + (cell_width - side) / 2
  for k, index in enumerate(shown):
    row, column = divmod(k, columns)
    x, y = left + column * cell_width, cell_height * (rows - 1 - row) + (cell_height - side - 0.3) / 2
    image = images[index]
    predicted = int(probabilities[index].argmax())
    ax.imshow(
      image[..., 0] if image.shape[-1] == 1 else image,
      cmap="gray_r",
      vmin=0,
      vmax=255,
      interpolation="nearest",
      extent=(x, x + side, y, y + side),
    )
    confidence = probabilities[index, predicted]
    title = mistake_title(class_names[labels[index]], class_names[predicted], confidence, long_names)
    ax.text(x + side / 2, y + side + 0.05, title, ha="center", va="bottom", fontsize=8)
  ax.set(xlim=(0, width), ylim=(0, grid_height), aspect="auto")
  ax.set_axis_off()
  return _save(fig, path)


def plot_confusion(confusion: np.ndarray, class_names, path: pathlib.Path, run_name: str = "") -> pathlib.Path:
  """Counts in the cells; colour is the row-normalised fraction, so rare classes read as well as common ones.

  The colour scale is a power law: on a linear one every 1% error would look the same as no error.
  """
  support = confusion.sum(axis=1, keepdims=True)
  fractions = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
  n = len(class_names)
  fig = Figure(figsize=(0.55 * n + 2.4, 0.55 * n + 1.8), layout="constrained")
  fig.suptitle(_titled(run_name, "confusion matrix, test split"), fontsize=10)
  ax = fig.subplots()
  image = ax.imshow(fractions, cmap=CONFUSION_COLOURMAP, norm=colors.PowerNorm(gamma=0.4, vmin=0, vmax=1))
  for (true, predicted), count in np.ndenumerate(confusion):
    red, green, blue, _ = image.cmap(image.norm(fractions[true, predicted]))
    dark_cell = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
    ax.text(predicted, true, str(count), ha="center", va="center", fontsize=8, color="white" if dark_cell else "black")
  long_names = has_long_names(class_names)
  ax.set_xticks(
    range(n),
    class_names,
    rotation=45 if long_names else 0,
    ha="right" if long_names else "center",
    rotation_mode="anchor",
  )
  ax.set_yticks(range(n), class_names)
  ax.set(xlabel="Predicted class", ylabel="True class")
  ax.tick_params(length=0)
  fig.colorbar(
    image,
    ax=ax,
    shrink=0.8,
    label="Fraction of the true class",
    ticks=(0, 0.01, 0.05, 0.2, 0.5, 1),
    format=ticker.PercentFormatter(1.0, decimals=0),
  )
  return _save(fig, path)


def plot_comparison(names, histories, path: pathlib.Path) -> pathlib.Path:
  """Validation accuracy and loss per epoch, one line per run."""
  fig = Figure(figsize=(8, 3.6), layout="constrained")
  panels = fig.subplots(1, 2)
  for i, (name, history) in enumerate(zip(names, histories)):
    style = {
      "color": OKABE_ITO[i % len(OKABE_ITO)],
      "marker": MARKERS[i % len(MARKERS)],
      "markersize": 4,
      "linestyle": LINE_STYLES[i // len(OKABE_ITO) % len(LINE_STYLES)],
    }
    for ax, metric in zip(panels, ("val_accuracy", "val_loss")):
      points = [(row["epoch"], row[metric]) for row in history if row[metric] is not None]
      if points:
        ax.plot(*zip(*points), label=name, **style)
  for ax, ylabel in zip(panels, ("Validation accuracy", "Validation loss")):
    ax.set(xlabel="Epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  panels[0].yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
  handles, labels = panels[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4) or 1, frameon=False)
  return _save(fig, path)


# --- documents: one list of blocks, rendered as Markdown and as HTML --------------------------------


@dataclasses.dataclass(frozen=True)
class Heading:
  text: str
  level: int = 2

  def markdown(self):
    return f"{'#' * self.level} {self.text}"

  def html(self):
    return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclasses.dataclass(frozen=True)
class Paragraph:
  text: str

  def markdown(self):
    return self.text

  def html(self):
    return f"<p>{html.escape(self.text)}</p>"


@dataclasses.dataclass(frozen=True)
class Image:
  file: str  # relative to the document
  caption: str

  def markdown(self):
    return f"![{self.caption}]({self.file})"

  def html(self):
    caption = html.escape(self.caption)
    return f'<figure><img src="{html.escape(self.file)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


@dataclasses.dataclass(frozen=True)
class Table:
  header: tuple
  rows: tuple

  def markdown(self):
    lines = [self.header, ["---"] * len(self.header), *self.rows]
    return "\n".join("| " + " | ".join(str(cell).replace("|", "\\|") for cell in line) + " |" for line in lines)

  def html(self):
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in self.header)
    body = "".join(
      "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in self.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_markdown(blocks) -> str:
  return "\n\n".join(block.markdown() for block in blocks) + "\n"


def to_html(title: str, blocks) -> str:
  style = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "img{max-width:100%}table{border-collapse:collapse;margin:1rem 0}"
    "th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}th{background:#f3f3f3}"
    "figcaption{color:#555;font-size:.9rem}"
  )
  return (
    f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
    f"<style>{style}</style></head>\n<body>\n" + "\n".join(block.html() for block in blocks) + "\n</body></html>\n"
  )


def write_csv(path: pathlib.Path, table: Table) -> pathlib.Path:
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([table.header, *table.rows])
  return path


def _seconds(value: float) -> str:
  return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def summary_table(run: Run, errors: int) -> Table:
  s = run.summary
  best_val = "n/a (no validation split)" if s["best_val_accuracy"] is None else f"{s['best_val_accuracy']:.2%}"
  from fluxdigits import metrics

  others = [
    (f"test {name.replace('_', ' ')}", f"{s[f'test_{name}']:.2%}")
    for name in metrics.METRICS
    if name != "accuracy" and f"test_{name}" in s
  ]
  return Table(
    ("metric", "value"),
    (
      ("test accuracy", f"{s['test_accuracy']:.2%}"),
      *others,
      ("test loss", f"{s['test_loss']:.4f}"),
      ("test errors", f"{errors:,} of {s['test_examples']:,}"),
      ("best validation accuracy", f"{best_val} (epoch {s['best_epoch']} of {s['epochs_run']})"),
      ("parameters", f"{s['num_params']:,}"),
      ("training time", f"{_seconds(s['train_seconds'])} (+ {_seconds(s['compile_seconds'])} compiling)"),
      ("device", s["device"]),
      ("dataset / model", f"{s['dataset']} / {s['model']}"),
    ),
  )


def per_class_table(names, metrics) -> Table:
  return Table(
    ("class", "precision", "recall", "f1", "support"),
    tuple(
      (
        name,
        f"{metrics['precision'][c]:.4f}",
        f"{metrics['recall'][c]:.4f}",
        f"{metrics['f1'][c]:.4f}",
        int(metrics["support"][c]),
      )
      for c, name in enumerate(names)
    ),
  )


def confused_pairs_table(names, confusion) -> Table:
  support = confusion.sum(axis=1)
  return Table(
    ("true", "predicted", "count", "share_of_true_class"),
    tuple(
      (names[t], names[p], count, f"{count / support[t]:.4f}")
      for t, p, count in most_confused_pairs(confusion, TOP_CONFUSED_PAIRS)
    ),
  )


def run_report_blocks(title: str, run: Run, per_class: Table, pairs: Table, errors: int) -> tuple:
  return (
    Heading(title, 1),
    summary_table(run, errors),
    Heading("Training curves"),
    Image("curves.png", "Loss and accuracy per epoch, train and validation"),
    Heading("Confusion matrix"),
    Image("confusion_matrix.png", "Test confusion matrix: counts, coloured by the fraction of the true class"),
    Paragraph("Counts: confusion_matrix.csv."),
    Heading("Per-class metrics"),
    per_class,
    Paragraph("Also in per_class.csv."),
    Heading("Most-confused pairs"),
    pairs,
    Paragraph(
      f"The {TOP_CONFUSED_PAIRS} largest off-diagonal cells of the confusion matrix; also in confused_pairs.csv."
    ),
    Heading("Misclassified test images"),
    Image("misclassified.png", "Misclassified test images: true → predicted (confidence), most confident first"),
    Paragraph(f"All {errors} mistakes, ranked the same way: misclassified.csv."),
    Heading("Config"),
    Table(("key", "value"), tuple(sorted(run.config.items()))),
  )


# --- the two reports ------------------------------------------------------------------------------


def _tested_best(workdir) -> tuple:
  """(dataset, test logits) of a run's best checkpoint."""
  config, _, state, _ = checkpoint.load_run(workdir, "best")
  dataset = data.load(config)
  return dataset, test_logits(config, state, dataset)


def write_run_report(workdir, tested=None) -> pathlib.Path:
  """Writes WORKDIR/report/ (see the README's Reports section) and returns that folder.

  `tested` is (dataset, test logits) of the run's best weights where the caller has them (training just ended);
  otherwise they are restored from the best checkpoint and run.
  """
  run = read_run(workdir)
  dataset, logits = tested or _tested_best(run.workdir)
  labels = dataset.test.labels
  probabilities = np.asarray(jax.nn.softmax(logits))
  names = dataset.class_names
  confusion = confusion_matrix(labels, probabilities.argmax(-1), len(names))
  metrics = per_class_metrics(confusion)
  mistakes = rank_mistakes(labels, probabilities)

  out = run.workdir / "report"
  out.mkdir(exist_ok=True)
  run_name = run.workdir.resolve().name
  plot_curves(run.history, run.summary["best_epoch"], out / "curves.png", run_name)
  plot_misclassified(dataset.test.images, labels, probabilities, names, out / "misclassified.png", run_name)
  plot_confusion(confusion, names, out / "confusion_matrix.png", run_name)
  per_class = per_class_table(names, metrics)
  pairs = confused_pairs_table(names, confusion)
  write_csv(out / "per_class.csv", per_class)
  write_csv(out / "confused_pairs.csv", pairs)
  write_csv(
    out / "confusion_matrix.csv",
    Table(("true \\ predicted", *names), tuple((name, *row) for name, row in zip(names, confusion.tolist()))),
  )
  write_csv(
    out / "misclassified.csv",
    Table(
      ("test_index", "true", "predicted", "confidence"),
      tuple(
        (int(i), names[labels[i]], names[probabilities[i].argmax()], f"{probabilities[i].max():.4f}") for i in mistakes
      ),
    ),
  )

  title = f"Report: {run_name}"
  blocks = run_report_blocks(title, run, per_class, pairs, len(mistakes))
  (out / "report.md").write_text(to_markdown(blocks))
  (out / "index.html").write_text(to_html(title, blocks))
  return out


def run_names(workdirs) -> list[str]:
  """Each run's folder name, or its whole path where two runs share a folder name."""
  names = [pathlib.Path(w).resolve().name for w in workdirs]
  return names if len(set(names)) == len(names) else [str(w) for w in workdirs]


def compare(workdirs, out) -> pathlib.Path:
  """Writes OUT/comparison.png and OUT/comparison.md for the runs in `workdirs`; returns OUT."""
  runs = [read_run(w) for w in workdirs]
  names = run_names(workdirs)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  plot_comparison(names, [run.history for run in runs], out / "comparison.png")
  rows = []
  for name, run in zip(names, runs):
    s = run.summary
    report_link = os.path.relpath(run.workdir / "report" / "report.md", out)
    rows.append(
      (
        f"[{name}]({report_link})",
        s["model"],
        f"{s['num_params']:,}",
        s["epochs_run"],
        "n/a" if s["best_val_accuracy"] is None else f"{s['best_val_accuracy']:.2%}",
        f"{s['test_accuracy']:.2%}",
        _seconds(s["train_seconds"]),
      )
    )
  blocks = (
    Heading("Comparison", 1),
    Image("comparison.png", "Validation accuracy and loss per epoch"),
    Table(("run", "model", "params", "epochs", "best val accuracy", "test accuracy", "train time"), tuple(rows)),
  )
  (out / "comparison.md").write_text(to_markdown(blocks))
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m fluxdigits.report",
    usage=USAGE,
    description=__doc__,
    epilog="example: python -m fluxdigits.report runs/mnist_cnn runs/mnist_mlp",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="a training run's --workdir")
  parser.add_argument(
    "--out", help=f"the comparison folder, with two or more WORKDIRs (default: {DEFAULT_COMPARISON_DIR})"
  )
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)

  def command():
    if args.out and len(args.workdirs) == 1:
      raise UserError(
        "--out names the comparison folder, which needs two or more WORKDIRs; "
        "a single run's report always goes to WORKDIR/report/"
      )
    if len(args.workdirs) > 1:
      # First, because it reads every run's files: a bad WORKDIR fails before any slow prediction.
      out = compare(args.workdirs, args.out or DEFAULT_COMPARISON_DIR)
    for workdir in args.workdirs:
      print(f"report -> {write_run_report(workdir) / 'index.html'}")
    if len(args.workdirs) > 1:
      print(f"comparison -> {out / 'comparison.md'}")

  # An --out that is a file, a read-only run folder, a full disk: one line, as the run command says it.
  return cli.main(command, "nothing was written past the last report")


if __name__ == "__main__":
  sys.exit(main())
