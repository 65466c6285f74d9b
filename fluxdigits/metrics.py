"""What a run measures besides its loss: each metric is a function of (logits, labels) giving one value per example.

The train step sums them over its batch, evaluation over a split; the loop divides by the examples seen. Adding
one is a function here and a line in METRICS: it reaches metrics.jsonl (train_NAME, val_NAME), the progress line,
summary.json (test_NAME) and the report, with no edit to the loop. `accuracy` is the one runs are chosen by.
The functions use array methods only, so they run on jax arrays in a step and on numpy arrays on the host.
"""


def accuracy(logits, labels):
  return logits.argmax(-1) == labels


METRICS = {"accuracy": accuracy}


def sums(logits, labels) -> dict:
  """{name: the batch's sum of the metric}."""
  return {name: fn(logits, labels).sum() for name, fn in METRICS.items()}
