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

This module draws a sample: it hands out each image's uniforms, asks every drawing slot for its
layer in a fixed order and reads the labels off the z-buffer. The vocabulary lives in `concepts`,
the drawing machinery (z-buffer, shapes, colours) in `canvas`, the object kinds in `objects` and
the pictures of samples in `display`; their public names are importable from here as before.

A `Recipe` (how `scenes` makes scene classes) replaces the probabilities of the structural draws
(horizon, object counts, water and road kinds) per image. The uniforms are consumed in the same
order with or without one, and `render` never passes one, so its output does not depend on it.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Sequence

import numpy as np

from jaxdissect.sceneworld import objects
from jaxdissect.sceneworld.canvas import Canvas, Draws, Grid, colourize
from jaxdissect.sceneworld.concepts import (BUILDING_SLOTS, CLOUD_SLOTS, CONCEPT_INDEX, CONCEPTS,
                                            GRASS_SLOT, LAYER_CONCEPT, LAYERS, MAX_BUILDINGS,
                                            MAX_CLOUDS, MAX_MOUNTAINS, MAX_TREES, MOUNTAIN_SLOTS,
                                            PART_CONCEPT, ROAD_SLOT, TREE_SLOTS, WATER_SLOT,
                                            concept_fractions)
from jaxdissect.sceneworld.display import colorize, label_palette, sample_grid, tile

__all__ = ["BUILDING_SLOTS", "CLOUD_SLOTS", "CONCEPTS", "CONCEPT_INDEX", "GRASS_SLOT", "LAYERS",
           "MAX_BUILDINGS", "MAX_CLOUDS", "MAX_MOUNTAINS", "MAX_TREES", "MOUNTAIN_SLOTS",
           "NUM_UNIFORMS", "ROAD_SLOT", "TREE_SLOTS", "WATER_SLOT", "Layout", "Recipe", "colorize",
           "concept_fractions", "draw_scenes", "label_palette", "measure_speed", "render",
           "render_with_layout", "sample_grid", "tile"]

NUM_UNIFORMS = 512    # per image; fixed so that image i never depends on its neighbours
_CHUNK = 128          # images drawn at once: keeps the working set in cache


class Recipe(NamedTuple):
  """Per-image probabilities of the grammar's structural draws, replacing `render`'s defaults.

  Counts are tables `[n, k + 1]` of the probability of 0 .. k objects (rows need not be
  normalized); presences and kinds `[n]` probabilities; the horizon is drawn uniformly between
  `horizon[:, 0]` and `horizon[:, 1]` (`[n, 2]` fractions of the image height). `render`'s
  defaults are horizon 0.35 .. 0.6, mountains (0.35, 0.35, 0.3), clouds (0.25, 0.3, 0.25, 0.2),
  water 0.4, pond 0.5, road 0.45, perspective 0.6, buildings (0.3, 0.3, 0.22, 0.18) and trees
  (0.3, 0.25, 0.2, 0.15, 0.1).
  """

  horizon: np.ndarray
  mountains: np.ndarray
  clouds: np.ndarray
  water: np.ndarray
  pond: np.ndarray
  road: np.ndarray
  perspective: np.ndarray
  buildings: np.ndarray
  trees: np.ndarray


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


def _presence(d: Draws, probs: Sequence[float] | np.ndarray, slots: int) -> list[np.ndarray]:
  """Per-slot `[n]` bool presence for a count drawn with `probs` over `0 .. len(probs) - 1`
  (one table for all images, or a Recipe's `[n, k]` table per image)."""
  if np.ndim(probs) == 1:
    count = d.choice(probs)
  else:
    p = np.asarray(probs, np.float64)
    edges = np.cumsum(p, axis=1)[:, :-1] / p.sum(axis=1, keepdims=True)
    count = np.sum(d.uniform()[:, None] >= edges, axis=1)
  return [count > i for i in range(slots)]


def _draw_chunk(u: np.ndarray, noise: np.ndarray, size: int, layout: bool,
                recipe: Recipe | None = None) -> tuple[np.ndarray, np.ndarray, Layout | None]:
  """Renders the scenes of one chunk from their uniforms `[n, K]` and pixel noise `[n, H, W]`."""
  n = u.shape[0]
  d = Draws(u)
  r = recipe
  idx = np.arange(size, dtype=np.int32)
  lo, hi = (0.35, 0.6) if r is None else (r.horizon[:, 0], r.horizon[:, 1])
  horizon = np.rint(d.uniform(lo, hi) * size).astype(np.int32)
  g = Grid(size, size / 64, idx[None, :, None], idx[None, None, :],
           (idx[None, :, None] + 0.5).astype(np.float32),
           (idx[None, None, :] + 0.5).astype(np.float32), horizon)
  canvas = Canvas(n, size)
  canvas.draw(0, objects.sky(d, g, n), layout)
  mountains = _presence(d, [0.35, 0.35, 0.3] if r is None else r.mountains, MAX_MOUNTAINS)
  for k, (slot, on) in enumerate(zip(MOUNTAIN_SLOTS, mountains)):
    canvas.draw(slot, objects.mountain(d, g, on, k), layout)
  clouds = _presence(d, [0.25, 0.3, 0.25, 0.2] if r is None else r.clouds, MAX_CLOUDS)
  for k, (slot, on) in enumerate(zip(CLOUD_SLOTS, clouds)):
    canvas.draw(slot, objects.cloud(d, g, on, k), layout)
  canvas.draw(GRASS_SLOT, objects.grass(d, g, n), layout)
  if r is None:
    canvas.draw(WATER_SLOT, objects.water(d, g, d.uniform() < 0.4), layout)
    canvas.draw(ROAD_SLOT, objects.road(d, g, d.uniform() < 0.45), layout)
  else:
    canvas.draw(WATER_SLOT, objects.water(d, g, d.uniform() < r.water, r.pond), layout)
    canvas.draw(ROAD_SLOT, objects.road(d, g, d.uniform() < r.road, r.perspective), layout)
  walls, doors = [], []
  buildings = _presence(d, [0.3, 0.3, 0.22, 0.18] if r is None else r.buildings, MAX_BUILDINGS)
  for k, (slot, on) in enumerate(zip(BUILDING_SLOTS, buildings)):
    layer, wall, door = objects.building(d, g, on, k)
    canvas.draw(slot, layer, layout)
    walls.append(wall)
    doors.append(door)
  trees = _presence(d, [0.3, 0.25, 0.2, 0.15, 0.1] if r is None else r.trees, MAX_TREES)
  for k, (slot, on) in enumerate(zip(TREE_SLOTS, trees)):
    canvas.draw(slot, objects.tree(d, g, on, k), layout)
  tint = (d.uniform(-0.05, 0.05), d.uniform(-0.07, 0.07))   # brightness, left-right light
  images = colourize(canvas, noise, tint, g)
  labels = np.stack([LAYER_CONCEPT[canvas.instance], PART_CONCEPT[canvas.part]], axis=-1)
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


def _scene_draws(n: int, seed: int, start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """The uniforms `[n, K]` and pixel noise `[n, H, W]` uint8 of images `start .. start + n`."""
  u = np.empty((n, NUM_UNIFORMS), np.float32)
  noise = np.empty((n, size, size), np.uint8)
  for i in range(n):
    rng = np.random.default_rng([seed, start + i])
    u[i] = rng.random(NUM_UNIFORMS, np.float32)
    noise[i] = np.frombuffer(rng.bytes(size * size), np.uint8).reshape(size, size)
  return u, noise


def draw_scenes(u: np.ndarray, noise: np.ndarray, size: int = 64, recipe: Recipe | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """Images and labels (as `render`'s) of scenes drawn from given per-image uniforms
  `[n, NUM_UNIFORMS]` float32 in [0, 1) and pixel noise `[n, size, size]` uint8, optionally
  under a `recipe`; for samplers with their own random streams, such as `scenes`."""
  n = u.shape[0]
  images = np.empty((n, size, size, 3), np.float32)
  labels = np.empty((n, size, size, 2), np.int32)
  for s in range(0, n, _CHUNK):
    part = None if recipe is None else Recipe(*(field[s:s + _CHUNK] for field in recipe))
    images[s:s + _CHUNK], labels[s:s + _CHUNK], _ = _draw_chunk(
        u[s:s + _CHUNK], noise[s:s + _CHUNK], size, False, part)
  return images, labels


def check_sample_args(n: int, seed: int, start: int, size: int) -> None:
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
  check_sample_args(n, seed, start, size)
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
  check_sample_args(n, seed, start, size)
  images = np.empty((n, size, size, 3), np.float32)
  labels = np.empty((n, size, size, 2), np.int32)
  for s in range(0, n, _CHUNK):
    m = min(_CHUNK, n - s)
    images[s:s + m], labels[s:s + m], _ = _draw_chunk(
        *_scene_draws(m, seed, start + s, size), size, False)
  return images, labels


def measure_speed(n: int = 2000, size: int = 64) -> float:
  """Images per second of `render(n, seed=0, size=size)` on this machine (one timed run)."""
  render(min(n, _CHUNK), seed=1, size=size)            # warm up allocations and caches
  t0 = time.perf_counter()
  render(n, seed=0, size=size)
  return n / (time.perf_counter() - t0)
