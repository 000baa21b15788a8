"""Stroke masks read from images: the one rule for which pixels of a mask image are inside.

A mask can come from the paint page (a canvas stroke sent as a PNG: opaque strokes on a
transparent background) or from a file drawn by hand for `experiments.ablate --mask` (often white
on black). Both paths read the same pixels the same way, through `mask_from_image`, so a stroke
saved from the page means the same region to every script:

  * an image with alpha (RGBA, LA, PA, or L/RGB/P with a transparent colour) is inside where
    alpha > 0;
  * any other image is inside where its grey level is > 127.

Mask images may come from outside (a web request), so `read_png_mask` checks the format and the
size from the PNG header before any pixel is decoded, and fails with a one-line ValueError.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image


class MaskSizeError(ValueError):
  """A mask of size `got` (H, W) where `want` was needed."""

  def __init__(self, got: Sequence[int], want: Sequence[int]):
    self.got, self.want = tuple(got), tuple(want)
    super().__init__(f"mask is {self.got[0]}x{self.got[1]} (HxW); masks must be "
                     f"{self.want[0]}x{self.want[1]}, the generated image's size")


def check_mask_size(got: Sequence[int], want: Sequence[int]) -> None:
  """Raises MaskSizeError unless a mask of `got` (H, W) has the image size `want`."""
  if tuple(got) != tuple(want):
    raise MaskSizeError(got, want)


def has_alpha(image: Image.Image) -> bool:
  """Whether `image` says which pixels are transparent (an alpha band or a transparent colour)."""
  return "A" in image.getbands() or "transparency" in image.info


def mask_from_image(image: Image.Image) -> np.ndarray:
  """`[H, W]` float32 of 0/1: inside where alpha > 0 if the image has alpha, else grey > 127."""
  if has_alpha(image):
    inside = np.asarray(image.convert("RGBA"))[..., 3] > 0
  else:
    inside = np.asarray(image.convert("L")) > 127
  return inside.astype(np.float32)


def read_png_mask(source: bytes | str | os.PathLike, size: Sequence[int]) -> np.ndarray:
  """The mask of a PNG (its bytes, or a file path) that must be `size` (H, W) -> `[H, W]` 0/1.

  Raises MaskSizeError for another size (read from the header, before the pixels are decoded)
  and ValueError for a file that cannot be read or is not a whole PNG.
  """
  if isinstance(source, bytes):
    raw = source
  else:
    try:
      with open(source, "rb") as f:
        raw = f.read()
    except OSError as e:
      raise ValueError(f"mask file cannot be read ({e.strerror or e})") from None
  try:
    image = Image.open(io.BytesIO(raw))
  except Image.DecompressionBombError as e:
    raise ValueError(f"mask is too large ({e})") from None
  except Exception:  # PIL raises many types for data it cannot identify.
    raise ValueError(f"mask holds {len(raw)} bytes that are not a PNG image") from None
  if image.format != "PNG":
    raise ValueError(f"mask is a {image.format} image; expected a PNG")
  check_mask_size(image.size[::-1], size)
  try:
    image.load()
  except Exception as e:  # truncated or corrupt pixel data
    raise ValueError(f"mask is not a readable PNG ({type(e).__name__}: {e})") from None
  return mask_from_image(image)
