"""Image transforms that run on the device inside the compiled train step: standardising and augmentation."""

import functools

import jax
import jax.numpy as jnp


def standardize(x, mean, std, dtype=jnp.float32):
  """Images scaled to [0, 1], standardised per channel and cast to the compute dtype."""
  return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


def _shift_rotate_one(rng, image, max_shift, max_rotation_rad):
  shift_rng, angle_rng = jax.random.split(rng)
  shift = jax.random.uniform(shift_rng, (2,), minval=-max_shift, maxval=max_shift)
  angle = jax.random.uniform(angle_rng, (), minval=-max_rotation_rad, maxval=max_rotation_rad)
  h, w, _ = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  # Each output pixel samples the input at the inverse-rotated, inverse-shifted position.
  r, c = rows - (h - 1) / 2 - shift[0], cols - (w - 1) / 2 - shift[1]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  source = jnp.stack([cos * r - sin * c + (h - 1) / 2, sin * r + cos * c + (w - 1) / 2])
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, list(source), order=1, mode="constant", cval=0.0)
  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


def shift_rotate(rng, images, max_shift, max_rotation):
  """Digits: a random sub-pixel shift of up to `max_shift` pixels and a rotation of up to `max_rotation` degrees."""
  rngs = jax.random.split(rng, images.shape[0])
  one = functools.partial(_shift_rotate_one, max_shift=max_shift, max_rotation_rad=jnp.deg2rad(max_rotation))
  return jax.vmap(one)(rngs, images)


def pad_crop_flip(rng, images, padding):
  """CIFAR: reflect-pad by `padding`, crop back at a random offset, flip left-right half of the time."""
  n, h, w, _ = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode="reflect")
  offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * padding + 1)
  crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))
  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_rng, 0.5, (n, 1, 1, 1))
  return jnp.where(flip, cropped[:, :, ::-1], cropped)


def make(config):
  """rng, images -> augmented images, or None when the config asks for no augmentation."""
  a = config.augment
  if a.name == "digits":
    return functools.partial(shift_rotate, max_shift=a.max_shift, max_rotation=a.max_rotation)
  if a.name == "cifar":
    return functools.partial(pad_crop_flip, padding=a.crop_padding)
  return None
