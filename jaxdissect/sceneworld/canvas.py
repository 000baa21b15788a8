"""How the scene world draws: per-image random draws, the pixel grid, layers and the z-buffer.

Each object kind (`objects`) turns its share of the per-image uniforms (`Draws`) into a `Layer`
on a shared `Grid`: a mask, part and shading maps, a depth and a colour table. The `Canvas`
z-buffer keeps, per pixel, the nearest layer's slot, part and shade, and `colourize` looks the
colours up from the winning layer afterwards, so labels never depend on colours. The shape
primitives here are given in pixels of the grid; lengths in 64x64 units go through `px`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from jaxdissect.sceneworld.concepts import LAYERS

# Pixel-noise amplitude (in [0, 1] colour units) of each layer, by object.
_NOISE = {"sky": 0.012, "mountain": 0.025, "cloud": 0.012, "grass": 0.05, "water": 0.03,
          "road": 0.03, "building": 0.025, "tree": 0.045}
LAYER_NOISE = np.array([_NOISE[name] for name in LAYERS], np.float32)


class Draws:
  """Hands out the per-image uniforms `[n, K]` column by column, always in the same order."""

  def __init__(self, u: np.ndarray):
    self._u, self._next = u, 0

  def uniform(self, lo: float | np.ndarray = 0.0, hi: float | np.ndarray = 1.0) -> np.ndarray:
    """`[n]` floats uniform in `[lo, hi)`."""
    if self._next >= self._u.shape[1]:
      raise RuntimeError(f"scene grammar needs more than {self._u.shape[1]} uniforms per image")
    column = self._u[:, self._next]
    self._next += 1
    return lo + (hi - lo) * column

  def integer(self, lo: int | np.ndarray, hi: int | np.ndarray) -> np.ndarray:
    """`[n]` int32 uniform in `[lo, hi]` (inclusive)."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    return np.minimum(lo + np.floor(self.uniform() * (hi - lo + 1)), hi).astype(np.int32)

  def choice(self, probs: Sequence[float]) -> np.ndarray:
    """`[n]` int32 index drawn with probabilities `probs`."""
    edges = np.cumsum(probs)[:-1] / np.sum(probs)
    return np.searchsorted(edges, self.uniform(), side="right").astype(np.int32)

  def colour(self, palette: Sequence[Sequence[float]], jitter: float) -> np.ndarray:
    """`[n, 3]`: a palette entry per image, each channel jittered by up to `jitter`."""
    base = np.asarray(palette, np.float32)[self.choice([1.0] * len(palette))]
    shift = np.stack([self.uniform(-jitter, jitter) for _ in range(3)], axis=1)
    return (base + shift).astype(np.float32)


class Grid(NamedTuple):
  """Pixel coordinates broadcastable against `[n, H, W]` and the scene's shared parameters."""

  size: int
  scale: float          # size / 64: every length below is given for 64x64 scenes
  y: np.ndarray         # [1, H, 1] int32 row index
  x: np.ndarray         # [1, 1, W] int32 column index
  yc: np.ndarray        # [1, H, 1] float32 row centre
  xc: np.ndarray        # [1, 1, W] float32 column centre
  horizon: np.ndarray   # [n] int32 first ground row


class Layer(NamedTuple):
  """One layer of one slot: what it covers, its parts, shading, depth and colours."""

  mask: np.ndarray              # [n, H, W] bool
  part: np.ndarray | None       # [n, H, W] int8 part slot (None: no parts)
  shade: np.ndarray | None      # [n, H, W] float32 shading coordinate (None: flat)
  depth: np.ndarray             # [n] float32 (larger = nearer)
  colours: np.ndarray           # [n, 5, 3] colour of each part slot at shade 0
  shade_dir: np.ndarray         # [n, 3] colour change per unit of shade


class Canvas:
  """The z-buffer of one chunk: the winning layer, part and shade of every pixel."""

  def __init__(self, n: int, size: int):
    self.zbuf = np.full((n, size, size), -1.0, np.float32)
    self.instance = np.zeros((n, size, size), np.int16)
    self.part = np.zeros((n, size, size), np.int8)
    self.shade = np.zeros((n, size, size), np.float32)
    self.colours = np.zeros((n, len(LAYERS), 5, 3), np.float32)
    self.shade_dir = np.zeros((n, len(LAYERS), 3), np.float32)
    self.masks: list[np.ndarray] = []

  def draw(self, slot: int, layer: Layer, keep_mask: bool) -> None:
    """Paints `layer` as `LAYERS[slot]` wherever it is nearer than what is there."""
    win = layer.mask & (layer.depth[:, None, None] > self.zbuf)
    np.copyto(self.zbuf, layer.depth[:, None, None], where=win)
    np.copyto(self.instance, np.int16(slot), where=win)
    np.copyto(self.part, 0 if layer.part is None else layer.part, where=win)
    np.copyto(self.shade, 0.0 if layer.shade is None else layer.shade, where=win)
    self.colours[:, slot] = layer.colours
    self.shade_dir[:, slot] = layer.shade_dir
    if keep_mask:
      self.masks.append(layer.mask)


def col(a: np.ndarray) -> np.ndarray:
  """`[n] -> [n, 1, 1]`, to broadcast per-image parameters over pixels (floats as float32)."""
  a = np.asarray(a)
  return (a.astype(np.float32) if a.dtype.kind == "f" else a)[:, None, None]


def colf(a: np.ndarray) -> np.ndarray:
  """`[n] -> [n, 1, 1]` float32, for integer parameters used in float arithmetic."""
  return np.asarray(a, np.float32)[:, None, None]


def px(length: np.ndarray, g: Grid, lo: float) -> np.ndarray:
  """A length given for 64x64 scenes, scaled to the grid and rounded, at least `lo` (scaled)."""
  return np.maximum(np.rint(length * g.scale), max(1, round(lo * g.scale))).astype(np.int32)


def flat(colour: np.ndarray, part_colours: dict[int, np.ndarray] | None = None) -> np.ndarray:
  """`[n, 5, 3]` colour table: `colour` for every part slot, overridden by `part_colours`."""
  table = np.repeat(colour[:, None, :], 5, axis=1)
  for slot, c in (part_colours or {}).items():
    table[:, slot] = c
  return table


def rect(g: Grid, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray) -> np.ndarray:
  """`[n, H, W]` bool: rows `[y0, y1)` and columns `[x0, x1)` (per-image `[n]` bounds)."""
  rows = (g.y >= col(y0)) & (g.y < col(y1))
  cols = (g.x >= col(x0)) & (g.x < col(x1))
  return rows & cols


def ellipse_r2(g: Grid, cy: np.ndarray, cx: np.ndarray, ry: np.ndarray, rx: np.ndarray
               ) -> np.ndarray:
  """`[n, H, W]` squared normalized distance of pixel centres from an ellipse's centre."""
  return np.square((g.yc - col(cy)) / col(ry)) + np.square((g.xc - col(cx)) / col(rx))


def perspective_scale(g: Grid, base: np.ndarray) -> np.ndarray:
  """`[n]` size factor for an object whose base is at row `base`: farther (higher) is smaller."""
  depth = (base - g.horizon) / np.maximum(g.size - g.horizon, 1)
  return 0.55 + 0.45 * np.clip(depth, 0.0, 1.0)


def colourize(canvas: Canvas, noise: np.ndarray, tint: tuple[np.ndarray, np.ndarray],
              g: Grid) -> np.ndarray:
  """Looks up each pixel's colour from its winning layer and part, plus shading and noise."""
  n, layers = noise.shape[0], len(LAYERS)
  # One table row per (image, layer, part): the colour at shade 0 and the shade direction.
  table = np.concatenate([canvas.colours, np.broadcast_to(
      canvas.shade_dir[:, :, None, :], canvas.colours.shape)], axis=-1).reshape(-1, 6)
  inst = canvas.instance.astype(np.int32)
  rows = (np.arange(n, dtype=np.int32)[:, None, None] * layers + inst) * 5 + canvas.part
  looked_up = np.take(table, rows, axis=0)                     # [n, H, W, 6]
  brightness, light = tint
  grain = np.take(LAYER_NOISE, inst) * (noise * np.float32(2 / 255) - np.float32(1))
  grain += col(brightness) + col(light) * (g.xc / g.size - np.float32(0.5))
  colour = looked_up[..., :3] + canvas.shade[..., None] * looked_up[..., 3:]
  colour += grain[..., None]
  np.clip(colour * 2 - 1, -1, 1, out=colour)
  return colour
