"""Spatial masks for the causal scripts: a PNG drawn over a generated image, checked and pooled.

A mask says where an intervention acts (pooled to the edited layer's grid) and where its effect
is measured (averaged down to the segmentation's grid). Both need the mask to be drawn at the
image's size, so a mismatch is an error naming both sizes rather than a silent resize.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from experiments.cli import UsageError
from jaxdissect import intervene
from jaxdissect.model import Generator, Segmenter


class Grids(NamedTuple):
  """`(H, W)` of the generated images, of the segmentation and of the edited layer."""

  image: tuple[int, int]
  labels: tuple[int, int]
  layer: tuple[int, int]


def grids(gen: Generator, seg: Segmenter, layer: str, zdim: int) -> Grids:
  """The three grids, from shapes alone (nothing is computed)."""
  def forward(z):
    image, acts = gen.apply_fn(gen.params, z, None, capture=(layer,))
    return image, seg.label_fn(seg.params, image), acts[layer]

  image, labels, acts = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, zdim), jnp.float32))
  return Grids(tuple(image.shape[1:3]), tuple(labels.shape[1:3]), tuple(acts.shape[1:3]))


class Mask(NamedTuple):
  """A stroke as the edit sees it (`layer`, `[h, w]`) and as the measurement sees it
  (`region`, `[H, W]` at the segmentation's resolution), both with values in [0, 1]."""

  layer: np.ndarray
  region: np.ndarray


def load_mask(path: str, g: Grids, pooling: str = "max") -> Mask:
  """Reads a grayscale (or RGB/alpha) PNG: pixels brighter than mid-grey are inside.

  Raises UsageError for unreadable files, a size other than the image's, or an empty mask.
  """
  try:
    with Image.open(path) as im:
      pixels = np.asarray(im.convert("L"), np.float32) / 255.0
  except (OSError, UnidentifiedImageError) as e:
    raise UsageError(f"--mask {path}: not a readable image ({e})") from e
  if pixels.shape != g.image:
    raise UsageError(f"--mask {path} is {pixels.shape[0]}x{pixels.shape[1]} pixels; draw it at "
                     f"the generated image's size, {g.image[0]}x{g.image[1]}")
  inside = (pixels > 0.5).astype(np.float32)
  if not inside.any():
    raise UsageError(f"--mask {path} is empty: no pixel is brighter than mid-grey")
  try:
    layer = np.asarray(intervene.pool_mask(inside, g.layer, pooling))
  except ValueError as e:
    raise UsageError(f"--mask {path}: {e}") from e
  return Mask(layer, np.asarray(_average_to(inside, g.labels)))


def _average_to(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Area-averages an image-sized mask down to `size` (which must divide it) or repeats it up."""
  (height, width), (h, w) = mask.shape, size
  if height % h == 0 and width % w == 0:
    return np.asarray(intervene.pool_mask(mask, size, "mean"))
  if h % height == 0 and w % width == 0:
    return np.repeat(np.repeat(mask, h // height, axis=0), w // width, axis=1)
  raise UsageError(f"the segmentation's {h}x{w} grid and the image's {height}x{width} do not "
                   "tile each other; masks need one to divide the other")
