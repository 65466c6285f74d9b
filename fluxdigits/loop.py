"""The epoch loop: runs (a population of one or more, stepping together) from their configs to their summary.json
and reports.

`train` reads straight through what a run does: open its folder, load the data onto the devices, build the model and
compile its train calls (steps.train_steps), resume from the newest checkpoint, train epoch after epoch (validation,
checkpoint, metrics), then evaluate each member's best weights on the test split and write its summary and report.
"""

import dataclasses
import functools
import json
import pathlib
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fluxdigits import (
  augment,
  checkpoint,
  config as configs,
  cpu,
  data,
  distributed,
  images,
  mesh as meshes,
  metrics,
  optim,
  population,
  progressbar,
  registry,
  report,
  signals,
  steps,
  tensorboard,
  workdir as workdirs,
)
from fluxdigits.errors import TrainingDiverged, UserError
from fluxdigits.population import member


def train(members, workdir, member_dirs=None, restart=False, log=print, on_epoch=None, test=True) -> list[dict]:
  """Trains the members (configs of one shape: population.py) as one population in WORKDIR, each member's run in its
  folder of `member_dirs` (WORKDIR itself for a single run), resuming what is there; writes each member's
  config.json, dataset.json, metrics.jsonl, summary.json and report, and returns the summaries.

  Members already finished are not trained again. `on_epoch(member, row)` may return why a member should stop (a
  tuner's pruning); `test=False` leaves the test split out (tuning trials: nothing chosen may see it). A larger
  population also leaves each member's latest and best state in its folder as checkpoints, so a member folder is a
  finished run like any other (report, predict, export).
  """
  workdir = pathlib.Path(workdir).absolute()
  member_dirs = [workdir] if member_dirs is None else [pathlib.Path(d).absolute() for d in member_dirs]
  single = member_dirs == [workdir]
  data.check_source(members[0])
  # In a multi-process job, process 0 holds the workdir for the job and writes its files.
  with distributed.entered_on_primary(workdirs.open_run(workdir, members[0], restart, log)):
    workdirs.check_population(workdir, member_dirs)
    members = [workdirs.with_recorded_data_dir(m, d) for m, d in zip(members, member_dirs)]
    members = [configs.override(m, [f"dataset.data_dir={data.resolved_data_dir(m)}"]) for m in members]
    finished = [workdirs.finished_summary(d, m) for d, m in zip(member_dirs, members)]
    # A trial finished without its test pass, now chosen: restoring its last epoch evaluates it.
    finished = [None if f is not None and test and "test_accuracy" not in f else f for f in finished]
    boards = tensorboard.Boards(member_dirs, members, distributed.is_primary())
    try:
      if all(f is not None for f in finished):
        log(
          f"{workdir} is finished ({finished[0]['epochs_run']} epochs, num_epochs={members[0].num_epochs}): "
          "nothing to train; raise --config.num_epochs to train longer, or pass --restart to start over"
        )
        summaries, tested = finished, [None] * len(finished)
      else:
        trainer, state = build(members, log)
        manager = checkpoint.manager(workdir, trainer.config)
        within_manager = checkpoint.manager(workdir, trainer.config, create=False, within_epoch=True)
        profiler = (
          tensorboard.Profiler(workdir / tensorboard.FOLDER, trainer.config.profile_steps)
          if (trainer.config.profile_steps and distributed.is_primary())
          else None
        )
        try:
          state, progresses, place = resume(trainer, state, manager, within_manager, workdir, log)
          if distributed.is_primary():
            for member_dir, member_config in zip(member_dirs, trainer.members):
              member_dir.mkdir(exist_ok=True)
              workdirs.write_config(member_dir, member_config)
              workdirs.write_dataset_info(member_dir, trainer.dataset.info)
          state, progresses, best_variables = fit(
            trainer, state, progresses, (manager, within_manager), member_dirs, log, on_epoch, boards, profiler, place
          )
          if not single:
            checkpoint.write_member_checkpoints(manager, state, progresses, trainer.members, member_dirs)
        finally:
          if profiler:
            profiler.stop()
          checkpoint.close(within_manager, state)
          checkpoint.close(manager, state)
        if distributed.is_primary():  # the finished epochs' checkpoints hold all of it now
          shutil.rmtree(workdir / workdirs.WITHIN_EPOCH, ignore_errors=True)
        # Each member's best weights on the test split: its summary's figures, and its report's pictures.
        tested = [(trainer.dataset, logits_on(trainer, v, "test")) if test else None for v in best_variables]
        summaries = [summarize(trainer, state, i, progress, tested[i], boards) for i, progress in enumerate(progresses)]
        if distributed.is_primary():
          for member_dir, summary in zip(member_dirs, summaries):
            (member_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
      _report(member_dirs, summaries, members, finished, single, test, boards, log, tested)
    except BaseException:
      boards.close(ended=False)
      raise
    boards.close()
  return summaries


def summarize(trainer, state, i: int, progress, tested, boards) -> dict:
  """Member i's summary.json: its best weights' test figures (from `tested`, the dataset and their test logits; None
  when the test split is left out) and what its training took."""
  summary = {}
  if tested is not None:
    dataset, logits = tested
    test_metrics = steps.classification_metrics(logits, dataset.test.labels)
    summary = {
      **{f"test_{name}": test_metrics[name] for name in ("loss", *metrics.METRICS)},
      "test_examples": test_metrics["count"],
    }
    boards.scalars(
      i,
      progress.epoch * trainer.steps_per_epoch,
      {name: test_metrics[name] for name in ("loss", *metrics.METRICS)},
      "test",
    )
  return (
    summary
    | {
      "best_val_accuracy": progress.best_val_accuracy if len(trainer.dataset.validation) else None,
      "best_epoch": progress.best_epoch,
      "epochs_run": progress.epoch,
      "num_epochs": trainer.config.num_epochs,
      "train_steps": progress.epoch * trainer.steps_per_epoch,
      "train_seconds": sum(row["epoch_seconds"] for row in progress.history),
      "compile_seconds": trainer.calls.compile_seconds,
      "num_params": steps.count_params(member(state.params, i)),
      "dataset": trainer.config.dataset.name,
      "model": trainer.config.model.name,
      "device": meshes.describe(trainer.train_mesh),
    }
    | ({"stopped": progress.stopped} if progress.stopped else {})
  )


def _report(member_dirs, summaries, members, finished, single, test, boards, log, tested):
  """Each member's final line and, unless finished before, its report (its pictures to TensorBoard too), drawn from
  the test logits just computed where there are some (`tested`), so the best weights are neither restored nor run
  again."""
  for i, (member_dir, summary, config) in enumerate(zip(member_dirs, summaries, members)):
    prefix = "" if single else f"[{member_dir.name}] "
    if not test:
      log(
        f"{prefix}best validation accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_epoch']})  "
        f"({summary['epochs_run']} epochs, {summary['train_seconds']:.1f}s) -> {member_dir / 'summary.json'}"
      )
      continue
    log(prefix + final_line(summary, config, member_dir))
    if config.report and distributed.is_primary():
      if not (member_dir / "report" / "index.html").is_file() or not all(f is not None for f in finished):
        folder = report.write_run_report(member_dir, tested[i])
        boards.images(i, summary.get("train_steps", 0), {name: folder / f"{name}.png" for name in report.PICTURES})
      log(f"{prefix}report -> {member_dir / 'report' / 'index.html'}")


def final_line(summary: dict, config, workdir) -> str:
  """The run's result, saying which epoch's weights the test figures come from."""
  epochs = summary["epochs_run"]
  weights = "averaged weights" if config.ema_decay else "weights"
  chosen = "the best on validation" if summary.get("best_val_accuracy") is not None else "the last"
  return (
    f"test accuracy {summary['test_accuracy']:.4f}  test loss {summary['test_loss']:.4f}  with the {weights} of "
    f"epoch {summary['best_epoch']} ({chosen}; {epochs} epoch{'s' * (epochs != 1)} trained in "
    f"{summary['train_seconds']:.1f}s + {summary['compile_seconds']:.1f}s compile) -> {workdir / 'summary.json'}"
  )


def splits_batch_over_cpu_cores(config, model) -> bool:
  """Whether a run on a CPU splits each batch over fluxdigits' one device per core: long steps of narrow layers fill
  two cores better as two calls; millisecond steps and wide matmuls lose (benchmarks/NOTES.md)."""
  return configs.switch(config.split_batch_over_cpu_cores, registry.declared(model, "cpu_batch_split", False))


def data_mesh_for(config, model, calls_onednn: bool):
  """The devices a run of `config` splits its batches over (mesh.data_mesh); `calls_onednn`: cpu.calls_onednn's."""
  split = splits_batch_over_cpu_cores(config, model) and not calls_onednn
  return meshes.data_mesh(batch_sizes=(config.batch_size, config.eval_batch_size) if split else ())


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What the configs fix before the first step: the data on the devices, the model and its compiled calls."""

  config: Any  # what every member shares (model, data, batch size, schedule, epochs): member 0's config
  members: tuple  # each member's config; a single run is a population of one
  dataset: data.Dataset
  mesh: Any
  model: Any
  steps_per_epoch: int
  calls: "TrainCalls"  # the compiled loop of train steps, and how many steps the next call runs
  relative_rate: Any  # step -> multiplier of the peak learning rate
  predict: Any
  device_images: dict  # split name -> its images on the devices ('train' with its labels, on train_mesh)
  hyperparams: dict  # member_hyperparams() on train_mesh
  lanes: Any  # the CPU devices the members are split over (mesh.member_lanes), or None: the train calls run on mesh

  @property
  def train_mesh(self):
    """The devices the train calls run on: the lanes, or the data mesh."""
    return self.lanes or self.mesh


def build(members, log=print) -> tuple[Trainer, steps.TrainState]:
  """Loads the data, places it on the devices and compiles the train calls; returns them with fresh stacked states."""
  members = tuple(members)
  population.check_shared_shape(members)
  config = members[0]
  dataset = data.load(config, log)
  if config.augment.pen_traced:
    dataset = data.pen_traced(dataset, config.augment.pen_traced, config.dataset.cache, log)
  steps_per_epoch = len(dataset.train) // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f"batch_size={config.batch_size} is larger than the {len(dataset.train)} training examples")
  num_classes, image_shape = len(dataset.class_names), dataset.info.image_shape
  read_as = images.preparation(config.dataset.photos, image_shape)
  if read_as != config.dataset.photos:
    log(
      f"note: dataset.photos={config.dataset.photos!r} makes 28x28 grayscale inputs, but these images are "
      f"{'x'.join(map(str, image_shape))}: predict will read files as these were read, {read_as!r}"
    )
  model = registry.create(config, num_classes)
  variables = registry.check_output(model, config, image_shape, num_classes)
  if config.microbatches > 1 and variables.get("batch_stats"):
    raise UserError(
      f"microbatches={config.microbatches} would normalise each slice alone in {config.model.name}'s "
      "BatchNorm; use microbatches=1 with BatchNorm models"
    )
  # Traced once (a fraction of a second): it decides the CPU devices and what the compile line names.
  onednn = jax.default_backend() == "cpu" and cpu.calls_onednn(model, image_shape)
  mesh = data_mesh_for(config, model, onednn)
  meshes.check_divisible(config.batch_size, "batch_size", mesh)
  meshes.check_divisible(config.eval_batch_size, "eval_batch_size", mesh)
  tx = optim.create(config, steps_per_epoch)
  preprocess = steps.preprocess_for(config, dataset)
  in_lanes = len(members) > 1 and not steps.members_in_parallel(config, model)
  lanes = meshes.member_lanes(len(members)) if in_lanes and not onednn else None
  train_mesh = lanes or mesh
  device_images = {
    "train": meshes.replicate((dataset.train.images, dataset.train.labels), train_mesh),
    "validation": meshes.replicate(dataset.validation.images, mesh),
    "test": meshes.replicate(dataset.test.images, mesh),
  }
  hyperparams = meshes.replicate(steps.member_hyperparams(members), train_mesh)
  active = meshes.replicate(np.ones(len(members), bool), train_mesh)

  # Compiled against the shapes of the stacked state, so that a population too large for memory is refused
  # before its states are made.
  member_state = jax.eval_shape(lambda: steps.create_states(members[:1], model, image_shape, tx))
  calls = train_calls(config, model, num_classes, preprocess, augment.make(config), lanes)

  def arguments(length, population):
    """The abstract arguments of a call of `length` steps for `population` members (a smaller population's: for
    its memory need only)."""
    replicated = meshes.replicated_sharding(train_mesh)
    state_shapes = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((population, *x.shape[1:]), x.dtype, sharding=replicated), member_state
    )
    indices = _place_batches(np.zeros((population, length, config.batch_size), np.int32), mesh, lanes)
    return (
      state_shapes,
      *device_images["train"],
      indices,
      *jax.tree.map(lambda x: x[:population], (hyperparams, active)),
      jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
    )

  log(
    f"compiling the train step for {meshes.describe(mesh)}"
    + (f", {len(members)} members" if len(members) > 1 else "")
    + (f" side by side on {lanes.size} CPU devices" if lanes else "")
    + (f" (convolutions: {'oneDNN' if onednn else 'XLA'})" if jax.default_backend() == "cpu" else "")
    + (" in bfloat16" if registry.compute_dtype(config) == jnp.bfloat16 else "")
  )
  available = meshes.free_memory_bytes(train_mesh)  # on a CPU each lane's share of the host's memory
  capacity = min(config.steps_per_call, steps_per_epoch)
  compile_start = time.perf_counter()
  try:
    compiled = calls.lower(*arguments(capacity, len(members))).compile()
  except jax.errors.JaxRuntimeError as e:
    # A GPU's compiler runs the largest operations while it autotunes them, so a population too large for memory
    # fails there, before any memory analysis: smaller populations' compiled calls (2 and 4 members a device) tell
    # how many fit.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    smaller = sorted({min(k * (lanes.size if lanes else 1), len(members) - 1) for k in (2, 4)} - {0})
    needs = {k: _memory_needed(calls.lower(*arguments(capacity, k)).compile()) for k in smaller}
    _refuse_too_large(needs, len(members), available, e)
  compile_seconds = time.perf_counter() - compile_start
  needed = _memory_needed(compiled)
  if needed is not None and available is not None and needed > available:
    half = len(members) // 2
    needs = {half: _memory_needed(calls.lower(*arguments(capacity, half)).compile())} if len(members) > 1 else {}
    _refuse_too_large({len(members): needed, **needs}, len(members), available)

  state = steps.create_states(members, model, image_shape, tx)
  stem = registry.declared(model, "whitened_stem")
  if stem:
    state = steps.whiten_stem(state, preprocess(dataset.train.images[:1000]), stem)
  state = meshes.replicate(state, mesh)
  trainer = Trainer(
    config,
    members,
    dataset,
    mesh,
    model,
    steps_per_epoch,
    TrainCalls(compiled, capacity, config.seconds_per_call, compile_seconds),
    optim.schedule(config, steps_per_epoch),
    steps.make_predict(model.apply, preprocess, config.test_time_flip),
    device_images,
    hyperparams,
    lanes,
  )
  return trainer, state


class TrainCalls:
  """The compiled train call (up to `capacity` steps, the number run given at each call) and how many steps the next
  call runs: about `seconds` worth by the fastest step measured so far (one, before any), so that a signal is
  answered and the progress moves every second or two while the per-call cost stays a small part of each call."""

  def __init__(self, compiled, capacity: int, seconds: float, compile_seconds: float):
    self.compiled, self.capacity, self.seconds, self.compile_seconds = compiled, capacity, seconds, compile_seconds
    self._fastest_step = None

  def proposed(self, remaining: int) -> int:
    in_time = 1 if self._fastest_step is None else int(self.seconds / self._fastest_step)
    return max(1, min(self.capacity, remaining, in_time))

  def measured(self, steps: int, seconds: float):
    step = seconds / steps
    self._fastest_step = step if self._fastest_step is None else min(self._fastest_step, step)


def train_calls(config, model, num_classes, preprocess, augment_fn, lanes=None):
  """steps.train_steps jit-compiled, its state donated: on the devices of the data mesh, or split over `lanes` (a
  'members' mesh of CPU devices, mesh.member_lanes)."""
  run_steps = functools.partial(
    steps.train_steps, config=config, model=model, num_classes=num_classes, preprocess=preprocess, augment_fn=augment_fn
  )
  return jax.jit(run_steps, donate_argnums=0) if lanes is None else meshes.in_lanes(run_steps, lanes)


def _place_batches(indices: np.ndarray, mesh, lanes):
  """(members, steps, batch) indices for a train call: split along the batch over the data mesh, or whole in every
  lane."""
  return meshes.replicate(indices, lanes) if lanes else meshes.shard_batches(indices, mesh)


def _memory_needed(compiled) -> int | None:
  """Bytes of device memory a compiled call needs: its arguments, outputs and temporaries, less the donated."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return (
    analysis.argument_size_in_bytes
    + analysis.output_size_in_bytes
    + analysis.temp_size_in_bytes
    - analysis.alias_size_in_bytes
  )


def _refuse_too_large(needed: dict, members: int, available: int | None, compile_error=None):
  """Raises UserError naming the largest population that fits in `available` bytes (a device's free memory), from
  what the compiled calls of one or two population sizes need ({size: bytes}): a line through two sizes, since the
  data is shared and the rest grows per member; from one size, its bytes per member (an overestimate, so the advice
  errs on the safe side)."""
  available = available or 0
  sizes = sorted(k for k, v in needed.items() if v is not None)
  if len(sizes) >= 2:
    small, large = sizes[-2:]
    per_member = max((needed[large] - needed[small]) / (large - small), 1)
    fixed = needed[large] - per_member * large
  elif sizes:
    per_member, fixed = needed[sizes[0]] / sizes[0], 0
  else:
    per_member, fixed = float("inf"), 0
  largest = int((available - fixed) // per_member) if per_member != float("inf") else 0
  what = f"a population of {members}" if members > 1 else "this run"
  advice = f"the largest population that fits is {largest}: pass fewer members" if largest >= 1 else "lower batch_size"
  need = (
    "ran out of device memory while compiling"
    if compile_error is not None
    else f"needs about {(fixed + per_member * members) / 2**30:.1f} GiB of memory per device "
    f"({per_member / 2**20:,.0f} MiB per member)"
  )
  raise UserError(f"{what} {need}, {available / 2**30:.1f} GiB are free; {advice}") from compile_error


def train_epoch(
  trainer: Trainer,
  state: steps.TrainState,
  epoch: int,
  active,
  after_call=None,
  profiler=None,
  place: checkpoint.Place | None = None,
  at_safe_point=None,
) -> tuple[steps.TrainState, list, list]:
  """One epoch of the `active` members' steps, each in its (seed, epoch) order, from its start or from `place` (an
  epoch stopped part way); its progress shown. Returns the state, each member's {train_loss, train_accuracy} and why
  it diverged (None if it did not).

  `at_safe_point(state, place, signal)` runs before each compiled call with where the epoch is and the signal that
  asks the job to stop (0 if none): it may save the place, or stop. `after_call(step, {member: its means over the
  call})` runs after each call; `profiler` (a tensorboard.Profiler) may trace calls."""
  config, members = trainer.config, trainer.members
  spe = trainer.steps_per_epoch
  n = len(trainer.dataset.train)
  batches = np.stack([data.train_batches(m.seed, epoch, n, config.batch_size) for m in members])
  classes = len(trainer.dataset.class_names)
  if place is None:
    place = checkpoint.Place(epoch, 0, {}, (None,) * len(members), tuple(bool(a) for a in active))
  values = dict(place.values)  # name -> (members, steps so far) values
  diverged, active, step = list(place.diverged), np.array(place.active, bool), place.step
  if trainer.lanes:
    state = meshes.replicate(state, trainer.lanes)
  shown = progressbar.Epoch(
    epoch, config.num_epochs, spe, step, config.batch_size * len(members), enabled=distributed.is_primary()
  )
  with shown:
    while step < spe and active.any():
      # Every process of a job stops if one is asked to, and runs as many steps as the slowest proposes.
      signum, minus_length = distributed.agreed_max(signals.requested() or 0, -trainer.calls.proposed(spe - step))
      if at_safe_point:
        at_safe_point(state, checkpoint.Place(epoch, step, values, tuple(diverged), tuple(active)), int(signum))
      length = int(-minus_length)
      idx = batches[:, step : step + length]
      padded = np.zeros((len(members), trainer.calls.capacity, config.batch_size), idx.dtype)
      padded[:, :length] = idx
      if profiler:
        profiler.before_call()
      began = time.perf_counter()
      state, per_step = trainer.calls.compiled(
        state,
        *trainer.device_images["train"],
        _place_batches(padded, trainer.mesh, trainer.lanes),
        trainer.hyperparams,
        meshes.replicate(active, trainer.train_mesh),
        meshes.replicate(np.int32(length), trainer.train_mesh),
      )
      per_step = {name: np.asarray(v)[:, :length] for name, v in per_step.items()}  # (members, steps) each
      trainer.calls.measured(length, time.perf_counter() - began)
      first_step = step + (epoch - 1) * spe
      for i in np.flatnonzero(active):
        diverged[i] = _divergence(per_step["loss"][i], first_step, epoch, members[i], classes)
        active[i] = diverged[i] is None
      values = {name: np.concatenate([values.get(name, v[:, :0]), v], axis=1) for name, v in per_step.items()}
      step += length
      if profiler:
        profiler.after_call(length)
      if after_call:
        chunk_sums = {name: v.sum(1) for name, v in per_step.items()}
        one = np.arange(len(members))
        means = {i: _epoch_means(chunk_sums, one == i, length, config.batch_size) for i in np.flatnonzero(active)}
        after_call(first_step + length, means)
      if active.any():
        shown.update(length, _epoch_means(_sums(values), active, step, config.batch_size))
      workdirs.held_for_tests("call")
  if trainer.lanes:
    state = meshes.replicate(state, trainer.mesh)
  sums = _sums(values)
  rows = []
  for i, m in enumerate(members):
    row = {
      f"train_{name}": float(value)
      for name, value in _epoch_means(sums, np.arange(len(members)) == i, spe, config.batch_size).items()
    }
    rows.append(row)
    # A whole epoch at chance with a loss ten times a uniform guess's: exploded without reaching inf.
    if diverged[i] is None and row["train_accuracy"] < 1.5 / classes and row["train_loss"] > 10 * np.log(classes):
      diverged[i] = (
        f"loss exploded: {row['train_loss']:.3g} on average over epoch {epoch} at chance accuracy "
        f"({row['train_accuracy']:.1%}); lower optimizer.learning_rate "
        f"(now {m.optimizer.learning_rate:g})"
      )
  return state, rows, diverged


def _sums(values: dict) -> dict:
  """Each metric's sum over the steps so far, per member: the same however the steps were split into calls."""
  return {name: v.sum(1, dtype=np.float64) for name, v in values.items()}


def _epoch_means(sums: dict, members, steps: int, batch_size: int) -> dict:
  """The mean loss a step and the mean of each metric an example, over `steps` steps of the selected members."""
  return {
    name: values[members].mean() / (steps if name == "loss" else steps * batch_size) for name, values in sums.items()
  }


# Losses this many times a uniform guess's (ln classes) on every one of a call's last steps mean divergence.
EXPLODED_LOSS_FACTOR = 100


def _divergence(losses: np.ndarray, first_step: int, epoch: int, config, classes: int) -> str | None:
  """Why a member diverged: a non-finite loss, or one that exploded and stayed there (see EXPLODED_LOSS_FACTOR)."""
  advice = f"lower optimizer.learning_rate (now {config.optimizer.learning_rate:g})"
  if not np.isfinite(losses).all():
    bad = int(np.argmin(np.isfinite(losses)))
    return f"loss became {losses[bad]} at step {first_step + bad + 1} (epoch {epoch}); {advice}"
  last = losses[-10:]
  if (last > EXPLODED_LOSS_FACTOR * np.log(classes)).all():
    return (
      f"loss exploded to {last[-1]:.3g} at step {first_step + len(losses)} (epoch {epoch}), over "
      f"{EXPLODED_LOSS_FACTOR}x a uniform guess's {np.log(classes):.2f}; {advice}"
    )
  return None


def logits_on(trainer: Trainer, variables, split: str) -> np.ndarray:
  """One member's `variables` (params, batch_stats) run over every example of a split."""
  n = len(getattr(trainer.dataset, split).labels)
  return steps.predict_split(
    trainer.predict, variables, trainer.device_images[split], n, trainer.config.eval_batch_size, trainer.mesh
  )


def evaluate(trainer: Trainer, variables, split: str) -> dict:
  """Loss, accuracy and count of one member's `variables` over every example of a split."""
  return steps.classification_metrics(logits_on(trainer, variables, split), getattr(trainer.dataset, split).labels)


def _early_stopped(progress: checkpoint.Progress, config) -> checkpoint.Progress:
  """The progress, stopped if `patience` epochs passed without a better validation accuracy before the last epoch."""
  if (
    not progress.stopped
    and progress.epochs_without_improvement >= config.patience > 0
    and progress.epoch < config.num_epochs
  ):
    return dataclasses.replace(
      progress, stopped=f"early stop: no better validation accuracy for {config.patience} epochs"
    )
  return progress


def fit(
  trainer: Trainer,
  state: steps.TrainState,
  progresses: tuple,
  managers,
  member_dirs,
  log=print,
  on_epoch=None,
  boards=tensorboard.OFF,
  profiler=None,
  place: checkpoint.Place | None = None,
):
  """Trains every member from its progress (and the `place` within the next epoch, if any) to the last epoch or its
  stop, checkpointing and logging each epoch; a signal stops it at the next call, its place saved.

  `managers` are the checkpoint managers of finished epochs and of the place within an epoch. Returns (state,
  progresses, each member's best evaluated variables). `on_epoch(member, row)` runs after each member's epoch; it
  returns why that member should stop (a tuner's pruning) or None. `boards` receive the train figures of every call
  and each epoch's row; `profiler` may trace train calls.
  """
  config, members = trainer.config, trainer.members
  single = len(members) == 1
  spe = trainer.steps_per_epoch
  manager, within_manager = managers
  last_save = time.monotonic()

  def at_safe_point(state, place, signum):
    nonlocal last_save
    minutes = config.checkpoint.every_minutes
    if signum or (minutes and time.monotonic() - last_save >= 60 * minutes):
      checkpoint.save_place(within_manager, state, tuple(progresses), members, place)
      last_save = time.monotonic()
    if signum:
      try:
        checkpoint.finish(within_manager)
        kept = f"epoch {place.epoch} is saved at its step {place.step} of {spe}"
      except Exception as e:  # the finished epochs' checkpoints are still there
        kept = f"saving epoch {place.epoch}'s place failed ({type(e).__name__}); finished epochs' checkpoints are kept"
      signals.stop(signum, kept, distributed.leave)

  for i, member_progress in enumerate(progresses):
    boards.start(i, member_progress.epoch * spe)

  def after_call(step, means):
    for i, values in means.items():
      boards.scalars(i, step, values, "train")

  def say(i, line):
    log(line if single else f"[{member_dirs[i].name}] {line}")

  metrics_files = [pathlib.Path(d) / "metrics.jsonl" for d in member_dirs]
  if distributed.is_primary():
    for path, progress in zip(metrics_files, progresses):
      checkpoint.write_history(path, progress.history)
  best_variables = [None] * len(members)
  first_epoch = max(p.epoch for p in progresses) + 1
  # Without validation every epoch is the best so far: the one resumed within sets it.
  if first_epoch > 1 and (place is None or len(trainer.dataset.validation)):
    best, progresses = checkpoint.restore_best(manager, state, progresses, within_epoch=place is not None)
    best = meshes.replicate(best.evaluated_variables(), trainer.mesh)
    best_variables = [member(best, i) for i in range(len(members))]
  # Checkpoints of older versions did not record an early stop.
  progresses = [_early_stopped(p, m) for p, m in zip(progresses, members)]
  for epoch in range(first_epoch, config.num_epochs + 1):
    active = [not p.stopped for p in progresses]
    if not any(active):
      break
    epoch_start = time.perf_counter()
    with signals.stoppable():
      state, rows, diverged = train_epoch(
        trainer, state, epoch, active, after_call, profiler, place if epoch == first_epoch else None, at_safe_point
      )
    trained = []
    for i in np.flatnonzero(active):
      if diverged[i] is not None:
        if single:
          raise TrainingDiverged(
            f"{diverged[i]}; the last good checkpoint, epoch {progresses[i].epoch}, is kept in "
            f"{pathlib.Path(member_dirs[i]) / 'checkpoints'}"
          )
        progresses[i] = dataclasses.replace(progresses[i], stopped=f"diverged: {diverged[i]}")
        say(i, f"stopped: {progresses[i].stopped}")
        continue
      row = {
        "epoch": epoch,
        **rows[i],
        **{f"val_{name}": None for name in ("loss", *metrics.METRICS)},
        "learning_rate": optim.current_learning_rate(state.opt_state, trainer.relative_rate, int(state.step[i]), i),
      }
      variables = member(state.evaluated_variables(), i)
      if len(trainer.dataset.validation):
        val = evaluate(trainer, variables, "validation")
        row.update({f"val_{name}": val[name] for name in ("loss", *metrics.METRICS)})
      trained.append((i, row, variables))
    # The population's epoch, every member's validation included: what each member's epoch cost.
    epoch_seconds = time.perf_counter() - epoch_start
    for i, row, variables in trained:
      row["epoch_seconds"] = epoch_seconds
      improved = row["val_accuracy"] is None or row["val_accuracy"] > progresses[i].best_val_accuracy
      if improved:
        best_variables[i] = jax.tree.map(jnp.copy, variables)
      progresses[i] = progresses[i].after_epoch(row, improved)
      if distributed.is_primary():
        with open(metrics_files[i], "a") as f:
          f.write(json.dumps(row) + "\n")
      boards.scalars(i, epoch * spe, {k: v for k, v in row.items() if k != "epoch"}, "epoch")
      say(i, _epoch_line(row, config.num_epochs))
      reason = on_epoch(i, row) if on_epoch is not None else None
      if reason:
        progresses[i] = dataclasses.replace(progresses[i], stopped=reason)
      progresses[i] = _early_stopped(progresses[i], members[i])
      if progresses[i].stopped:
        say(i, progresses[i].stopped)
    stopped_now = any(progresses[i].stopped for i in np.flatnonzero(active))
    (signum,) = distributed.agreed_max(signals.requested() or 0)
    if epoch % config.checkpoint.every_epochs == 0 or epoch == config.num_epochs or stopped_now or signum:
      checkpoint.save(manager, state, tuple(progresses), members)
      workdirs.held_for_tests("checkpoint", first=lambda: checkpoint.finish(manager))
      (signum,) = distributed.agreed_max(signals.requested() or 0)
    if signum:
      signals.stop(int(signum), f"epoch {epoch} is saved", distributed.leave)
  return state, tuple(progresses), best_variables


def resume(trainer: Trainer, state: steps.TrainState, manager, within_manager, workdir, log=print):
  """(stacked state, each member's Progress, the Place within the next epoch or None): the newest readable
  checkpoint's, within an epoch or after one, with the configs' learning rates and weight decays; or a fresh start."""
  restored = checkpoint.restore_latest(manager, state, trainer.members)
  within = checkpoint.restore_place(within_manager, state, trainer.members)
  finished_epochs = 0 if restored is None else max(p.epoch for p in restored[1])
  if within is not None and within[2].epoch > finished_epochs:  # else its epoch finished and was saved since
    state, progresses, place = within
    state = state.replace(opt_state=optim.with_members_hyperparams(state.opt_state, trainer.members))
    log(f"resuming epoch {place.epoch} at its step {place.step} of {trainer.steps_per_epoch} in {workdir}")
    return meshes.replicate(state, trainer.mesh), progresses, place
  if restored is None:
    return state, (checkpoint.Progress(),) * len(trainer.members), None
  state, progresses = restored
  epoch = max(p.epoch for p in progresses)
  if epoch > trainer.config.num_epochs:
    raise UserError(
      f"{workdir} has trained {epoch} epochs already, more than num_epochs="
      f"{trainer.config.num_epochs}; pass --config.num_epochs={epoch} or more to resume it, "
      "or --restart to start over"
    )
  state = state.replace(opt_state=optim.with_members_hyperparams(state.opt_state, trainer.members))
  log(f"resuming from epoch {epoch} (step {int(state.step.max())}) in {workdir}")
  return meshes.replicate(state, trainer.mesh), progresses, None


def _epoch_line(row, num_epochs):
  names = ("loss", *metrics.METRICS)
  train = "  ".join(f"{name} {row[f'train_{name}']:.4f}" for name in names)
  val = "" if row["val_accuracy"] is None else "".join(f"  val_{name} {row[f'val_{name}']:.4f}" for name in names)
  return (
    f"epoch {row['epoch']:>3}/{num_epochs}  {train}{val}  lr {row['learning_rate']:.2e}  {row['epoch_seconds']:.1f}s"
  )
