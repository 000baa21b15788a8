"""The picture of one unit: its top images with the region where it fires outlined.

A unit's label is only convincing if a reader can see what the unit responds to. The report shows
each unit as a strip of its top-activating images, every tile dimmed outside the unit's
thresholded (upsampled) activation and outlined in yellow just outside it, as in the GAN
Dissection paper. The upsampling is `jaxdissect.upsample.upsample_maps`, the same rule the
dissection itself uses, so the outline is exactly the region that was scored against the concepts.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxdissect.upsample import upsample_maps

BORDER_COLOUR = (200, 200, 0)
BORDER_WIDTH = 2   # pixels of outline drawn just outside the mask


def _resize_image(image: np.ndarray, tile: int) -> np.ndarray:
  """`[H, W, 3]` uint8 to `[tile, tile, 3]` uint8 (PIL bilinear)."""
  if image.shape[:2] == (tile, tile):
    return image
  return np.asarray(Image.fromarray(image).resize((tile, tile), Image.BILINEAR))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """Chessboard dilation: True wherever a mask pixel lies within `radius` (max-norm)."""
  h, w = mask.shape
  padded = np.pad(mask, radius)
  out = np.zeros_like(mask)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      out |= padded[dy:dy + h, dx:dx + w]
  return out


def unit_tile(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """One tile: `image` where `mask`, half brightness elsewhere, yellow outline just outside."""
  mask = np.asarray(mask, bool)
  out = np.where(mask[..., None], image, image // 2).astype(np.uint8)
  border = _dilate(mask, BORDER_WIDTH) & ~mask
  out[border] = BORDER_COLOUR
  return out


def unit_strip(images: np.ndarray, maps: np.ndarray, threshold: float, tile: int = 128,
               gap: int = 5) -> np.ndarray:
  """Tiles of a unit's top images, left to right, `gap` white columns apart.

  Args:
    images: `[k, H, W, 3]` uint8, the unit's top-k images (k may be below the usual top-k).
    maps: `[k, h, w]` float, the unit's raw featuremap channel for each image.
    threshold: activation level above which the unit counts as firing.
    tile: side of each square tile in pixels.
    gap: white pixel columns between tiles.

  Returns:
    `[tile, k * tile + (k - 1) * gap, 3]` uint8.
  """
  images = np.asarray(images)
  maps = np.asarray(maps)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images has shape {list(images.shape)}, expected [k, H, W, 3]")
  if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
    raise ValueError(f"maps has shape {list(maps.shape)}, expected [{images.shape[0]}, h, w]")
  k = images.shape[0]
  if k == 0:
    raise ValueError("unit_strip needs at least one image, got k=0")
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {images.dtype}")
  masks = upsample_maps(maps, (tile, tile)) > threshold
  strip = np.full((tile, k * tile + (k - 1) * gap, 3), 255, np.uint8)
  for i in range(k):
    x = i * (tile + gap)
    strip[:, x:x + tile] = unit_tile(_resize_image(images[i], tile), masks[i])
  return strip


def save_jpeg(path: str, array: np.ndarray, quality: int = 85) -> str:
  """Writes a `[H, W, 3]` uint8 array as a JPEG, creating parent directories; returns `path`."""
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path, format="JPEG", quality=quality)
  return path
