"""Pictures of scene-world samples: a colour per concept, coloured label maps and grids.

For looking at samples and for reports: nothing here feeds back into rendering or training.
"""

from __future__ import annotations

import numpy as np


def label_palette() -> np.ndarray:
  """`[K, 3]` uint8 display colour of each concept in `CONCEPTS` (index 0 black)."""
  return np.array([
      (0, 0, 0), (140, 195, 240), (250, 250, 250), (125, 105, 150), (95, 185, 70),
      (20, 105, 45), (215, 175, 130), (85, 85, 90), (30, 80, 210), (205, 40, 40),
      (250, 215, 50), (120, 55, 20), (165, 100, 40)], np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
  """`[..., H, W, 3]` uint8 view of `labels [..., H, W, D]`: later nonzero channels on top."""
  palette = label_palette()
  labels = np.asarray(labels)
  out = palette[labels[..., 0]]
  for ch in range(1, labels.shape[-1]):
    top = labels[..., ch]
    out = np.where((top > 0)[..., None], palette[top], out)
  return out


def tile(cells: np.ndarray, columns: int = 8, gap: int = 2) -> np.ndarray:
  """Lays uint8 cells `[N, H, W, 3]` out in a grid with white `gap`-pixel margins."""
  n, hgt, wid = cells.shape[:3]
  rows = -(-n // columns)
  grid = np.full((rows * (hgt + gap) + gap, columns * (wid + gap) + gap, 3), 255, np.uint8)
  for i in range(n):
    r, c = divmod(i, columns)
    y, x = gap + r * (hgt + gap), gap + c * (wid + gap)
    grid[y:y + hgt, x:x + wid] = cells[i]
  return grid


def sample_grid(images: np.ndarray, labels: np.ndarray, columns: int = 8,
                gap: int = 2) -> np.ndarray:
  """A uint8 grid: each cell is an image `[H, W, 3]` in [-1, 1] beside its colourized labels."""
  pix = np.clip(np.rint((np.asarray(images) + 1) * 127.5), 0, 255).astype(np.uint8)
  return tile(np.concatenate([pix, colorize(labels)], axis=2), columns, gap)
