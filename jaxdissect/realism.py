"""How unrealistic images are, measured as Frechet distances in a segmenter's feature space.

GAN Dissection found "artifact" units: units whose top-activating images look broken, and whose
ablation makes the whole sample more realistic. Finding them needs a realism score of an image
*set*; the Frechet distance between Gaussian fits of features of generated and real images (the
FID recipe, here with the segmenter's features rather than Inception's, so nothing needs
downloading) is that score. `unit_scores` ranks units by the distance of their top images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
  """Frechet distance between Gaussian fits of feature sets `x [n, F]` and `y [m, F]`.

  `|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2))`, the trace of the square root computed
  as the sum of square roots of the eigenvalues of the PSD matrix `S_x^(1/2) S_y S_x^(1/2)`.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
    raise ValueError(f"frechet_distance needs two [n >= 2, F] feature sets of one width, got "
                     f"{list(x.shape)} and {list(y.shape)}")
  mx, my = x.mean(axis=0), y.mean(axis=0)
  sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  w, v = np.linalg.eigh(sx)
  sx_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  cross = np.linalg.eigvalsh(sx_half @ sy @ sx_half)
  tr_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
  return float(np.sum((mx - my) ** 2) + np.trace(sx) + np.trace(sy) - 2 * tr_sqrt)


def layout_features(probs: jax.Array, grid: int = 2) -> jax.Array:
  """`[B, H, W, K]` segmenter probabilities -> `[B, grid * grid * K]`: the mean probability of
  each concept in each cell of a grid x grid layout (what is where, for any segmenter)."""
  b, h, w, k = probs.shape
  if h % grid or w % grid:
    raise ValueError(f"a {h}x{w} segmentation does not split into a {grid}x{grid} grid")
  cells = probs.reshape(b, grid, h // grid, grid, w // grid, k)
  return jnp.mean(cells, axis=(2, 4)).reshape(b, grid * grid * k)


def unit_scores(unit_max: np.ndarray, features: np.ndarray, real: np.ndarray,
                top: int) -> np.ndarray:
  """`[C]` Frechet distance to `real` of the features of each unit's `top` images.

  `unit_max [n, C]` is each image's spatial maximum of each unit, `features [n, F]` the images'
  features; a unit's top images are the `top` with the largest maximum (ties by index).
  """
  unit_max, features = np.asarray(unit_max), np.asarray(features)
  if not 2 <= top <= len(unit_max):
    raise ValueError(f"top is {top}; expected between 2 and the {len(unit_max)} images scored")
  order = np.argsort(-unit_max, axis=0, kind="stable")[:top]  # [top, C]
  return np.array([frechet_distance(features[order[:, u]], real)
                   for u in range(unit_max.shape[1])])
