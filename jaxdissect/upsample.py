"""The one definition of how a unit's featuremap is brought to segmentation (or display) size.

Dissection compares activations with concept masks pixel by pixel, so every consumer (the
tallies, the reference, the unit images of the report) must upsample the same way: bilinear with
half-pixel centres and clamped borders, which is what the original's `grid_sample` path computes
and what `jax.image.resize(..., "linear")` does when enlarging.
"""

from __future__ import annotations

import jax
import numpy as np


def upsample(acts: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear, half-pixel centres, border-clamped resize of `[B, h, w, U]` to `[B, *size, U]`."""
  return jax.image.resize(acts, (acts.shape[0], *size, acts.shape[-1]), "linear")


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Host version for display: `[k, h, w]` float maps to `[k, *size]` float32, same rule."""
  maps = np.asarray(maps, np.float32)
  return np.asarray(upsample(maps[..., None], size))[..., 0]
