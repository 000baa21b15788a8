"""Scene classes: labelled scene categories (village, harbour, forest...) of the scene grammar.

The classifier half of dissection (PNAS) asks which units of a scene classifier detect which
objects and which units a class needs. That needs a world whose classes are made of the same
objects the segmentation labels name, shared between classes, so that a classifier has to look
at which objects are there, how many and how they are laid out rather than at one colour. Each
class here is a `Recipe` for `render`'s grammar: how many mountains, buildings and trees, whether
there is water (a pond or a river) or a road (to the horizon or across), and where the horizon
is; everything else (colours, shapes, places, clouds) is drawn as in `render`. A per-image
lighting change (exposure and colour cast, as of weather and time of day) is applied afterwards:
it moves colours, never labels, so that colour alone cannot name a class.

Image `i` of a sample depends only on `(seed, start + i)`, as in `render`: its class is entry
`i mod N` of a permutation of the N classes seeded by `(seed, i div N)`, so every aligned block of
N images holds each class once, and its scene comes from its own random stream (not the one
`render(seed)` uses for that index).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxdissect.sceneworld.render import NUM_UNIFORMS, Recipe, check_sample_args, draw_scenes

_SALT = 0x5CE7E5         # separates these streams from render's `default_rng([seed, index])`
_NUM_LIGHT = 4           # uniforms per image for the lighting change


class SceneClass(NamedTuple):
  """One class's recipe: probabilities of counts `0, 1, ...` and of presences (see `Recipe`)."""

  name: str
  horizon: tuple[float, float]
  mountains: tuple[float, float, float]
  buildings: tuple[float, float, float, float]
  trees: tuple[float, float, float, float, float]
  water: float = 0.0
  pond: float = 0.5
  road: float = 0.0
  perspective: float = 0.6
  clouds: tuple[float, float, float, float] = (0.25, 0.3, 0.25, 0.2)


_NO_BUILDINGS = (1.0, 0.0, 0.0, 0.0)

# Classes share objects in pairs (lakeside and riverside differ only in the water's shape,
# highway and street in the buildings, highway and mountain pass in the mountains, village and
# street in the road, harbour and village in the water, forest and meadow in how many trees), so
# no single object names a class.
RECIPES: tuple[SceneClass, ...] = (
    SceneClass("meadow", (0.35, 0.6), (0.5, 0.5, 0.0), _NO_BUILDINGS,
               (0.6, 0.4, 0.0, 0.0, 0.0)),
    SceneClass("forest", (0.35, 0.55), (0.6, 0.4, 0.0), _NO_BUILDINGS,
               (0.0, 0.0, 0.0, 0.4, 0.6)),
    SceneClass("mountain_pass", (0.5, 0.65), (0.0, 0.4, 0.6), _NO_BUILDINGS,
               (0.5, 0.3, 0.2, 0.0, 0.0), road=1.0, perspective=0.5),
    SceneClass("highway", (0.35, 0.55), (1.0, 0.0, 0.0), _NO_BUILDINGS,
               (0.4, 0.3, 0.3, 0.0, 0.0), road=1.0, perspective=1.0),
    SceneClass("lakeside", (0.35, 0.6), (0.4, 0.4, 0.2), _NO_BUILDINGS,
               (0.0, 0.35, 0.35, 0.3, 0.0), water=1.0, pond=1.0),
    SceneClass("riverside", (0.35, 0.6), (0.4, 0.4, 0.2), _NO_BUILDINGS,
               (0.0, 0.35, 0.35, 0.3, 0.0), water=1.0, pond=0.0),
    SceneClass("harbour", (0.35, 0.55), (0.6, 0.4, 0.0), (0.0, 0.0, 0.5, 0.5),
               (0.6, 0.4, 0.0, 0.0, 0.0), water=1.0, pond=0.3),
    SceneClass("village", (0.35, 0.55), (0.6, 0.4, 0.0), (0.0, 0.0, 0.5, 0.5),
               (0.0, 0.4, 0.4, 0.2, 0.0)),
    SceneClass("street", (0.35, 0.55), (0.8, 0.2, 0.0), (0.0, 0.0, 0.5, 0.5),
               (0.6, 0.4, 0.0, 0.0, 0.0), road=1.0, perspective=1.0),
)
CLASSES: tuple[str, ...] = tuple(r.name for r in RECIPES)

# Lighting: exposure (gain on all channels), a colour cast per channel and a lift of the blacks,
# in [0, 1] colour units. Wide enough that a colour histogram shifts between bins.
_EXPOSURE = (0.7, 1.2)
_CAST = 0.12
_LIFT = (-0.05, 0.12)


def classes_of(n: int, seed: int, start: int = 0) -> np.ndarray:
  """`[n]` int32 class indices of images `start .. start + n` of sample `seed` (balanced in every
  aligned block of `len(CLASSES)` images)."""
  k = len(CLASSES)
  index = np.arange(start, start + n)
  out = np.empty(n, np.int32)
  for block in np.unique(index // k):
    perm = np.random.default_rng([_SALT, seed, int(block), 1]).permutation(k)
    here = index // k == block
    out[here] = perm[index[here] % k]
  return out


def recipe_for(classes: np.ndarray) -> Recipe:
  """The per-image `Recipe` of images of the given classes `[n]`."""
  classes = np.asarray(classes, np.int32)

  def field(name: str) -> np.ndarray:
    table = np.array([getattr(r, name) for r in RECIPES], np.float64)
    return table[classes]

  return Recipe(horizon=field("horizon"), mountains=field("mountains"),
                clouds=field("clouds"), water=field("water"), pond=field("pond"),
                road=field("road"), perspective=field("perspective"),
                buildings=field("buildings"), trees=field("trees"))


def _draws(n: int, seed: int, start: int, size: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Scene uniforms `[n, NUM_UNIFORMS]`, pixel noise `[n, H, W]` and lighting uniforms."""
  u = np.empty((n, NUM_UNIFORMS), np.float32)
  noise = np.empty((n, size, size), np.uint8)
  light = np.empty((n, _NUM_LIGHT), np.float32)
  for i in range(n):
    rng = np.random.default_rng([_SALT, seed, start + i])
    u[i] = rng.random(NUM_UNIFORMS, np.float32)
    noise[i] = np.frombuffer(rng.bytes(size * size), np.uint8).reshape(size, size)
    light[i] = rng.random(_NUM_LIGHT, np.float32)
  return u, noise, light


def relight(images: np.ndarray, light: np.ndarray) -> np.ndarray:
  """Images `[n, H, W, 3]` in [-1, 1] under the lighting of uniforms `light [n, 4]`."""
  exposure = _EXPOSURE[0] + (_EXPOSURE[1] - _EXPOSURE[0]) * light[:, :1]
  cast = _CAST * (2 * light[:, 1:4] - 1)
  cast -= cast.mean(axis=1, keepdims=True)
  lift = _LIFT[0] + (_LIFT[1] - _LIFT[0]) * light[:, :1]   # brighter scenes are also hazier
  gain = (exposure + cast)[:, None, None, :]
  x = (images + 1) * 0.5 * gain + lift[:, None, None, :] * (1 - (images + 1) * 0.5)
  return np.clip(x * 2 - 1, -1, 1).astype(np.float32)


def render_scenes(n: int, seed: int, size: int = 64, start: int = 0, lighting: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Images `start .. start + n` of the scene-class sample numbered `seed`.

  Returns images `[n, size, size, 3]` float32 in [-1, 1] (as `render`), exact labels
  `[n, size, size, 2]` int32 (object, part; indices into `CONCEPTS`) and classes `[n]` int32
  (indices into `CLASSES`). `lighting=False` leaves out the lighting change (same scenes and
  labels, `render`'s colours), to measure how much colour alone tells.
  """
  check_sample_args(n, seed, start, size)
  classes = classes_of(n, seed, start)
  u, noise, light = _draws(n, seed, start, size)
  images, labels = draw_scenes(u, noise, size, recipe_for(classes))
  return (relight(images, light) if lighting else images), labels, classes
