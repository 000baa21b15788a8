"""Procedural outdoor scenes whose per-pixel object and part labels are exact by construction.

GAN Dissection needs a world where the segmentation is the truth: the project's default segmenter
and ProgGAN are trained on these scenes, and its miniature reproductions of the paper ("which
units draw trees", "where can a door appear") are only meaningful if the world has context rules
of its own. So every scene follows a small grammar: sky above a horizon, clouds only in the sky,
mountains standing on the horizon behind everything, grass below it with optional road and water,
buildings (wall, roof, windows, a door at the base of the wall) and trees (trunk and canopy)
standing on the ground, nearer objects (lower base) occluding farther ones.

Labels are never derived from colours: each layer's mask is written into a z-buffer together with
its object and part index, and the colours are looked up afterwards from the winning layer, so a
pixel's label is exactly the layer that painted it. Texture and lighting only shift colours by a
small amount inside a layer and never move a boundary.

Image `i` of a sample depends only on `(seed, start + i)`: its scene parameters come from
`np.random.default_rng([seed, start + i])` (a fixed number of uniforms per image), while the
drawing itself is vectorized over the batch. Samples are therefore prefix-stable and independent
of how they are batched.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple, Sequence

import numpy as np

CONCEPTS: tuple[tuple[str, str], ...] = (
    ("-", "-"),
    ("sky", "object"), ("cloud", "object"), ("mountain", "object"), ("grass", "object"),
    ("tree", "object"), ("building", "object"), ("road", "object"), ("water", "object"),
    ("roof", "part"), ("window", "part"), ("door", "part"), ("trunk", "part"),
)
CONCEPT_INDEX: dict[str, int] = {name: i for i, (name, _) in enumerate(CONCEPTS)}

MAX_MOUNTAINS, MAX_CLOUDS, MAX_BUILDINGS, MAX_TREES = 2, 3, 3, 4

# The drawing slots, back to front for the fixed layers; buildings and trees are sorted per
# image by their base row through the z-buffer. `instance` maps use these indices.
LAYERS: tuple[str, ...] = (
    ("sky",) + ("mountain",) * MAX_MOUNTAINS + ("cloud",) * MAX_CLOUDS
    + ("grass", "water", "road") + ("building",) * MAX_BUILDINGS + ("tree",) * MAX_TREES)
MOUNTAIN_SLOTS = tuple(i for i, name in enumerate(LAYERS) if name == "mountain")
CLOUD_SLOTS = tuple(i for i, name in enumerate(LAYERS) if name == "cloud")
BUILDING_SLOTS = tuple(i for i, name in enumerate(LAYERS) if name == "building")
TREE_SLOTS = tuple(i for i, name in enumerate(LAYERS) if name == "tree")
GRASS_SLOT, WATER_SLOT, ROAD_SLOT = (LAYERS.index(name) for name in ("grass", "water", "road"))

# Part slots within a layer (colour table rows) and the part concept each one labels.
_NO_PART, _ROOF, _WINDOW, _DOOR, _TRUNK = range(5)
_PART_CONCEPT = np.array([0] + [CONCEPT_INDEX[p] for p in ("roof", "window", "door", "trunk")],
                         np.int32)
_LAYER_CONCEPT = np.array([CONCEPT_INDEX[name] for name in LAYERS], np.int32)

# Pixel-noise amplitude (in [0, 1] colour units) of each layer, by object.
_NOISE = {"sky": 0.012, "mountain": 0.025, "cloud": 0.012, "grass": 0.05, "water": 0.03,
          "road": 0.03, "building": 0.025, "tree": 0.045}
_LAYER_NOISE = np.array([_NOISE[name] for name in LAYERS], np.float32)

_NUM_UNIFORMS = 512   # per image; fixed so that image i never depends on its neighbours
_CHUNK = 128          # images drawn at once: keeps the working set in cache

# Base colours in [0, 1]; each object instance picks one and jitters it.
_SKY_TOP = ((0.22, 0.45, 0.86), (0.30, 0.52, 0.90), (0.18, 0.38, 0.78))
_SKY_HORIZON = ((0.66, 0.80, 0.96), (0.74, 0.84, 0.95), (0.92, 0.76, 0.60))
_MOUNTAIN = ((0.40, 0.44, 0.56), (0.47, 0.41, 0.53), (0.50, 0.45, 0.40), (0.33, 0.38, 0.44))
_CLOUD = ((0.96, 0.96, 0.97), (0.90, 0.91, 0.93))
_GRASS = ((0.42, 0.68, 0.26), (0.50, 0.66, 0.28), (0.36, 0.62, 0.24))
_WATER = ((0.12, 0.32, 0.64), (0.10, 0.40, 0.60), (0.16, 0.28, 0.56))
_ROAD = ((0.36, 0.36, 0.38), (0.42, 0.40, 0.38), (0.30, 0.30, 0.32))
_ROAD_MARK = (0.90, 0.86, 0.60)
_WALL = ((0.86, 0.78, 0.62), (0.72, 0.38, 0.28), (0.68, 0.68, 0.70), (0.92, 0.91, 0.86),
         (0.90, 0.78, 0.46))
_ROOF_COLOURS = ((0.56, 0.18, 0.15), (0.28, 0.28, 0.32), (0.44, 0.28, 0.18), (0.20, 0.38, 0.42))
_WINDOW_COLOURS = ((0.16, 0.22, 0.34), (0.20, 0.30, 0.42), (0.96, 0.86, 0.44))
_DOOR_COLOURS = ((0.38, 0.22, 0.12), (0.44, 0.12, 0.12), (0.14, 0.28, 0.18), (0.16, 0.18, 0.36))
_CANOPY = ((0.16, 0.42, 0.16), (0.10, 0.32, 0.14), (0.30, 0.44, 0.14), (0.78, 0.46, 0.12))
_CONIFER = ((0.07, 0.28, 0.18), (0.10, 0.34, 0.22))
_TRUNK_COLOURS = ((0.40, 0.26, 0.15), (0.32, 0.22, 0.14))


class Layout(NamedTuple):
  """Per-image scene structure, for tests and context experiments.

  `horizon [n]`: the first ground row (rows `< horizon` are sky). `instance [n, H, W]`: the
  index into `LAYERS` of the layer that painted each pixel. `present [n, L]`: which layers were
  drawn. `boxes [n, L, 4]`: `(y0, x0, y1, x1)` (end-exclusive, clipped to the image) of each
  layer's full drawn shape before occlusion, zeros when absent. `walls` and `doors`
  `[n, MAX_BUILDINGS, 4]`: the same boxes, unclipped, for each building's wall and door (a door
  always ends at its wall's bottom row, `doors[..., 2] == walls[..., 2]`; zeros when absent).
  """

  horizon: np.ndarray
  instance: np.ndarray
  present: np.ndarray
  boxes: np.ndarray
  walls: np.ndarray
  doors: np.ndarray


class _Draws:
  """Hands out the per-image uniforms `[n, K]` column by column, always in the same order."""

  def __init__(self, u: np.ndarray):
    self._u, self._next = u, 0

  def uniform(self, lo: float | np.ndarray = 0.0, hi: float | np.ndarray = 1.0) -> np.ndarray:
    """`[n]` floats uniform in `[lo, hi)`."""
    if self._next >= self._u.shape[1]:
      raise RuntimeError(f"scene grammar needs more than {self._u.shape[1]} uniforms per image")
    col = self._u[:, self._next]
    self._next += 1
    return lo + (hi - lo) * col

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


class _Grid(NamedTuple):
  """Pixel coordinates broadcastable against `[n, H, W]` and the scene's shared parameters."""

  size: int
  scale: float          # size / 64: every length below is given for 64x64 scenes
  y: np.ndarray         # [1, H, 1] int32 row index
  x: np.ndarray         # [1, 1, W] int32 column index
  yc: np.ndarray        # [1, H, 1] float32 row centre
  xc: np.ndarray        # [1, 1, W] float32 column centre
  horizon: np.ndarray   # [n] int32 first ground row


class _Layer(NamedTuple):
  """One layer of one slot: what it covers, its parts, shading, depth and colours."""

  mask: np.ndarray              # [n, H, W] bool
  part: np.ndarray | None       # [n, H, W] int8 part slot (None: no parts)
  shade: np.ndarray | None      # [n, H, W] float32 shading coordinate (None: flat)
  depth: np.ndarray             # [n] float32 (larger = nearer)
  colours: np.ndarray           # [n, 5, 3] colour of each part slot at shade 0
  shade_dir: np.ndarray         # [n, 3] colour change per unit of shade


class _Canvas:
  """The z-buffer of one chunk: the winning layer, part and shade of every pixel."""

  def __init__(self, n: int, size: int):
    self.zbuf = np.full((n, size, size), -1.0, np.float32)
    self.instance = np.zeros((n, size, size), np.int16)
    self.part = np.zeros((n, size, size), np.int8)
    self.shade = np.zeros((n, size, size), np.float32)
    self.colours = np.zeros((n, len(LAYERS), 5, 3), np.float32)
    self.shade_dir = np.zeros((n, len(LAYERS), 3), np.float32)
    self.masks: list[np.ndarray] = []

  def draw(self, slot: int, layer: _Layer, keep_mask: bool) -> None:
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


def _col(a: np.ndarray) -> np.ndarray:
  """`[n] -> [n, 1, 1]`, to broadcast per-image parameters over pixels (floats as float32)."""
  a = np.asarray(a)
  return (a.astype(np.float32) if a.dtype.kind == "f" else a)[:, None, None]


def _colf(a: np.ndarray) -> np.ndarray:
  """`[n] -> [n, 1, 1]` float32, for integer parameters used in float arithmetic."""
  return np.asarray(a, np.float32)[:, None, None]


def _px(length: np.ndarray, g: _Grid, lo: float) -> np.ndarray:
  """A length given for 64x64 scenes, scaled to the grid and rounded, at least `lo` (scaled)."""
  return np.maximum(np.rint(length * g.scale), max(1, round(lo * g.scale))).astype(np.int32)


def _flat(colour: np.ndarray, part_colours: dict[int, np.ndarray] | None = None) -> np.ndarray:
  """`[n, 5, 3]` colour table: `colour` for every part slot, overridden by `part_colours`."""
  table = np.repeat(colour[:, None, :], 5, axis=1)
  for slot, c in (part_colours or {}).items():
    table[:, slot] = c
  return table


def _rect(g: _Grid, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray
          ) -> np.ndarray:
  """`[n, H, W]` bool: rows `[y0, y1)` and columns `[x0, x1)` (per-image `[n]` bounds)."""
  rows = (g.y >= _col(y0)) & (g.y < _col(y1))
  cols = (g.x >= _col(x0)) & (g.x < _col(x1))
  return rows & cols


def _ellipse_r2(g: _Grid, cy: np.ndarray, cx: np.ndarray, ry: np.ndarray, rx: np.ndarray
                ) -> np.ndarray:
  """`[n, H, W]` squared normalized distance of pixel centres from an ellipse's centre."""
  return np.square((g.yc - _col(cy)) / _col(ry)) + np.square((g.xc - _col(cx)) / _col(rx))


def _perspective(g: _Grid, base: np.ndarray) -> np.ndarray:
  """`[n]` size factor for an object whose base is at row `base`: farther (higher) is smaller."""
  depth = (base - g.horizon) / np.maximum(g.size - g.horizon, 1)
  return 0.55 + 0.45 * np.clip(depth, 0.0, 1.0)


def _sky(d: _Draws, g: _Grid, n: int) -> _Layer:
  """The whole frame, shaded from the zenith colour to a paler horizon colour."""
  top = d.colour(_SKY_TOP, 0.06)
  bottom = d.colour(_SKY_HORIZON[:2], 0.04)
  evening = d.colour(_SKY_HORIZON[2:], 0.04)
  bottom = np.where((d.uniform() < 0.15)[:, None], evening, bottom)
  shade = np.broadcast_to(np.clip(g.yc / _colf(g.horizon), 0.0, 1.0), (n, g.size, g.size))
  return _Layer(np.ones((n, g.size, g.size), bool), None, shade, np.zeros(n, np.float32),
                _flat(top), (bottom - top).astype(np.float32))


def _mountain(d: _Draws, g: _Grid, present: np.ndarray, k: int) -> _Layer:
  """A jagged triangular silhouette standing on the horizon (sky rows only)."""
  h = g.horizon.astype(np.float32)
  cx = d.uniform(-0.1, 1.1) * g.size
  half = d.uniform(0.2, 0.45) * g.size
  height = np.minimum(d.uniform(0.25, 0.6) * h, h - 3)
  knots = np.stack([d.uniform(-1, 1) for _ in range(17)], axis=1)  # [n, 17] jag profile
  knots = knots * (d.uniform(0.06, 0.16) * height)[:, None]
  colour = d.colour(_MOUNTAIN, 0.05) + 0.06 * (1 - k)   # the farther range is hazier
  pos = g.xc[0, 0] / g.size * 16                     # [W] position in knot units
  i0 = np.minimum(pos.astype(np.int32), 15)
  jag = knots[:, i0] * (1 - (pos - i0)) + knots[:, i0 + 1] * (pos - i0)  # [n, W]
  tri = np.clip(1 - np.abs(g.xc[0] - cx[:, None]) / half[:, None], 0, 1)   # [n, W]
  profile = height[:, None] * tri + jag * np.clip(3 * tri, 0, 1)
  mask = (g.yc > (h[:, None] - profile)[:, None, :]) & (g.y < _col(g.horizon)) & _col(present)
  shade = np.broadcast_to((g.xc > _col(cx)).astype(np.float32), mask.shape)
  return _Layer(mask, None, shade, np.full(len(h), 1 + 0.1 * k, np.float32),
                _flat(colour), np.tile(np.float32([-0.07, -0.07, -0.05]), (len(h), 1)))


def _cloud(d: _Draws, g: _Grid, present: np.ndarray, k: int) -> _Layer:
  """A lumpy blob of three ellipses, wholly above the row just over the horizon."""
  rx = d.uniform(4, 9) * g.scale
  ry = d.uniform(1.8, 3.4) * g.scale
  cx = d.uniform(0, 1) * g.size
  parts = [(np.zeros_like(rx), np.zeros_like(rx), ry, rx)]
  for sign in (-1, 1):
    f = d.uniform(0.45, 0.8)
    parts.append((d.uniform(0, 0.6) * ry, sign * d.uniform(0.5, 1.0) * rx, f * ry, f * rx))
  lowest = np.max([dy + r for dy, _, r, _ in parts], axis=0)
  # Pixel centres reach at most cy + extent - 0.5: keep the blob's bottom row <= horizon - 2.
  cy = np.minimum(d.uniform(0.1, 0.9) * g.horizon, g.horizon - 1.5 - lowest)
  r2 = functools.reduce(np.minimum, [_ellipse_r2(g, cy + dy, cx + dx, sy, sx)
                                     for dy, dx, sy, sx in parts])
  mask = (r2 <= 1) & _col(present)
  lift = np.clip((g.yc - _col(cy)) / _col(ry), 0, 1)       # greyer underside
  shade = (np.sqrt(np.clip(r2, 0, 1)) * 0.7 + 0.3 * lift).astype(np.float32)
  colour = d.colour(_CLOUD, 0.03)
  return _Layer(mask, None, shade, np.full(len(cx), 2 + 0.1 * k, np.float32),
                _flat(colour), np.tile(np.float32([-0.14, -0.11, -0.06]), (len(cx), 1)))


def _grass(d: _Draws, g: _Grid, n: int) -> _Layer:
  """Everything from the horizon down, brighter towards the viewer."""
  mask = np.broadcast_to(g.y >= _col(g.horizon), (n, g.size, g.size))
  depth = (g.yc - _colf(g.horizon)) / _colf(np.maximum(g.size - g.horizon, 1))
  shade = np.broadcast_to(depth, mask.shape).astype(np.float32)
  colour = d.colour(_GRASS, 0.05)
  return _Layer(mask, None, shade, np.full(n, 3, np.float32), _flat(colour),
                np.tile(np.float32([0.04, 0.08, 0.02]), (n, 1)))


def _water(d: _Draws, g: _Grid, present: np.ndarray) -> _Layer:
  """A pond (ellipse) or a wavy river band, wholly at or below the horizon row."""
  n, h = len(present), g.horizon.astype(np.float32)
  pond = d.uniform() < 0.5
  rx, ry = d.uniform(8, 20) * g.scale, d.uniform(2.5, 6) * g.scale
  # Pixel centres reach up to cy - ry - 0.5: keep the top row >= horizon.
  cy = np.maximum(d.uniform(h + ry + 0.5, g.size + 0.3 * ry), h + ry + 0.5)
  cx = d.uniform(0, 1) * g.size
  pond_mask = _ellipse_r2(g, cy, cx, ry, rx) <= 1
  amp, thick = d.uniform(0, 2) * g.scale, d.uniform(3, 8) * g.scale
  period, phase = d.uniform(20, 60) * g.scale, d.uniform(0, 2 * np.pi)
  top0 = np.maximum(d.uniform(h + amp, g.size - thick), h + amp)
  top = _col(top0) + _col(amp) * np.sin(g.xc * _col(2 * np.pi / period) + _col(phase))
  river_mask = (g.yc > top) & (g.yc < top + _col(thick))
  mask = np.where(_col(pond), pond_mask, river_mask) & (g.y >= _col(g.horizon)) & _col(present)
  ripple = 0.5 + 0.5 * np.sin(g.yc * 2.2 + 0.25 * g.xc + _col(d.uniform(0, 2 * np.pi)))
  return _Layer(mask, None, ripple.astype(np.float32), np.full(n, 4, np.float32),
                _flat(d.colour(_WATER, 0.05)), np.tile(np.float32([0.08, 0.1, 0.1]), (n, 1)))


def _road(d: _Draws, g: _Grid, present: np.ndarray) -> _Layer:
  """A road running to the horizon in perspective, or a band across the ground, with markings."""
  n, h = len(present), g.horizon.astype(np.float32)
  perspective = d.uniform() < 0.6
  xb, wb = d.uniform(0.15, 0.85) * g.size, d.uniform(0.3, 0.65) * g.size
  xt, wt = (0.5 * xb + d.uniform(0.1, 0.4) * g.size), d.uniform(0.02, 0.07) * g.size
  t = np.clip((g.yc - _col(h)) / _col(g.size - h), 0, 1)
  centre = _col(xt) + (_col(xb) - _col(xt)) * t
  half = 0.5 * (_col(wt) + (_col(wb) - _col(wt)) * t)
  off = np.abs(g.xc - centre)
  dash_period = 2 + 6 * t
  persp_mask = off <= half
  persp_mark = (off < 0.035 * half + 0.25) & ((g.yc - _col(h)) % dash_period < 0.55 * dash_period)
  thick, slope = d.uniform(4, 8) * g.scale, d.uniform(-0.15, 0.15)
  top0 = d.uniform(h + 2, g.size - thick)
  top0 = np.maximum(top0, h + np.abs(slope) * g.size / 2 + 0.5)
  top = _col(top0) + _col(slope) * (g.xc - g.size / 2)
  band_mask = (g.yc > top) & (g.yc < top + _col(thick))
  band_mark = (np.abs(g.yc - top - _col(thick) / 2) < 0.5) & (g.x % 6 < 3)
  mask = np.where(_col(perspective), persp_mask, band_mask)
  mask &= (g.y >= _col(g.horizon)) & _col(present)
  mark = np.where(_col(perspective), persp_mark, band_mark).astype(np.float32)
  colour = d.colour(_ROAD, 0.03)
  marked = d.uniform() < 0.7
  shade_dir = (np.float32(_ROAD_MARK) - colour) * marked[:, None]
  return _Layer(mask, None, mark, np.full(n, 5, np.float32), _flat(colour),
                shade_dir.astype(np.float32))


def _building(d: _Draws, g: _Grid, present: np.ndarray, k: int
              ) -> tuple[_Layer, np.ndarray, np.ndarray]:
  """A wall with a roof on top, windows in a grid and a door standing on the wall's base row.

  Returns the layer and the `(y0, x0, y1, x1)` boxes `[n, 4]` of its wall and door.
  """
  n, h = len(present), g.horizon
  y1 = d.integer(h + 3, g.size)                         # base: wall rows end here (exclusive)
  p = _perspective(g, y1)
  w = _px(d.uniform(10, 24) * p, g, 7)
  hw = _px(d.uniform(9, 22) * p, g, 9)
  x0 = np.rint(d.uniform(-w / 3, g.size - 2 * w / 3)).astype(np.int32)
  x1, top = x0 + w, y1 - hw
  wall = _rect(g, top, x0, y1, x1)
  # Roof: gable (f = 0), hipped (0 < f < 1) or a flat slab (f = 1), with an overhang.
  kind = d.choice([0.45, 0.25, 0.30])
  f = np.choose(kind, [np.zeros(n), d.uniform(0.35, 0.65), np.ones(n)])
  rh = _px(np.choose(kind, [d.uniform(4, 9), d.uniform(3, 6), d.uniform(2, 3.2)]) * p, g, 2)
  over = np.where(kind == 2, d.integer(0, 1), d.integer(0, 2))
  frac = (g.yc + 0.5 - _colf(top - rh)) / _colf(rh)
  halfw = _col(w / 2 + over) * (_col(f) + (1 - _col(f)) * frac)
  roof = (g.y >= _col(top - rh)) & (g.y < _col(top)) & (np.abs(g.xc - _col(x0 + w / 2)) <= halfw)
  # Door: on the base row, inside the wall with a one-pixel margin.
  has_door = d.uniform() < 0.85
  dw = np.minimum(_px(d.uniform(3, 5) * p, g, 3), w - 2)
  dh = np.minimum(_px(d.uniform(5, 8) * p, g, 5), hw - 2)
  dx0 = x0 + 1 + np.floor(d.uniform() * (w - 1 - dw)).astype(np.int32)
  door = _rect(g, y1 - dh, dx0, y1, dx0 + dw) & _col(has_door)
  # Windows: a centred grid on the wall; cells that would touch the door are left out.
  has_windows = d.uniform() < 0.85
  ww, wh = _px(d.uniform(2, 4) * p, g, 2), _px(d.uniform(3, 5) * p, g, 3)
  gx, gy = _px(d.uniform(2, 4) * p, g, 2), _px(d.uniform(2, 3.5) * p, g, 2)
  mx, my = np.maximum(1, gx - 1), np.maximum(1, gy - 1)
  nc = np.clip((w - 2 * mx + gx) // (ww + gx), 0, 4)
  nr = np.clip((hw - my - 2 + gy) // (wh + gy), 0, 4)
  sx = x0 + (w - (nc * (ww + gx) - gx)) // 2
  sy = top + my
  ci = (g.x - _col(sx)) // _col(ww + gx)
  ri = (g.y - _col(sy)) // _col(wh + gy)
  wx0, wy0 = _col(sx) + ci * _col(ww + gx), _col(sy) + ri * _col(wh + gy)
  in_cell = (g.x - wx0 < _col(ww)) & (g.y - wy0 < _col(wh))
  grid = (ci >= 0) & (ci < _col(nc)) & (ri >= 0) & (ri < _col(nr)) & in_cell
  near_door = ((wx0 < _col(dx0 + dw + 1)) & (wx0 + _col(ww) > _col(dx0 - 1))
               & (wy0 + _col(wh) > _col(y1 - dh - 1)) & _col(has_door))
  windows = grid & ~near_door & _col(has_windows)
  part = np.zeros(wall.shape, np.int8)
  part[roof] = _ROOF
  part[windows] = _WINDOW
  part[door] = _DOOR
  mask = (wall | roof) & _col(present)
  wall_colour = d.colour(_WALL, 0.04)
  colours = _flat(wall_colour, {_ROOF: d.colour(_ROOF_COLOURS, 0.04),
                                _WINDOW: d.colour(_WINDOW_COLOURS, 0.04),
                                _DOOR: d.colour(_DOOR_COLOURS, 0.04)})
  shade = (g.yc - _colf(top)) / _colf(hw)
  layer = _Layer(mask, part, shade, (10 + y1 + 0.01 * k).astype(np.float32), colours,
                 np.tile(np.float32([-0.07, -0.07, -0.06]), (n, 1)))
  wall_box = np.stack([top, x0, y1, x1], axis=1) * present[:, None]
  door_box = np.stack([y1 - dh, dx0, y1, dx0 + dw], axis=1) * (present & has_door)[:, None]
  return layer, wall_box.astype(np.int32), door_box.astype(np.int32)


def _tree(d: _Draws, g: _Grid, present: np.ndarray, k: int) -> _Layer:
  """A trunk standing on the ground under a round (deciduous) or triangular (conifer) canopy."""
  n, h = len(present), g.horizon
  y1 = d.integer(h + 2, g.size)
  p = _perspective(g, y1)
  tw = _px(d.uniform(2, 3.5) * p, g, 2)
  th = _px(d.uniform(4, 9) * p, g, 4)
  cx = d.uniform(0, 1) * g.size
  tx0 = np.rint(cx - tw / 2).astype(np.int32)
  ttop = y1 - th
  trunk = _rect(g, ttop, tx0, y1, tx0 + tw)
  conifer = d.uniform() < 0.3
  rx = d.uniform(4, 9) * g.scale * p
  ry = rx * d.uniform(0.9, 1.35)
  cy = ttop - ry + d.uniform(1, 2.5) * g.scale * p         # overlaps the trunk's top
  mid = tx0 + tw / 2
  r2 = _ellipse_r2(g, cy, mid, ry, rx)
  round_canopy = r2 <= 1
  ch = d.uniform(10, 20) * g.scale * p
  cbase = ttop + 1.0
  up = (_col(cbase) - g.yc) / _col(ch)                      # 0 at the base, 1 at the apex
  spread = rx * d.uniform(0.8, 1.05)
  cone = (up >= 0) & (up <= 1) & (np.abs(g.xc - _col(mid)) <= _col(spread) * (1 - up))
  canopy = np.where(_col(conifer), cone, round_canopy)
  mask = (canopy | trunk) & _col(present)
  part = np.where(trunk & ~canopy, np.int8(_TRUNK), np.int8(_NO_PART))
  # Light from the upper left on the canopy; flat trunk.
  light = ((g.xc - _col(mid)) / _col(rx) + (g.yc - _col(cy)) / _col(ry)) * 0.5
  shade = np.where(canopy, np.clip(light, -1, 1), 0).astype(np.float32)
  canopy_colour = np.where(conifer[:, None], d.colour(_CONIFER, 0.04), d.colour(_CANOPY, 0.05))
  colours = _flat(canopy_colour.astype(np.float32), {_TRUNK: d.colour(_TRUNK_COLOURS, 0.04)})
  return _Layer(mask, part, shade, (10.05 + y1 + 0.01 * k).astype(np.float32), colours,
                np.tile(np.float32([-0.06, -0.08, -0.04]), (n, 1)))


def _presence(d: _Draws, probs: Sequence[float], slots: int) -> list[np.ndarray]:
  """Per-slot `[n]` bool presence for a count drawn with `probs` over `0 .. len(probs) - 1`."""
  count = d.choice(probs)
  return [count > i for i in range(slots)]


def _draw_chunk(u: np.ndarray, noise: np.ndarray, size: int, layout: bool
                ) -> tuple[np.ndarray, np.ndarray, Layout | None]:
  """Renders the scenes of one chunk from their uniforms `[n, K]` and pixel noise `[n, H, W]`."""
  n = u.shape[0]
  d = _Draws(u)
  idx = np.arange(size, dtype=np.int32)
  horizon = np.rint(d.uniform(0.35, 0.6) * size).astype(np.int32)
  g = _Grid(size, size / 64, idx[None, :, None], idx[None, None, :],
            (idx[None, :, None] + 0.5).astype(np.float32),
            (idx[None, None, :] + 0.5).astype(np.float32), horizon)
  canvas = _Canvas(n, size)
  canvas.draw(0, _sky(d, g, n), layout)
  for k, (slot, on) in enumerate(zip(MOUNTAIN_SLOTS, _presence(d, [0.35, 0.35, 0.3], 2))):
    canvas.draw(slot, _mountain(d, g, on, k), layout)
  for k, (slot, on) in enumerate(zip(CLOUD_SLOTS, _presence(d, [0.25, 0.3, 0.25, 0.2], 3))):
    canvas.draw(slot, _cloud(d, g, on, k), layout)
  canvas.draw(GRASS_SLOT, _grass(d, g, n), layout)
  canvas.draw(WATER_SLOT, _water(d, g, d.uniform() < 0.4), layout)
  canvas.draw(ROAD_SLOT, _road(d, g, d.uniform() < 0.45), layout)
  walls, doors = [], []
  buildings = _presence(d, [0.3, 0.3, 0.22, 0.18], MAX_BUILDINGS)
  for k, (slot, on) in enumerate(zip(BUILDING_SLOTS, buildings)):
    layer, wall, door = _building(d, g, on, k)
    canvas.draw(slot, layer, layout)
    walls.append(wall)
    doors.append(door)
  trees = _presence(d, [0.3, 0.25, 0.2, 0.15, 0.1], MAX_TREES)
  for k, (slot, on) in enumerate(zip(TREE_SLOTS, trees)):
    canvas.draw(slot, _tree(d, g, on, k), layout)
  tint = (d.uniform(-0.05, 0.05), d.uniform(-0.07, 0.07))   # brightness, left-right light
  images = _colourize(canvas, noise, tint, g)
  labels = np.stack([_LAYER_CONCEPT[canvas.instance], _PART_CONCEPT[canvas.part]], axis=-1)
  if not layout:
    return images, labels, None
  masks = np.stack(canvas.masks, axis=1)               # [n, L, H, W]
  present = masks.any(axis=(2, 3))
  rows, cols = masks.any(axis=3), masks.any(axis=2)    # [n, L, H], [n, L, W]
  boxes = np.stack([rows.argmax(-1), cols.argmax(-1), size - rows[..., ::-1].argmax(-1),
                    size - cols[..., ::-1].argmax(-1)], axis=-1) * present[..., None]
  info = Layout(horizon, canvas.instance.copy(), present, boxes.astype(np.int32),
                np.stack(walls, axis=1), np.stack(doors, axis=1))
  return images, labels, info


def _colourize(canvas: _Canvas, noise: np.ndarray, tint: tuple[np.ndarray, np.ndarray],
               g: _Grid) -> np.ndarray:
  """Looks up each pixel's colour from its winning layer and part, plus shading and noise."""
  n, layers = noise.shape[0], len(LAYERS)
  # One table row per (image, layer, part): the colour at shade 0 and the shade direction.
  table = np.concatenate([canvas.colours, np.broadcast_to(
      canvas.shade_dir[:, :, None, :], canvas.colours.shape)], axis=-1).reshape(-1, 6)
  inst = canvas.instance.astype(np.int32)
  rows = (np.arange(n, dtype=np.int32)[:, None, None] * layers + inst) * 5 + canvas.part
  looked_up = np.take(table, rows, axis=0)                     # [n, H, W, 6]
  brightness, light = tint
  grain = np.take(_LAYER_NOISE, inst) * (noise * np.float32(2 / 255) - np.float32(1))
  grain += _col(brightness) + _col(light) * (g.xc / g.size - np.float32(0.5))
  colour = looked_up[..., :3] + canvas.shade[..., None] * looked_up[..., 3:]
  colour += grain[..., None]
  np.clip(colour * 2 - 1, -1, 1, out=colour)
  return colour


def _scene_draws(n: int, seed: int, start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """The uniforms `[n, K]` and pixel noise `[n, H, W]` uint8 of images `start .. start + n`."""
  u = np.empty((n, _NUM_UNIFORMS), np.float32)
  noise = np.empty((n, size, size), np.uint8)
  for i in range(n):
    rng = np.random.default_rng([seed, start + i])
    u[i] = rng.random(_NUM_UNIFORMS, np.float32)
    noise[i] = np.frombuffer(rng.bytes(size * size), np.uint8).reshape(size, size)
  return u, noise


def _check_args(n: int, seed: int, start: int, size: int) -> None:
  """Raises ValueError for arguments that cannot name a sample."""
  if n < 0:
    raise ValueError(f"n is {n}, expected a non-negative number of images")
  if seed < 0 or start < 0:
    raise ValueError(f"seed is {seed} and start is {start}, expected non-negative integers")
  if size < 16:
    raise ValueError(f"size is {size}, expected at least 16 pixels (64 is the design size)")


def render_with_layout(n: int, seed: int, start: int = 0, size: int = 64
                       ) -> tuple[np.ndarray, np.ndarray, Layout]:
  """Like `render`, plus the `Layout` (horizon, instance map, boxes) of every image."""
  _check_args(n, seed, start, size)
  parts = [_draw_chunk(*_scene_draws(min(_CHUNK, n - s), seed, start + s, size), size, True)
           for s in range(0, max(n, 1), _CHUNK)]
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  layout = Layout(*(np.concatenate(field) for field in zip(*[p[2] for p in parts])))
  return images, labels, layout


def render(n: int, seed: int, start: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Images `start .. start + n` of the sample numbered `seed`.

  Returns images `[n, size, size, 3]` float32 in [-1, 1] and labels `[n, size, size, 2]` int32
  (indices into `CONCEPTS`): channel 0 is the object (exactly one per pixel), channel 1 the part
  (roof, window or door on buildings, trunk on trees, 0 elsewhere).
  """
  _check_args(n, seed, start, size)
  images = np.empty((n, size, size, 3), np.float32)
  labels = np.empty((n, size, size, 2), np.int32)
  for s in range(0, n, _CHUNK):
    m = min(_CHUNK, n - s)
    images[s:s + m], labels[s:s + m], _ = _draw_chunk(
        *_scene_draws(m, seed, start + s, size), size, False)
  return images, labels


def concept_fractions(labels: np.ndarray, num_concepts: int = len(CONCEPTS)) -> np.ndarray:
  """`[K]` fraction of the pixels of `labels [..., H, W, D]` that have each concept.

  A pixel has concept `c > 0` if any of its channels equals `c`; entry 0 is the fraction of
  pixels with no label in any channel.
  """
  labels = np.asarray(labels)
  flat = labels.reshape(-1, labels.shape[-1])
  total = max(flat.shape[0], 1)
  out = np.zeros(num_concepts, np.float64)
  out[0] = np.count_nonzero((flat == 0).all(axis=1)) / total
  for c in range(1, num_concepts):
    out[c] = np.count_nonzero((flat == c).any(axis=1)) / total
  return out


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


def measure_speed(n: int = 2000, size: int = 64) -> float:
  """Images per second of `render(n, seed=0, size=size)` on this machine (one timed run)."""
  render(min(n, _CHUNK), seed=1, size=size)            # warm up allocations and caches
  t0 = time.perf_counter()
  render(n, seed=0, size=size)
  return n / (time.perf_counter() - t0)
