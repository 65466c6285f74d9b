"""Image transforms that run on the device inside the compiled train step: standardising and augmentation."""

import functools

import jax
import jax.numpy as jnp


def standardize(x, mean, std, dtype=jnp.float32):
  """Images scaled to [0, 1], standardised per channel and cast to the compute dtype."""
  return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


def _gaussian(field, sigma, radius):
  """A 2-D field blurred by a Gaussian of `sigma` pixels (traced or not), cut at `radius` (separable, zero outside)."""
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / jnp.maximum(sigma, 1e-3)) ** 2)
  taps = taps / taps.sum()
  field = jax.scipy.signal.convolve2d(field, taps[:, None], mode="same")
  return jax.scipy.signal.convolve2d(field, taps[None, :], mode="same")


def _stroke_width(image, change):
  """Strokes thickened (change > 0) or thinned (< 0) by up to one pixel each side: a blend towards a 3x3
  grey dilation or erosion, so fractional changes are smooth."""
  window = lambda op, init: jax.lax.reduce_window(image, init, op, (3, 3, 1), (1, 1, 1), "SAME")
  target = jnp.where(change > 0, window(jax.lax.max, -jnp.inf), window(jax.lax.min, jnp.inf))
  return image + jnp.abs(change) * (target - image)


def _stroke(rows, cols, start, end, width):
  """An anti-aliased straight stroke `width` pixels wide from `start` to `end` ((row, col) pairs)."""
  (r0, c0), (r1, c1) = start, end
  along = ((rows - r0) * (r1 - r0) + (cols - c0) * (c1 - c0)) / ((r1 - r0) ** 2 + (c1 - c0) ** 2 + 1e-6)
  t = jnp.clip(along, 0.0, 1.0)
  distance = jnp.hypot(rows - (r0 + t * (r1 - r0)), cols - (c0 + t * (c1 - c0)))
  return jnp.clip(width / 2 + 0.5 - distance, 0.0, 1.0)


def _inked(image, cols):
  """A digit's ink (above 0.3), its top and bottom inked rows, and the mean column of the ink in a row."""
  ink = image[..., 0] > 0.3
  inked_rows = ink.any(1)
  top, bottom = jnp.argmax(inked_rows), image.shape[0] - 1 - jnp.argmax(inked_rows[::-1])
  centre = lambda row: (ink[row] * cols[0]).sum() / jnp.maximum(ink[row].sum(), 1)
  return ink, top, bottom, centre


def _european_one(rng, image, rows, cols):
  """A 1 written the European way: a flag down-left from the top of its stem, short or long, steep or flat, and half
  of the time a base stroke under it."""
  _, top, bottom, centre = _inked(image, cols)
  base_rng, flag_rng, angle_rng, width_rng, based_rng = jax.random.split(rng, 5)
  half_base = jax.random.uniform(base_rng, minval=2.5, maxval=5.5)
  flag = jax.random.uniform(flag_rng, minval=3.0, maxval=8.0)
  angle = jnp.deg2rad(jax.random.uniform(angle_rng, minval=25.0, maxval=60.0))  # below the horizontal: flatter is a 7
  width = jax.random.uniform(width_rng, minval=1.5, maxval=2.5)
  base = _stroke(rows, cols, (bottom, centre(bottom) - half_base), (bottom, centre(bottom) + half_base), width)
  base = base * jax.random.bernoulli(based_rng)
  flag_end = (top + flag * jnp.sin(angle), centre(top) - flag * jnp.cos(angle))
  flagged = _stroke(rows, cols, (top, centre(top)), flag_end, width)
  return jnp.maximum(image, jnp.maximum(base, flagged)[..., None])


def _crossed_seven(rng, image, rows, cols):
  """A 7 with a bar across its stem half way down, as it is written in much of Europe."""
  ink, top, bottom, centre = _inked(image, cols)
  height_rng, half_rng, tilt_rng, width_rng = jax.random.split(rng, 4)
  row = jnp.round(top + jax.random.uniform(height_rng, minval=0.4, maxval=0.6) * (bottom - top)).astype(jnp.int32)
  stem = centre(row)
  half = jax.random.uniform(half_rng, minval=2.5, maxval=5.0)
  tilt = jax.random.uniform(tilt_rng, minval=-1.0, maxval=1.0)
  width = jax.random.uniform(width_rng, minval=1.5, maxval=2.5)
  bar = _stroke(rows, cols, (row + tilt, stem - half), (row - tilt, stem + half), width)
  return jnp.where(ink[row].any(), jnp.maximum(image, bar[..., None]), image)


def _closed_four(rng, image, rows, cols):
  """A 4 with its top closed: a stroke from the top of its left arm across to its stem, as many people write it."""
  ink, _, bottom, _ = _inked(image, cols)
  centroid = lambda mask: (mask * cols).sum() / jnp.maximum(mask.sum(), 1)
  stem_foot = centroid(ink & (rows >= bottom - 3))  # below the crossbar only the stem has ink
  arm, stem = ink & (cols < stem_foot - 3), ink & (cols >= stem_foot - 3)
  arm_top, stem_top = jnp.argmax(arm.any(1)), jnp.argmax(stem.any(1))
  stem_top_col = centroid(stem & (rows == stem_top))
  end_row = jnp.maximum(arm_top, stem_top) + jax.random.uniform(jax.random.fold_in(rng, 0), minval=-1.0, maxval=1.0)
  end_col = stem_top_col + (end_row - stem_top) / jnp.maximum(bottom - stem_top, 1) * (stem_foot - stem_top_col)
  width = jax.random.uniform(jax.random.fold_in(rng, 1), minval=1.5, maxval=2.5)
  top = _stroke(rows, cols, (arm_top, centroid(arm & (rows == arm_top))), (end_row, end_col), width)
  return jnp.where(arm.any(), jnp.maximum(image, top[..., None]), image)


# Digits written as MNIST's American writers rarely wrote them: (config key, class, renderer).
WRITTEN_OTHERWISE = (
  ("european_ones", 1, _european_one),
  ("closed_fours", 4, _closed_four),
  ("crossed_sevens", 7, _crossed_seven),
)


def _distort_one(rng, image, label, a):
  shift_rng, angle_rng = jax.random.split(rng)
  uniform = lambda k, limit, shape=(): jax.random.uniform(
    jax.random.fold_in(rng, k), shape, minval=-limit, maxval=limit
  )
  shift = jax.random.uniform(shift_rng, (2,), minval=-a["max_shift"], maxval=a["max_shift"])
  angle = jax.random.uniform(angle_rng, (), minval=-a["max_rotation"], maxval=a["max_rotation"])
  h, w, _ = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  for k, (key, digit, render) in enumerate(WRITTEN_OTHERWISE):
    if a[key]:
      chosen = (label == digit) & jax.random.bernoulli(jax.random.fold_in(rng, 13 + 2 * k), a[key])
      image = jnp.where(chosen, render(jax.random.fold_in(rng, 14 + 2 * k), image, rows, cols), image)
  # Each output pixel samples the input at the inverse-distorted position; the pieces not asked for are left out of
  # the program, so 'digits' with shifts and rotations alone samples exactly as it always has.
  r, c = rows - (h - 1) / 2 - shift[0], cols - (w - 1) / 2 - shift[1]
  if a["max_scale"] or a["max_aspect"]:
    scale, aspect = jnp.exp(uniform(1, a["max_scale"])), jnp.exp(uniform(2, a["max_aspect"]))
    r, c = r / (scale * aspect), c * aspect / scale
  if a["max_shear"]:
    c = c - uniform(3, a["max_shear"]) * r  # slant: rows further down move sideways
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  source = [cos * r - sin * c + (h - 1) / 2, sin * r + cos * c + (w - 1) / 2]
  if a["elastic"]:
    # Simard et al. (2003): a random displacement field, smoothed; scaled here to `elastic` pixels' std at most.
    radius = max(1, int(round(2 * a["elastic_sigma"])))
    fields = [_gaussian(uniform(4 + k, 1.0, (h, w)), a["elastic_sigma"], radius) for k in range(2)]
    magnitude = a["elastic"] * jax.random.uniform(jax.random.fold_in(rng, 6))
    source = [s + magnitude * f / (f.std() + 1e-6) for s, f in zip(source, fields)]
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, source, order=1, mode="constant", cval=0.0)
  image = jax.vmap(sample, in_axes=2, out_axes=2)(image)
  if a["max_stroke"]:
    image = _stroke_width(image, uniform(7, a["max_stroke"]))
  if a["max_blur"]:
    sigma = a["max_blur"] * jax.random.uniform(jax.random.fold_in(rng, 8))
    blur = functools.partial(_gaussian, sigma=sigma, radius=2)  # max_blur <= 1.2 px: a 5x5 kernel holds it
    image = jax.vmap(blur, in_axes=2, out_axes=2)(image)
  if a["min_contrast"] < 1:
    contrast = jax.random.uniform(jax.random.fold_in(rng, 9), minval=a["min_contrast"], maxval=1.0)
    image = contrast * image + (1 - contrast) * jax.random.uniform(jax.random.fold_in(rng, 10))
  if a["max_noise"]:
    noise = a["max_noise"] * jax.random.uniform(jax.random.fold_in(rng, 11))
    image = image + noise * jax.random.normal(jax.random.fold_in(rng, 12), image.shape)
  return jnp.clip(image, 0.0, 1.0) if a["max_noise"] or a["max_stroke"] else image


def distort(rng, images, labels, **amounts):
  """Digits: each image shifted, rotated, scaled, slanted, elastically distorted, its strokes thickened or thinned,
  blurred, its contrast lowered and noise added, each by a random amount up to its limit (augment.* in the config);
  a share of the 1s (class 1) first get a European flag (and half of them a base stroke), a share of the 4s a closed
  top and a share of the 7s a crossed stem."""
  amounts["max_rotation"] = jnp.deg2rad(amounts["max_rotation"])
  rngs = jax.random.split(rng, images.shape[0])
  return jax.vmap(functools.partial(_distort_one, a=amounts))(rngs, images, labels)


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


DIGIT_AMOUNTS = (
  "max_shift",
  "max_rotation",
  "max_scale",
  "max_aspect",
  "max_shear",
  "elastic",
  "elastic_sigma",
  "max_stroke",
  "max_blur",
  "min_contrast",
  "max_noise",
  "european_ones",
  "closed_fours",
  "crossed_sevens",
)


def make(config):
  """rng, images, labels -> augmented images, or None when the config asks for no augmentation."""
  a = config.augment
  if a.name == "digits":
    return functools.partial(distort, **{key: a[key] for key in DIGIT_AMOUNTS})
  if a.name == "cifar":
    return lambda rng, images, labels: pad_crop_flip(rng, images, padding=a.crop_padding)
  return None
