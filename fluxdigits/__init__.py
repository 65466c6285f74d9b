"""fluxdigits: image classification with JAX and Flax, fast, reproducible and resumable."""


def load_classifier(workdir):
  """A finished run as a classifier: `.predict(paths or uint8 images)` -> (N, classes) probabilities."""
  from fluxdigits.predict import load_classifier as load

  return load(workdir)
