"""fluxdigits: image classification with JAX and Flax, fast, reproducible and resumable."""
