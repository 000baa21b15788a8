"""The scene world's object kinds, one function each: what it looks like and where it may stand.

Each function reads its parameters from the per-image uniforms in a fixed order and returns the
`Layer` of one drawing slot (a building also its wall and door boxes). The context rules of the
scene grammar live here: clouds wholly in the sky, mountains on the horizon, water and roads
below it, buildings and trees standing on the ground, smaller when farther away.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxdissect.sceneworld.canvas import (Draws, Grid, Layer, col, colf, ellipse_r2, flat,
                                          perspective_scale, px, rect)
from jaxdissect.sceneworld.concepts import DOOR, NO_PART, ROOF, TRUNK, WINDOW

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


def sky(d: Draws, g: Grid, n: int) -> Layer:
  """The whole frame, shaded from the zenith colour to a paler horizon colour."""
  top = d.colour(_SKY_TOP, 0.06)
  bottom = d.colour(_SKY_HORIZON[:2], 0.04)
  evening = d.colour(_SKY_HORIZON[2:], 0.04)
  bottom = np.where((d.uniform() < 0.15)[:, None], evening, bottom)
  shade = np.broadcast_to(np.clip(g.yc / colf(g.horizon), 0.0, 1.0), (n, g.size, g.size))
  return Layer(np.ones((n, g.size, g.size), bool), None, shade, np.zeros(n, np.float32),
               flat(top), (bottom - top).astype(np.float32))


def mountain(d: Draws, g: Grid, present: np.ndarray, k: int) -> Layer:
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
  mask = (g.yc > (h[:, None] - profile)[:, None, :]) & (g.y < col(g.horizon)) & col(present)
  shade = np.broadcast_to((g.xc > col(cx)).astype(np.float32), mask.shape)
  return Layer(mask, None, shade, np.full(len(h), 1 + 0.1 * k, np.float32),
               flat(colour), np.tile(np.float32([-0.07, -0.07, -0.05]), (len(h), 1)))


def cloud(d: Draws, g: Grid, present: np.ndarray, k: int) -> Layer:
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
  r2 = functools.reduce(np.minimum, [ellipse_r2(g, cy + dy, cx + dx, sy, sx)
                                     for dy, dx, sy, sx in parts])
  mask = (r2 <= 1) & col(present)
  lift = np.clip((g.yc - col(cy)) / col(ry), 0, 1)         # greyer underside
  shade = (np.sqrt(np.clip(r2, 0, 1)) * 0.7 + 0.3 * lift).astype(np.float32)
  colour = d.colour(_CLOUD, 0.03)
  return Layer(mask, None, shade, np.full(len(cx), 2 + 0.1 * k, np.float32),
               flat(colour), np.tile(np.float32([-0.14, -0.11, -0.06]), (len(cx), 1)))


def grass(d: Draws, g: Grid, n: int) -> Layer:
  """Everything from the horizon down, brighter towards the viewer."""
  mask = np.broadcast_to(g.y >= col(g.horizon), (n, g.size, g.size))
  depth = (g.yc - colf(g.horizon)) / colf(np.maximum(g.size - g.horizon, 1))
  shade = np.broadcast_to(depth, mask.shape).astype(np.float32)
  colour = d.colour(_GRASS, 0.05)
  return Layer(mask, None, shade, np.full(n, 3, np.float32), flat(colour),
               np.tile(np.float32([0.04, 0.08, 0.02]), (n, 1)))


def water(d: Draws, g: Grid, present: np.ndarray, pond: float | np.ndarray = 0.5) -> Layer:
  """A pond (ellipse; with probability `pond`) or a wavy river band, wholly at or below the
  horizon row."""
  n, h = len(present), g.horizon.astype(np.float32)
  pond = d.uniform() < pond
  rx, ry = d.uniform(8, 20) * g.scale, d.uniform(2.5, 6) * g.scale
  # Pixel centres reach up to cy - ry - 0.5: keep the top row >= horizon.
  cy = np.maximum(d.uniform(h + ry + 0.5, g.size + 0.3 * ry), h + ry + 0.5)
  cx = d.uniform(0, 1) * g.size
  pond_mask = ellipse_r2(g, cy, cx, ry, rx) <= 1
  amp, thick = d.uniform(0, 2) * g.scale, d.uniform(3, 8) * g.scale
  period, phase = d.uniform(20, 60) * g.scale, d.uniform(0, 2 * np.pi)
  top0 = np.maximum(d.uniform(h + amp, g.size - thick), h + amp)
  top = col(top0) + col(amp) * np.sin(g.xc * col(2 * np.pi / period) + col(phase))
  river_mask = (g.yc > top) & (g.yc < top + col(thick))
  mask = np.where(col(pond), pond_mask, river_mask) & (g.y >= col(g.horizon)) & col(present)
  ripple = 0.5 + 0.5 * np.sin(g.yc * 2.2 + 0.25 * g.xc + col(d.uniform(0, 2 * np.pi)))
  return Layer(mask, None, ripple.astype(np.float32), np.full(n, 4, np.float32),
               flat(d.colour(_WATER, 0.05)), np.tile(np.float32([0.08, 0.1, 0.1]), (n, 1)))


def road(d: Draws, g: Grid, present: np.ndarray, perspective: float | np.ndarray = 0.6) -> Layer:
  """A road running to the horizon in perspective (with probability `perspective`), or a band
  across the ground, with markings."""
  n, h = len(present), g.horizon.astype(np.float32)
  perspective = d.uniform() < perspective
  xb, wb = d.uniform(0.15, 0.85) * g.size, d.uniform(0.3, 0.65) * g.size
  xt, wt = (0.5 * xb + d.uniform(0.1, 0.4) * g.size), d.uniform(0.02, 0.07) * g.size
  t = np.clip((g.yc - col(h)) / col(g.size - h), 0, 1)
  centre = col(xt) + (col(xb) - col(xt)) * t
  half = 0.5 * (col(wt) + (col(wb) - col(wt)) * t)
  off = np.abs(g.xc - centre)
  dash_period = 2 + 6 * t
  persp_mask = off <= half
  persp_mark = (off < 0.035 * half + 0.25) & ((g.yc - col(h)) % dash_period < 0.55 * dash_period)
  thick, slope = d.uniform(4, 8) * g.scale, d.uniform(-0.15, 0.15)
  top0 = d.uniform(h + 2, g.size - thick)
  top0 = np.maximum(top0, h + np.abs(slope) * g.size / 2 + 0.5)
  top = col(top0) + col(slope) * (g.xc - g.size / 2)
  band_mask = (g.yc > top) & (g.yc < top + col(thick))
  band_mark = (np.abs(g.yc - top - col(thick) / 2) < 0.5) & (g.x % 6 < 3)
  mask = np.where(col(perspective), persp_mask, band_mask)
  mask &= (g.y >= col(g.horizon)) & col(present)
  mark = np.where(col(perspective), persp_mark, band_mark).astype(np.float32)
  colour = d.colour(_ROAD, 0.03)
  marked = d.uniform() < 0.7
  shade_dir = (np.float32(_ROAD_MARK) - colour) * marked[:, None]
  return Layer(mask, None, mark, np.full(n, 5, np.float32), flat(colour),
               shade_dir.astype(np.float32))


def building(d: Draws, g: Grid, present: np.ndarray, k: int
             ) -> tuple[Layer, np.ndarray, np.ndarray]:
  """A wall with a roof on top, windows in a grid and a door standing on the wall's base row.

  Returns the layer and the `(y0, x0, y1, x1)` boxes `[n, 4]` of its wall and door.
  """
  n, h = len(present), g.horizon
  y1 = d.integer(h + 3, g.size)                         # base: wall rows end here (exclusive)
  p = perspective_scale(g, y1)
  w = px(d.uniform(10, 24) * p, g, 7)
  hw = px(d.uniform(9, 22) * p, g, 9)
  x0 = np.rint(d.uniform(-w / 3, g.size - 2 * w / 3)).astype(np.int32)
  x1, top = x0 + w, y1 - hw
  wall = rect(g, top, x0, y1, x1)
  # Roof: gable (f = 0), hipped (0 < f < 1) or a flat slab (f = 1), with an overhang.
  kind = d.choice([0.45, 0.25, 0.30])
  f = np.choose(kind, [np.zeros(n), d.uniform(0.35, 0.65), np.ones(n)])
  rh = px(np.choose(kind, [d.uniform(4, 9), d.uniform(3, 6), d.uniform(2, 3.2)]) * p, g, 2)
  over = np.where(kind == 2, d.integer(0, 1), d.integer(0, 2))
  frac = (g.yc + 0.5 - colf(top - rh)) / colf(rh)
  halfw = col(w / 2 + over) * (col(f) + (1 - col(f)) * frac)
  roof = (g.y >= col(top - rh)) & (g.y < col(top)) & (np.abs(g.xc - col(x0 + w / 2)) <= halfw)
  # Door: on the base row, inside the wall with a one-pixel margin.
  has_door = d.uniform() < 0.85
  dw = np.minimum(px(d.uniform(3, 5) * p, g, 3), w - 2)
  dh = np.minimum(px(d.uniform(5, 8) * p, g, 5), hw - 2)
  dx0 = x0 + 1 + np.floor(d.uniform() * (w - 1 - dw)).astype(np.int32)
  door = rect(g, y1 - dh, dx0, y1, dx0 + dw) & col(has_door)
  # Windows: a centred grid on the wall; cells that would touch the door are left out.
  has_windows = d.uniform() < 0.85
  ww, wh = px(d.uniform(2, 4) * p, g, 2), px(d.uniform(3, 5) * p, g, 3)
  gx, gy = px(d.uniform(2, 4) * p, g, 2), px(d.uniform(2, 3.5) * p, g, 2)
  mx, my = np.maximum(1, gx - 1), np.maximum(1, gy - 1)
  nc = np.clip((w - 2 * mx + gx) // (ww + gx), 0, 4)
  nr = np.clip((hw - my - 2 + gy) // (wh + gy), 0, 4)
  sx = x0 + (w - (nc * (ww + gx) - gx)) // 2
  sy = top + my
  ci = (g.x - col(sx)) // col(ww + gx)
  ri = (g.y - col(sy)) // col(wh + gy)
  wx0, wy0 = col(sx) + ci * col(ww + gx), col(sy) + ri * col(wh + gy)
  in_cell = (g.x - wx0 < col(ww)) & (g.y - wy0 < col(wh))
  grid = (ci >= 0) & (ci < col(nc)) & (ri >= 0) & (ri < col(nr)) & in_cell
  near_door = ((wx0 < col(dx0 + dw + 1)) & (wx0 + col(ww) > col(dx0 - 1))
               & (wy0 + col(wh) > col(y1 - dh - 1)) & col(has_door))
  windows = grid & ~near_door & col(has_windows)
  part = np.zeros(wall.shape, np.int8)
  part[roof] = ROOF
  part[windows] = WINDOW
  part[door] = DOOR
  mask = (wall | roof) & col(present)
  wall_colour = d.colour(_WALL, 0.04)
  colours = flat(wall_colour, {ROOF: d.colour(_ROOF_COLOURS, 0.04),
                               WINDOW: d.colour(_WINDOW_COLOURS, 0.04),
                               DOOR: d.colour(_DOOR_COLOURS, 0.04)})
  shade = (g.yc - colf(top)) / colf(hw)
  layer = Layer(mask, part, shade, (10 + y1 + 0.01 * k).astype(np.float32), colours,
                np.tile(np.float32([-0.07, -0.07, -0.06]), (n, 1)))
  wall_box = np.stack([top, x0, y1, x1], axis=1) * present[:, None]
  door_box = np.stack([y1 - dh, dx0, y1, dx0 + dw], axis=1) * (present & has_door)[:, None]
  return layer, wall_box.astype(np.int32), door_box.astype(np.int32)


def tree(d: Draws, g: Grid, present: np.ndarray, k: int) -> Layer:
  """A trunk standing on the ground under a round (deciduous) or triangular (conifer) canopy."""
  n, h = len(present), g.horizon
  y1 = d.integer(h + 2, g.size)
  p = perspective_scale(g, y1)
  tw = px(d.uniform(2, 3.5) * p, g, 2)
  th = px(d.uniform(4, 9) * p, g, 4)
  cx = d.uniform(0, 1) * g.size
  tx0 = np.rint(cx - tw / 2).astype(np.int32)
  ttop = y1 - th
  trunk = rect(g, ttop, tx0, y1, tx0 + tw)
  conifer = d.uniform() < 0.3
  rx = d.uniform(4, 9) * g.scale * p
  ry = rx * d.uniform(0.9, 1.35)
  cy = ttop - ry + d.uniform(1, 2.5) * g.scale * p         # overlaps the trunk's top
  mid = tx0 + tw / 2
  r2 = ellipse_r2(g, cy, mid, ry, rx)
  round_canopy = r2 <= 1
  ch = d.uniform(10, 20) * g.scale * p
  cbase = ttop + 1.0
  up = (col(cbase) - g.yc) / col(ch)                        # 0 at the base, 1 at the apex
  spread = rx * d.uniform(0.8, 1.05)
  cone = (up >= 0) & (up <= 1) & (np.abs(g.xc - col(mid)) <= col(spread) * (1 - up))
  canopy = np.where(col(conifer), cone, round_canopy)
  mask = (canopy | trunk) & col(present)
  part = np.where(trunk & ~canopy, np.int8(TRUNK), np.int8(NO_PART))
  # Light from the upper left on the canopy; flat trunk.
  light = ((g.xc - col(mid)) / col(rx) + (g.yc - col(cy)) / col(ry)) * 0.5
  shade = np.where(canopy, np.clip(light, -1, 1), 0).astype(np.float32)
  canopy_colour = np.where(conifer[:, None], d.colour(_CONIFER, 0.04), d.colour(_CANOPY, 0.05))
  colours = flat(canopy_colour.astype(np.float32), {TRUNK: d.colour(_TRUNK_COLOURS, 0.04)})
  return Layer(mask, part, shade, (10.05 + y1 + 0.01 * k).astype(np.float32), colours,
               np.tile(np.float32([-0.06, -0.08, -0.04]), (n, 1)))
