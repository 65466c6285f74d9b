"""A study's results: WORKDIR/index.html and tuning.md, Optuna's plots, the chosen trial as a command and an
experiment file.

The test split is evaluated once, for the chosen trial only, when the study has all its trials:
every figure that ranks or chooses trials is a validation figure.
"""

import os
import pathlib
import shlex

import matplotlib

matplotlib.use("Agg")  # Optuna's matplotlib plots go through pyplot; never open a window.
import numpy as np
import optuna
from matplotlib import pyplot as plt
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_plots

from fluxdigits import config as configs
from fluxdigits.report import Heading, Image, Paragraph, Table, to_html, to_markdown

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

PLOTS = (
  (
    "history.png",
    "Optimisation history: each trial's objective (best validation accuracy) and the best so far",
    optuna_plots.plot_optimization_history,
  ),
  # PED-ANOVA: needs no scikit-learn, unlike Optuna's default fANOVA.
  (
    "importances.png",
    "Parameter importances (PED-ANOVA) for the objective",
    lambda study: optuna_plots.plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()),
  ),
  ("slice.png", "Objective against each parameter", optuna_plots.plot_slice),
  (
    "parallel_coordinate.png",
    "Parallel coordinates: every complete trial's parameters and objective",
    optuna_plots.plot_parallel_coordinate,
  ),
)


def count(study, states) -> int:
  return len(study.get_trials(deepcopy=False, states=states))


def is_over(study, target: int) -> bool:
  """Whether the study has all its trials: `target` finished, none running."""
  return count(study, FINISHED) >= target and not count(study, (TrialState.RUNNING,))


def directory_number(trial) -> int:
  """The trial whose directory a trial trains in: its own, or the one it resumes."""
  return trial.system_attrs.get("failed_trial", trial.number)


def best_value(trial):
  """A trial's best validation accuracy so far: its objective, or the best epoch it reported before it stopped."""
  if trial.state == TrialState.COMPLETE:
    return trial.value
  return max(trial.intermediate_values.values(), default=None)


def config_of(study, trial):
  """A trial's full config: the study's base config with the trial's parameters."""
  return configs.from_flat({**study.user_attrs["base_config"], **trial.params})


def value_text(value) -> str:
  """A value as --config.KEY=VALUE parses it back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  return repr(value) if isinstance(value, float) else str(value)


def run_command(sweep: str, overrides, params: dict, workdir: str) -> str:
  """python -m fluxdigits.run that trains the trial's config anew."""
  assignments = dict(o.partition("=")[::2] for o in overrides) | {k: value_text(v) for k, v in params.items()}
  return shlex.join(
    [
      "python",
      "-m",
      "fluxdigits.run",
      sweep,
      "--workdir",
      workdir,
      *(f"--config.{k}={v}" for k, v in assignments.items()),
    ]
  )


def experiment_file(study, trial) -> str:
  """A self-contained experiment file whose get_config() is the trial's config."""
  defaults = configs.flatten(configs.defaults())
  lines = [
    f"  config.{key} = {value!r}"
    for key, value in configs.flatten(config_of(study, trial)).items()
    if defaults.get(key, not value) != value
  ]
  return (
    f'"""Trial {trial.number} of study {study.study_name!r}, chosen by python -m fluxdigits.tune on '
    f'best validation accuracy ({trial.value:.4f})."""\n\nfrom fluxdigits.config import defaults\n\n\n'
    "def get_config():\n  config = defaults()\n" + "\n".join(lines) + "\n  return config\n"
  )


def trials_table(study) -> Table:
  trials = study.get_trials(deepcopy=False)
  resumed_as = {t.system_attrs["retry_history"][-1]: t.number for t in trials if "retry_history" in t.system_attrs}
  rank = {
    TrialState.COMPLETE: 0,
    TrialState.PRUNED: 1,
    TrialState.RUNNING: 2,
    TrialState.WAITING: 3,
    TrialState.FAIL: 4,
  }
  trials = sorted(trials, key=lambda t: (rank[t.state], -(best_value(t) or 0.0), t.number))
  names = sorted({name for t in trials for name in t.params})
  rows = []
  for t in trials:
    value = best_value(t)
    state = t.state.name.lower()
    if t.number in resumed_as:
      state += f" (resumed as trial {resumed_as[t.number]})"
    elif "diverged" in t.user_attrs:
      state += " (diverged)"
    rows.append(
      (
        t.number,
        state,
        "-" if value is None else f"{value:.4f}",
        max(t.intermediate_values, default=0),
        f"{t.duration.total_seconds():.1f} s" if t.duration else "-",
        f"trials/{directory_number(t):04d}",
        *(
          value_text(t.params[n])
          if isinstance(t.params.get(n), (bool, str)) or n not in t.params
          else f"{t.params[n]:.4g}"
          for n in names
        ),
      )
    )
  return Table(("trial", "state", "best val accuracy", "epochs", "time", "directory", *names), tuple(rows))


def plot_blocks(study, workdir: pathlib.Path) -> list:
  blocks = []
  for file, caption, plot in PLOTS:
    try:
      axes = plot(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
      blocks.append(Paragraph(f"{caption}: not drawn yet ({e})."))
      continue
    figure = np.ravel(axes)[0].figure
    figure.set_size_inches(9, 5 if file != "slice.png" else 3.5)
    figure.savefig(workdir / file, dpi=110, bbox_inches="tight")
    plt.close(figure)
    blocks.append(Image(file, caption))
  return blocks


def write(study, args, overrides, workdir: pathlib.Path, target: int, chosen_summary: dict | None) -> pathlib.Path:
  """Writes WORKDIR/index.html, tuning.md, the plots and, once a trial is complete, best_experiment.py;
  `chosen_summary` is the chosen trial's, with its test figures, once the study is over (None where it ran
  elsewhere)."""
  finished, running = count(study, FINISHED), count(study, (TrialState.RUNNING,))
  complete = count(study, (TrialState.COMPLETE,))
  over = is_over(study, target)
  blocks = [
    Heading(f"Tuning: {study.study_name}", 1),
    Paragraph(
      f"{finished} of {target} trials finished (complete or pruned), {running} running; "
      f"sweep {args.sweep}, objective: best validation accuracy. "
      + ("The study is complete." if over else "Run the same command again to go on.")
    ),
  ]
  if complete:
    best = study.best_trial
    (workdir / "best_experiment.py").write_text(experiment_file(study, best))
    command = run_command(args.sweep, overrides, best.params, f"runs/{study.study_name}-best")
    blocks += [
      Heading("The chosen trial"),
      Paragraph(
        f"Trial {best.number} (trials/{directory_number(best):04d}): best validation accuracy "
        f"{best.value:.4f}; " + ", ".join(f"{k}={value_text(v)}" for k, v in best.params.items()) + "."
      ),
      Paragraph(f"Train it anew: {command}"),
      Paragraph(f"or: python -m fluxdigits.run {shlex.quote(str(workdir / 'best_experiment.py'))}"),
    ]
    summary = chosen_summary if over else None
    if summary is not None:
      blocks.append(
        Paragraph(
          f"Test accuracy of the chosen trial, evaluated once after tuning: "
          f"{summary['test_accuracy']:.4f} (test loss {summary['test_loss']:.4f}); "
          f"its report: trials/{directory_number(best):04d}/report/index.html"
        )
      )
      print(
        f"chosen: trial {best.number} (trials/{directory_number(best):04d}), validation {best.value:.4f}, "
        f"test {summary['test_accuracy']:.4f}  ->  {command}",
        flush=True,
      )
    elif over:
      blocks.append(
        Paragraph(
          "The chosen trial's directory is on another machine: its test accuracy is "
          "evaluated where it ran (run this command there)."
        )
      )
    else:
      blocks.append(Paragraph("Its test accuracy is evaluated once, when the study has all its trials."))
  blocks += [Heading("Trials, best first"), trials_table(study), Heading("Plots"), *plot_blocks(study, workdir)]
  for name, text in (
    ("tuning.md", to_markdown(blocks)),
    ("index.html", to_html(f"Tuning: {study.study_name}", blocks)),
  ):
    aside = workdir / f".{name}.{os.getpid()}"
    aside.write_text(text)
    os.replace(aside, workdir / name)  # a worker finishing at the same moment never sees half a file
  return workdir
