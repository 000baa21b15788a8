"""A planted-truth world: a tiny generator whose concept units are known by construction.

Dissection and causal search can only be tested end to end if we know the right answer. This
module hand-builds a generator that follows the model protocol and an exact colour segmenter for
its images. In `layer2` (8x8 cells, 8 units) unit 3 fires on one z-dependent cell and is the only
cause of red pixels, unit 5 likewise of green and unit 7 of blue (`PLANTED`). Each colour covers
about 1% of all pixels (0.99%), the default top quantile of dissection, so a dissection at
q = 0.01 should find each planted unit with IoU close to 1. The other units are distractors that
never reach the image; unit 1 is a decoy that correlates with red without causing it (red's field
shifted one cell diagonally): red's runner-up by IoU (about 0.013 against 0.005 for the
distractors) but below the interpretability threshold of 0.04.

The world, for `z [B, 512]` (read as an 8x8 grid of 8 channels):
  * `layer1 [B, 8, 8, 8]`: smooth random fields, a circular 3x3 box filter of the z grid scaled
    to unit variance (linear; no nonlinearity).
  * `layer2 [B, 8, 8, 8]`: colour unit k is 1 on the cell where field k peaks when the peak
    beats the threshold 1.8 and no colour with a higher peak claims that cell, else 0 (so
    colours never overlap). Upsampled bilinearly to 32x32, a fired cell's 16 pixels are all
    >= 0.39 and every pixel outside it <= 0.33, so the top 1% is exactly the coloured squares.
  * `layer3 [B, 32, 32, 3]` (the image): each cell is painted with the mean palette colour of its
    colour units weighted by their activations, blended over the grey background by
    `1 - exp(-4 * total activation)`, and upsampled x4 (nearest). With no colour unit active a cell
    is exactly the background; with one firing it is within 2% of that unit's colour.
So the red pixels are exactly the x4-upsampled cells where unit 3 > 0, ablating unit 3 removes
all red, and inserting unit 3 at a high level inside a mask makes the mask red.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxdissect.model import Edit, Generator, Segmenter, apply_edit, check_call

ZDIM = 512
LAYERS = ("layer1", "layer2", "layer3")
GRID = 8          # layer1/layer2 featuremaps are GRID x GRID
UNITS = 8         # channels of layer1 and layer2
SCALE = 4         # image pixels per cell side: images are 32x32
COLOUR_UNITS = (3, 5, 7)
PLANTED = {"red": ("layer2", 3), "green": ("layer2", 5), "blue": ("layer2", 7)}
DECOY = ("layer2", 1)
CONCEPTS = (("-", "none"), ("red", "color"), ("green", "color"), ("blue", "color"))

_BACKGROUND = (0.0, 0.0, 0.0)
_PALETTE = ((1.0, -1.0, -1.0), (-1.0, 1.0, -1.0), (-1.0, -1.0, 1.0))


def planted_params() -> dict[str, dict[str, jax.Array]]:
  """The fixed weights of the planted generator."""
  return {
      "layer1": {"kernel": jnp.full((3, 3), 1.0 / 3.0, jnp.float32)},
      "layer2": {"threshold": jnp.asarray(1.8, jnp.float32)},
      "layer3": {"palette": jnp.asarray(_PALETTE, jnp.float32),
                 "background": jnp.asarray(_BACKGROUND, jnp.float32),
                 "sharpness": jnp.asarray(4.0, jnp.float32)},
  }


def _fields(p: Mapping[str, jax.Array], z: jax.Array) -> jax.Array:
  """layer1: circular 3x3 filtering of the z grid, `[B, 8, 8, 8]`."""
  grid = z.reshape(z.shape[0], GRID, GRID, UNITS)
  out = jnp.zeros_like(grid)
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      out = out + p["kernel"][dy + 1, dx + 1] * jnp.roll(grid, (dy, dx), axis=(1, 2))
  return out


def _colour_units(f: jax.Array, threshold: jax.Array) -> jax.Array:
  """`[B, 8, 8, 3]`: colour k is 1 on the cell where field k peaks, if the peak beats the
  threshold and no other colour with a higher peak claims the same cell; else 0."""
  b = f.shape[0]
  fields = f[..., : len(COLOUR_UNITS)].reshape(b, GRID * GRID, len(COLOUR_UNITS))
  peak = jnp.max(fields, axis=1, keepdims=True)  # [B, 1, 3]
  claim = (fields == peak) & (peak > threshold)  # [B, cells, 3]
  score = jnp.where(claim, peak, -jnp.inf)
  wins = claim & (score == jnp.max(score, axis=-1, keepdims=True))
  return wins.astype(f.dtype).reshape(b, GRID, GRID, len(COLOUR_UNITS))


def _units(p: Mapping[str, jax.Array], f: jax.Array) -> jax.Array:
  """layer2: colour units from fields 0-2, distractors from fields 3-7, a decoy from field 0."""
  relu = jax.nn.relu
  units = {
      0: relu(f[..., 3]),
      1: relu(jnp.roll(f[..., 0], (1, 1), axis=(1, 2))),  # the decoy: red's field, shifted
      2: relu(-f[..., 4]),
      4: relu(f[..., 5] - 1.0),
      6: relu(f[..., 6]) * relu(f[..., 7]),
  }
  colours = _colour_units(f, p["threshold"])
  for k, u in enumerate(COLOUR_UNITS):
    units[u] = colours[..., k]
  return jnp.stack([units[u] for u in range(UNITS)], axis=-1)


def _paint(p: Mapping[str, jax.Array], units: jax.Array) -> jax.Array:
  """layer3: the image `[B, 32, 32, 3]` painted from the colour units only."""
  w = units[..., COLOUR_UNITS]
  total = jnp.sum(w, axis=-1, keepdims=True)
  mix = (w @ p["palette"]) / jnp.maximum(total, 1e-6)
  cover = 1.0 - jnp.exp(-p["sharpness"] * total)
  cells = p["background"] + cover * (mix - p["background"])
  return jnp.repeat(jnp.repeat(cells, SCALE, axis=1), SCALE, axis=2)


def planted_apply(params: Any, z: jax.Array, edits: Mapping[str, Edit] | None = None,
                  capture: Sequence[str] | str | None = None
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The protocol `apply_fn`: `z [B, 512] -> (image [B, 32, 32, 3], acts)`."""
  z, edits, names = check_call(z, ZDIM, edits, capture, LAYERS)
  acts, x = {}, z
  for name, fn in zip(LAYERS, (_fields, _units, _paint)):
    x = fn(params[name], x)
    if name in names:
      acts[name] = x
    x = apply_edit(x, edits.get(name), name)
  return x, acts


def make_planted_generator() -> Generator:
  """The planted generator (no randomness: the world is fixed, z supplies the variety)."""
  return Generator(planted_apply, planted_params(), LAYERS, (ZDIM,))


def _sq_distances(params: Mapping[str, jax.Array], images: jax.Array) -> jax.Array:
  """Squared distance of each pixel `[B, H, W, 3]` to each concept colour: `[B, H, W, K]`."""
  return jnp.sum(jnp.square(images[..., None, :] - params["colours"]), axis=-1)


def oracle_segment(params: Mapping[str, jax.Array], images: jax.Array) -> jax.Array:
  """Soft concept probabilities `[B, H, W, K]`: softmax of -distance^2 / temperature."""
  return jax.nn.softmax(-_sq_distances(params, images) / params["temperature"], axis=-1)


def oracle_labels(params: Mapping[str, jax.Array], images: jax.Array) -> jax.Array:
  """Exact labels `[B, H, W, 1]` int32: index of the nearest concept colour (0 = background)."""
  return jnp.argmin(_sq_distances(params, images), axis=-1)[..., None].astype(jnp.int32)


def make_oracle_segmenter(temperature: float = 0.05) -> Segmenter:
  """The colour oracle for the planted world; concept k is the k-th row of its colour table."""
  colours = jnp.asarray((_BACKGROUND,) + _PALETTE, jnp.float32)
  params = {"colours": colours, "temperature": jnp.asarray(temperature, jnp.float32)}
  return Segmenter(oracle_segment, oracle_labels, params, CONCEPTS)
