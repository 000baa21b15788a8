"""Spatial masks for the causal scripts: a PNG drawn over a generated image, checked and pooled.

A mask says where an intervention acts (pooled to the edited layer's grid) and where its effect
is measured (averaged down to the segmentation's grid). Both need the mask to be drawn at the
image's size, so a mismatch is an error naming both sizes rather than a silent resize. Pixels are
read by the paint page's rule (`jaxdissect.masks`), so a stroke saved from the page works here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.cli import UsageError
from jaxdissect import intervene, masks
from jaxdissect.model import Generator, Segmenter


class Grids(NamedTuple):
  """`(H, W)` of the generated images, of the segmentation and of the edited layer."""

  image: tuple[int, int]
  labels: tuple[int, int]
  layer: tuple[int, int]


def grids(gen: Generator, seg: Segmenter, layer: str) -> Grids:
  """The three grids, from shapes alone (nothing is computed)."""
  def forward(z):
    image, acts = gen.apply_fn(gen.params, z, None, capture=(layer,))
    return image, seg.label_fn(seg.params, image), acts[layer]

  z = jax.ShapeDtypeStruct((1, *gen.latent_shape), jnp.float32)
  image, labels, acts = jax.eval_shape(forward, z)
  return Grids(tuple(image.shape[1:3]), tuple(labels.shape[1:3]), tuple(acts.shape[1:3]))


class Mask(NamedTuple):
  """A stroke as the edit sees it (`layer`, `[h, w]`) and as the measurement sees it
  (`region`, `[H, W]` at the segmentation's resolution), both with values in [0, 1]."""

  layer: np.ndarray
  region: np.ndarray


def load_mask(path: str, g: Grids, pooling: str = "max") -> Mask:
  """Reads a PNG stroke by `masks.mask_from_image` (the paint page's rule): inside where alpha
  > 0 if it has alpha (a stroke saved from the page), else where brighter than mid-grey.

  Raises UsageError for unreadable files, a size other than the image's, or an empty mask.
  """
  try:
    inside = masks.read_png_mask(path, g.image)
  except masks.MaskSizeError as e:
    raise UsageError(f"--mask {path} is {e.got[0]}x{e.got[1]} pixels; draw it at the generated "
                     f"image's size, {g.image[0]}x{g.image[1]}") from None
  except ValueError as e:
    raise UsageError(f"--mask {path}: not a readable image ({e})") from None
  if not inside.any():
    raise UsageError(f"--mask {path} is empty: no pixel is opaque (in a PNG with alpha) or "
                     "brighter than mid-grey (without)")
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
