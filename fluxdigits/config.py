"""Experiment configs: the defaults, loading an experiment file, command-line overrides, validation.

An experiment file in `experiments/` defines `get_config()`, which starts from `defaults()` and
changes what the experiment needs. Every key a run understands exists in `defaults()`, so a typo
on the command line is caught instead of silently ignored.
"""

import copy
import importlib.util
import math
import os
import pathlib

import ml_collections
from absl import flags
from ml_collections import config_flags

from fluxdigits.errors import UserError

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "one_cycle")
AUGMENTATIONS = ("none", "digits", "cifar")
PHOTO_READERS = ("fit", "digit", "object")
AUTO_SWITCHES = ("auto", "true", "false")
# Set to 1 (as the README test does) to shrink every command-line run to a smoke test: see smoke_budget().
SMOKE_ENV = "FLUXDIGITS_SMOKE"
SMOKE_TRAIN_EXAMPLES = 2000
SMOKE_TRIALS = 2  # a tuning command's --trials under FLUXDIGITS_SMOKE=1


def smoke() -> bool:
  """FLUXDIGITS_SMOKE=1: every command runs end to end on a tiny budget (the README's test sets it)."""
  return os.environ.get(SMOKE_ENV) == "1"


def defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 5
  c.batch_size = 32
  c.eval_batch_size = 128  # a batch whose activations stay in a CPU's caches: evaluation up to 2.6x faster than at 1000
  c.validation_fraction = 0.1
  # Training steps fused into one compiled call (a lax.scan), which removes per-step dispatch cost: as many as take
  # about seconds_per_call (a power of two, measured as the run goes), at most steps_per_call. A signal is answered
  # and the progress bar moves between calls.
  c.steps_per_call = 200
  c.seconds_per_call = 1.0
  # Compute each batch's gradient in this many equal slices, one after another, and average them:
  # the same gradient (dropout masks aside), with a working set that fits a CPU's cache. Not for
  # BatchNorm models, whose statistics would be each slice's (benchmarks/NOTES.md, "Microbatches").
  c.microbatches = 1
  # On a CPU, split each batch over one JAX device per core: 'auto' follows the model's
  # cpu_batch_split (models.py); long steps of narrow layers gain, short ones lose.
  c.split_batch_over_cpu_cores = "auto"
  # Step a population's members together under jax.vmap ('true') or one after another ('false');
  # 'auto': vmap on accelerators, and on a CPU where the model declares vectorize_members.
  c.vectorize_members = "auto"
  # Stop after this many epochs without a better validation accuracy; 0 never stops early.
  c.patience = 0
  c.label_smoothing = 0.0
  # Evaluate an exponential moving average of the weights (val, best checkpoint, test, report);
  # 0 evaluates the raw weights, as Keras and PyTorch do. Chosen on validation accuracy:
  # benchmarks/NOTES.md ("Weight averaging").
  c.ema_decay = 0.999
  # Evaluate each image and its mirror image and average the logits (validation, test, report).
  c.test_time_flip = False
  # bf16 activations and matmuls, f32 parameters and optimizer state. 'auto': where the hardware computes in bf16
  # (GPU, TPU, a CPU with AMX or AVX512-BF16); other CPUs emulate it, slower than float32.
  c.mixed_precision = "false"
  # Write WORKDIR/report/ at the end of the run.
  c.report = True
  # Write TensorBoard event files to WORKDIR/tb/: curves as the run trains, hyperparameters, the report's pictures.
  c.tensorboard = True
  # Trace this many train steps (whole compiled calls) after the first call with jax.profiler into WORKDIR/tb/,
  # for TensorBoard's profile plugin; 0 traces nothing.
  c.profile_steps = 0

  c.dataset = ml_collections.ConfigDict()
  # Any tfds image-classification dataset ('mnist', 'fashion_mnist', 'cifar10', ...), 'folder'
  # (DIR/train/<class>/*, DIR/test/<class>/*: images Pillow reads) or 'idx' (MNIST's IDX files).
  c.dataset.name = "mnist"
  # Where tfds finds prepared datasets; '' means $TFDS_DATA_DIR, else tfds' default.
  # For 'folder' and 'idx': the folder holding the data.
  c.dataset.data_dir = ""
  # Images brought to one size (image_size x image_size) and channels (1 or 3); 0 keeps the files' own,
  # which must then agree.
  c.dataset.image_size = 0
  c.dataset.channels = 0
  # Standardise each channel by the training images' mean and std (else pixels are scaled to [0, 1]).
  c.dataset.standardize = False
  # How predict makes a photo into an input: 'fit' (crop to the aspect ratio, resize), 'digit' (MNIST's
  # way: the ink isolated, a 20 px box centred by mass) or 'object' (Fashion-MNIST's: bright on black).
  c.dataset.photos = "fit"
  # Keep decoded arrays under ~/.cache/fluxdigits: decoding a dataset's PNGs again each run is slow.
  c.dataset.cache = True
  # Train on the first N training examples only (0: all of them): quick trials and tests.
  c.dataset.max_train_examples = 0
  # Test on the first N test examples only (0: all of them): a quick trial's evaluation, of a slow model.
  c.dataset.max_test_examples = 0

  c.augment = ml_collections.ConfigDict()
  c.augment.name = "none"
  c.augment.max_shift = 2  # pixels, for 'digits'
  c.augment.max_rotation = 10.0  # degrees, for 'digits'
  # The rest of 'digits', off at 0: the variation of other writers, pens and cameras (experiments/mnist_handwriting.py).
  c.augment.max_scale = 0.0  # log of the size factor
  c.augment.max_aspect = 0.0  # log of the height-to-width change
  c.augment.max_shear = 0.0  # slant: sideways pixels per pixel down
  c.augment.elastic = 0.0  # pixels (std) of a smooth random displacement field
  c.augment.elastic_sigma = 4.0  # pixels: the field's smoothness
  c.augment.max_stroke = 0.0  # of a pixel each side: strokes thickened or thinned
  c.augment.max_blur = 0.0  # Gaussian sigma in pixels, at most 1.2
  c.augment.min_contrast = 1.0  # ink-to-paper contrast down to this fraction, on a random grey
  c.augment.max_noise = 0.0  # std of Gaussian noise, on the [0, 1] scale
  c.augment.european_ones = 0.0  # share of class 1 given a flag (half of them a base stroke), as in Europe
  c.augment.closed_fours = 0.0  # share of class 4 given a closed top
  c.augment.crossed_sevens = 0.0  # share of class 7 given a bar across the stem, as in Europe
  c.augment.pen_traced = 0.0  # share of the training digits traced by a thin pen and prepared as photos are, once
  c.augment.crop_padding = 4  # pixels, for 'cifar'

  c.model = ml_collections.ConfigDict()
  # A built-in model (models.BUILTIN), or your own flax.linen.Module: FILE.py:CLASS or package.module:CLASS.
  c.model.name = "cnn"
  # Fills a model's dropout_rate field (cnn_dropout, cnn_deep); a population may vary it.
  c.model.dropout_rate = 0.25
  # The model's other constructor arguments, e.g. depth=18 for resnet, width=16 for airbench.
  c.model.kwargs = ml_collections.ConfigDict()

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.0
  c.optimizer.momentum = 0.9  # momentum only
  c.optimizer.nesterov = False
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.rms_decay = 0.9  # rmsprop only
  c.optimizer.eps = 1e-7  # Keras' default, so recipes carried over from notebooks match

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "constant"
  c.schedule.warmup_epochs = 0.0
  c.schedule.one_cycle_pct_start = 0.25

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_epochs = 1
  c.checkpoint.keep = 3
  # Also save the place within an epoch this often (long epochs of large datasets); 0 saves it only when stopped.
  c.checkpoint.every_minutes = 0.0
  return c


def load(path: str) -> ml_collections.ConfigDict:
  """Runs an experiment file's `get_config()`."""
  return config_from(load_module(path), path)


def load_module(path: str, kind: str = "experiment"):
  """Executes an experiment file (or a sweep file, which is one too) as a module."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise UserError(f"{kind} file {str(path)!r} not found; pass a path such as {kind}s/mnist_cnn.py")
  spec = importlib.util.spec_from_file_location(f"fluxdigits_{kind}_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except (Exception, SystemExit) as e:  # a file calling sys.exit() must not end the command with 0
    raise UserError(f"{kind} file {str(path)!r} failed to load: {type(e).__name__}: {e}") from None
  return module


def config_from(module, path) -> ml_collections.ConfigDict:
  """The module's `get_config()`, checked to be a ConfigDict."""
  if not callable(getattr(module, "get_config", None)):
    raise UserError(f"{str(path)!r} has no get_config() function returning a ConfigDict")
  try:
    config = module.get_config()
  except (Exception, SystemExit) as e:
    raise UserError(
      f"{path}: get_config() failed ({type(e).__name__}: {e}); it must take no arguments and return "
      "fluxdigits.config.defaults() with the experiment's changes"
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"{path}: get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}")
  return config


def override(config: ml_collections.ConfigDict, assignments: list[str]) -> ml_collections.ConfigDict:
  """A copy of `config` with `key.path=value` assignments applied by ml_collections' config_flags, each value
  parsed as the key's default type; keys under model.kwargs may be new (a model's constructor arguments), their
  values Python literals or text. An unknown key is left for validate() to name."""
  config = copy.deepcopy(config)
  for assignment in assignments:
    if "=" not in assignment:
      raise UserError(f"override {assignment!r} has no '='; write --config.{assignment}=VALUE")
  argv = ["fluxdigits"] + [f"--config.{assignment}" for assignment in assignments]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict(
    "config", config, flag_values=flag_values, lock_config=False, accept_new_attributes=True, sys_argv=argv
  )
  try:
    flag_values(argv)
  except flags.IllegalFlagValueError as e:  # "flag --config.KEY=VALUE: why"
    key, _, text = str(e).removeprefix("flag --config.").partition(": ")[0].partition("=")
    expected = TYPE_NAMES.get(type(_get(config, key)), "a value of the default's type")
    raise UserError(f"bad value for config key {key!r}: expected {expected}, got {text!r}") from None
  except (flags.Error, KeyError) as e:  # a path through a key that holds a value, not a group of keys
    raise UserError(
      f"cannot apply --config overrides {', '.join(assignments)}: {e}; known keys: {', '.join(flatten(config))}"
    ) from None
  return flag_values.config


def _flat_keys(config, prefix=""):
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += _flat_keys(value, f"{prefix}{key}.")
    else:
      keys.append(f"{prefix}{key}")
  return keys


def flatten(config: ml_collections.ConfigDict) -> dict:
  """{'model.name': 'cnn', ...}: how configs are compared and shown."""
  return {key: _get(config, key) for key in _flat_keys(config)}


def from_flat(flat: dict) -> ml_collections.ConfigDict:
  """The inverse of flatten(): a validated config from a run's config.json."""
  config = ml_collections.ConfigDict()
  for key, value in flat.items():
    if key == "mixed_precision" and isinstance(value, bool):  # a run written before the key took 'auto'
      value = str(value).lower()
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    node[leaf] = value
  return validate(config)


def switch(value: str, auto: bool) -> bool:
  """An 'auto' / 'true' / 'false' key's value, as a bool."""
  return auto if value == "auto" else value == "true"


def _get(config, key):
  for part in key.split("."):
    config = config[part]
  return config


def _one_of(choices):
  return lambda value: value in choices, "one of: " + ", ".join(choices)


def _at_least(low):
  return lambda value: value >= low, f"at least {low}"


def _within(low, high, closed=False, why=""):
  """[low, high), or [low, high] when closed."""
  return (
    lambda value: low <= value <= high if closed else low <= value < high,
    f"in [{low}, {high}{']' if closed else ')'}{why}",
  )


# The rules a validated config keeps: key -> (test of its value, what it must be). validate() checks the keys'
# types against defaults() first; each broken rule is one line, "KEY must be WHAT, got VALUE".
RULES = {
  "optimizer.name": _one_of(OPTIMIZERS),
  "schedule.name": _one_of(SCHEDULES),
  "augment.name": _one_of(AUGMENTATIONS),
  "dataset.photos": _one_of(PHOTO_READERS),
  "split_batch_over_cpu_cores": _one_of(AUTO_SWITCHES),
  "vectorize_members": _one_of(AUTO_SWITCHES),
  "mixed_precision": _one_of(AUTO_SWITCHES),
  "seed": (lambda value: 0 <= value < 2**32, "in [0, 2**32) (jax.random.key and numpy take unsigned 32-bit seeds)"),
  **{
    key: _at_least(1)
    for key in (
      "num_epochs",
      "batch_size",
      "microbatches",
      "eval_batch_size",
      "steps_per_call",
      "checkpoint.every_epochs",
      "checkpoint.keep",
    )
  },
  "profile_steps": (lambda value: value >= 0, ">= 0 (0 traces nothing)"),
  "seconds_per_call": (lambda value: value > 0, "> 0"),
  "checkpoint.every_minutes": (lambda value: value >= 0, ">= 0 (0 saves within an epoch only when stopped)"),
  "validation_fraction": _within(0, 1),
  "dataset.max_train_examples": (lambda value: value >= 0, ">= 0 (0 uses every example)"),
  "dataset.max_test_examples": (lambda value: value >= 0, ">= 0 (0 uses every example)"),
  "dataset.image_size": (lambda value: value >= 0, ">= 0 (0 keeps the images' own)"),
  "dataset.channels": (lambda value: value in (0, 1, 3), "1 (grayscale), 3 (RGB) or 0 (the images' own)"),
  "patience": (lambda value: value >= 0, ">= 0 (0 turns early stopping off)"),
  "model.dropout_rate": _within(0, 1),
  "ema_decay": _within(0, 1, why=" (0 turns weight averaging off)"),
  "label_smoothing": _within(0, 1),
  "optimizer.learning_rate": (lambda value: value > 0, "> 0"),
  "optimizer.weight_decay": (lambda value: value >= 0, ">= 0"),
  "schedule.one_cycle_pct_start": _within(0, 1),
  "augment.max_shift": (lambda value: value >= 0, ">= 0 pixels"),
  "augment.crop_padding": (lambda value: value >= 0, ">= 0 pixels"),
  **{
    f"augment.{key}": (lambda value: value >= 0, ">= 0 (0 leaves it out)")
    for key in ("max_scale", "max_aspect", "max_shear", "elastic", "max_noise")
  },
  "augment.elastic_sigma": (lambda value: value > 0, "> 0 pixels"),
  "augment.max_stroke": _within(0, 1, closed=True, why=" pixels each side"),
  "augment.max_blur": _within(0, 1.2, closed=True, why=" pixels"),
  "augment.european_ones": _within(0, 1, closed=True, why=": a share of the class"),
  "augment.closed_fours": _within(0, 1, closed=True, why=": a share of the class"),
  "augment.crossed_sevens": _within(0, 1, closed=True, why=": a share of the class"),
  "augment.pen_traced": _within(0, 1, closed=True, why=": a share of the training digits"),
  "augment.min_contrast": (lambda value: 0 < value <= 1, "in (0, 1] (1 leaves it out)"),
  "dataset.name": (bool, "a tfds dataset's name, 'folder' or 'idx'"),
}
# Rules between keys: (test of the config, the one line saying what is wrong and how to fix it).
JOINT_RULES = (
  (
    lambda c: c.batch_size % c.microbatches == 0,
    "batch_size={c.batch_size} is not divisible by microbatches={c.microbatches}; use a divisor of the batch size",
  ),
  (
    lambda c: 0 <= c.schedule.warmup_epochs < c.num_epochs,
    "schedule.warmup_epochs must be in [0, num_epochs={c.num_epochs}), got {c.schedule.warmup_epochs}",
  ),
  (
    lambda c: c.patience == 0 or c.validation_fraction > 0,
    "patience > 0 needs a validation split: set validation_fraction > 0",
  ),
)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks keys and types against `defaults()`, then RULES and JOINT_RULES; returns a config of every key, locked."""
  reference = flatten(defaults())
  given = flatten(config)
  kwargs = {key: value for key, value in given.items() if key.startswith("model.kwargs.")}
  unknown = sorted(set(given) - set(reference) - set(kwargs))
  if unknown:
    raise UserError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(reference)}")
  for key, value in given.items():
    if key in kwargs:
      _require(
        key.count(".") == 2 and _is_literal(value),
        f"config key {key!r} must be a number, text, true/false or a list of them, got {value!r}",
      )
      continue
    expected = type(reference[key])
    ok = isinstance(value, expected) and (expected is not int or not isinstance(value, bool))
    ok = ok or (expected is float and isinstance(value, int) and not isinstance(value, bool))
    _require(ok, f"config key {key!r} must be {TYPE_NAMES.get(expected, expected.__name__)}, got {value!r}")
    _require(
      not isinstance(value, float) or math.isfinite(value), f"config key {key!r} must be a finite number, got {value!r}"
    )
  config = defaults()  # every key, with the given values over the defaults
  for key, value in given.items():
    *parents, leaf = key.split(".")
    node = _get(config, ".".join(parents)) if parents else config
    node[leaf] = value if key in kwargs else float(value) if isinstance(reference[key], float) else value
  config.model.name = _absolute_model_file(config.model.name)
  for key, (test, must_be) in RULES.items():
    _require(test(_get(config, key)), f"{key} must be {must_be}, got {_get(config, key)!r}")
  for test, message in JOINT_RULES:
    _require(test(config), message.format(c=config))
  from fluxdigits import registry  # imports flax: only once the keys are known good

  registry.check_kwargs(config)
  config.lock()
  return config


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _require(ok: bool, message: str):
  if not ok:
    raise UserError(message)


def _is_literal(value) -> bool:
  if isinstance(value, (list, tuple)):
    return all(_is_literal(v) for v in value)
  return isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value))


def _absolute_model_file(name: str) -> str:
  """FILE.py:CLASS with FILE made absolute, so that the run's config.json names it from any folder."""
  where, sep, attribute = name.rpartition(":")
  if sep and where.endswith(".py"):
    return f"{pathlib.Path(where).expanduser().absolute()}:{attribute}"
  return name


def smoke_budget(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """With FLUXDIGITS_SMOKE=1, one epoch on 2,000 examples: every command still runs end to end, in seconds.

  Command lines (fluxdigits.run, and tools built on it) call this after validate(); a run's
  recorded config.json is never shrunk.
  """
  if not smoke():
    return config
  config = ml_collections.ConfigDict(config)
  config.num_epochs = 1
  config.schedule.warmup_epochs = 0.0
  config.dataset.max_train_examples = min(
    config.dataset.max_train_examples or SMOKE_TRAIN_EXAMPLES, SMOKE_TRAIN_EXAMPLES
  )
  return validate(config)
