"""A planted-truth classifier: a tiny scene classifier whose class units are known by construction.

The classifier experiments (class ablation, attacks through units) can only be tested end to end
if we know which units a class needs. This module hand-builds a `Classifier` and the images it
classifies, with exact label maps, so that the answer is known.

The world, for images `[B, 32, 32, 3]`:
  * Every channel of every pixel is at one of two levels, `LO` = -0.5 or `HI` = 0.5. The
    background is (LO, LO, LO); the seven concepts are the other corners of that colour cube
    (`CONCEPT_COLOURS`: red, green, blue, cyan, magenta, yellow, white), painted as rectangles.
    The labels `[B, 32, 32, 1]` say which concept each pixel shows (0 = background).
  * `features [B, 32, 32, 32]` (at label resolution): the unit `PLANTED[c]` of concept c is
    the multilinear indicator of c's corner, the product over channels of (x - LO) / (HI - LO)
    where c is at HI and (HI - x) / (HI - LO) where it is at LO. On the dataset's colours it is
    exactly 1 on c's pixels and exactly 0 everywhere else, so its on-set at any threshold in
    [0, 1) is c's mask (IoU 1.0). Each concept covers 0.3-0.6% of all pixels, under the default
    top quantile of dissection (1%), so the (1 - 0.01) quantile of each planted unit is 0.
    Between the levels the product is smooth, so gradients reach a unit from the background
    when its concept differs from the background in one channel (red, green, blue): an attack
    can grow those units. The other 25 units (`NOISE_UNITS`) are ReLUs of weak random colour
    projections plus a fixed random spatial pattern: they respond to the image but no logit
    reads them, and none detects a concept. The pattern (scale 0.5) outweighs the colour term
    (scale `NOISE_COLOUR` = 0.05), so a noise unit's top 1% sits where its pattern peaks, at the
    same few pixels in every image, which a concept covers only by chance: its best IoU is
    about 0.01 (at most 0.017 for seeds 0-3), under dissection's 0.04. (With colour weights as
    large as the pattern, the top 1% followed the colour corner each projection favours and
    noise units matched concepts at IoU 0.2-0.3.)
  * `pool [B, 1, 1, 32]`: the spatial mean of `features`.
  * logits `[B, 6]`: class k reads the pooled planted units of its concepts `CLASS_CONCEPTS[k]`
    with weight 64, so a 4x4 region of one of them adds exactly 1.0 (1024 pixels, all sums
    exact in float32); bias 0.

The images (`planted_images`): each has a class k (uniform) and shows each concept of k as a
4x4 square, plus one decoy concept from another class (uniform over the other classes, then
over its concepts): a 3x3 square in images of one-concept classes, a 4x6 rectangle in images of
"beach" (yellow and white). Regions sit in distinct 8x8 cells. So the logit of the true class
(1.0 or 2.0) beats the decoy's (0.5625 or 1.5); ablating any one planted unit of the true
class drops it below the decoy's, and the image goes to the decoy's class. The baseline
classifier is exactly right on every image; ablating class k's planted units makes k never
predicted (balanced accuracy exactly 0.5) and leaves every other class's recall unchanged,
their balanced accuracy lowered only by the false positives the decoys bring them (about 0.02).
An image left with no evidence at all (when many units are removed) has all logits 0 and goes to
the first class, "poppies", by argmax's tie rule; curves that remove or keep several units show it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.classifier import Classifier, check_images
from jaxdissect.model import Edit, apply_edit, check_edits, check_layers

SIZE = 32
IMAGE_SHAPE = (SIZE, SIZE, 3)
LAYERS = ("features", "pool")
UNITS = 32
LO, HI = -0.5, 0.5
CONCEPT_COLOURS = {  # 1 = the channel is at HI
    "red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "cyan": (0, 1, 1),
    "magenta": (1, 0, 1), "yellow": (1, 1, 0), "white": (1, 1, 1)}
CONCEPTS = (("-", "none"),) + tuple((name, "color") for name in CONCEPT_COLOURS)
PLANTED = {"red": 3, "green": 10, "blue": 17, "cyan": 22, "magenta": 26, "yellow": 5,
           "white": 29}
CLASS_CONCEPTS = {"poppies": ("red",), "lawn": ("green",), "sea": ("blue",),
                  "pool": ("cyan",), "orchid": ("magenta",), "beach": ("yellow", "white")}
CLASSES = tuple(CLASS_CONCEPTS)
CLASS_UNITS = {k: tuple(PLANTED[c] for c in cs) for k, cs in CLASS_CONCEPTS.items()}
NOISE_UNITS = tuple(u for u in range(UNITS) if u not in PLANTED.values())
LOGIT_WEIGHT = 64.0  # a 4x4 region (16 of 1024 pixels) of a class's concept adds 1.0
NOISE_COLOUR = 0.05  # scale of the noise units' colour weights, 10x under their pattern's

_CELL = 8  # regions sit in distinct 8x8 cells of the 4x4 grid of cells
_SQUARE = (4, 4)  # each concept of the image's class
_DECOY = {1: (3, 3), 2: (4, 6)}  # by the number of concepts of the image's class
# features' channel order: the planted units, then the noise units, placed by this permutation
_ORDER = np.argsort(np.asarray(list(PLANTED.values()) + list(NOISE_UNITS)))


def planted_classifier_params(seed: int = 0) -> dict[str, dict[str, jax.Array]]:
  """The fixed weights; `seed` draws only the noise units' colour projections and patterns."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  noise = len(NOISE_UNITS)
  kernel = np.zeros((UNITS, len(CLASSES)), np.float32)
  for k, units in enumerate(CLASS_UNITS.values()):
    kernel[list(units), k] = LOGIT_WEIGHT
  return {
      "features": {
          "levels": jnp.asarray((LO, HI), jnp.float32),
          "corners": jnp.asarray(list(CONCEPT_COLOURS.values()), jnp.float32),
          "noise_kernel": NOISE_COLOUR * jax.random.normal(k1, (3, noise), jnp.float32),
          "noise_pattern": 0.5 * jax.random.normal(k2, (SIZE, SIZE, noise), jnp.float32)},
      "logits": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros((len(CLASSES),), jnp.float32)},
  }


def _features(p: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
  """`[B, H, W, 3]` images -> `[B, H, W, 32]`: planted corner indicators and noise units."""
  lo, hi = p["levels"][0], p["levels"][1]
  up = ((x - lo) / (hi - lo))[..., None, :]  # [B, H, W, 1, 3]: 1 at HI, 0 at LO
  down = ((hi - x) / (hi - lo))[..., None, :]
  corners = p["corners"]  # [7, 3]
  planted = jnp.prod(corners * up + (1 - corners) * down, axis=-1)  # [B, H, W, 7]
  noise = jax.nn.relu(x @ p["noise_kernel"] + p["noise_pattern"])
  return jnp.concatenate([planted, noise], axis=-1)[..., _ORDER]


def planted_classifier_apply(params: Any, images: jax.Array,
                             edits: Mapping[str, Edit] | None = None,
                             capture: Sequence[str] | str | None = None
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The protocol `apply_fn`: `images [B, 32, 32, 3] -> (logits [B, 6], acts)`."""
  images = check_images(images, IMAGE_SHAPE)
  edits, names = check_edits(edits, LAYERS), check_layers(capture, LAYERS)
  acts = {}
  x = _features(params["features"], images)
  for name in LAYERS:
    if name == "pool":
      x = jnp.mean(x, axis=(1, 2), keepdims=True)
    if name in names:
      acts[name] = x
    x = apply_edit(x, edits.get(name), name)
  logits = x[:, 0, 0, :] @ params["logits"]["kernel"] + params["logits"]["bias"]
  return logits, acts


def make_planted_classifier(seed: int = 0) -> Classifier:
  """The planted classifier (`seed` only varies the noise units; the planted truth is fixed)."""
  return Classifier(planted_classifier_apply, planted_classifier_params(seed), LAYERS, CLASSES,
                    IMAGE_SHAPE)


def concept_colours() -> np.ndarray:
  """`[8, 3]` float32: the colour of label index i (0 = background) in image units."""
  corners = np.asarray([(0, 0, 0)] + list(CONCEPT_COLOURS.values()), np.float32)
  return np.where(corners > 0, np.float32(HI), np.float32(LO)).astype(np.float32)


def _regions(cls: int, decoy: int, draws: np.ndarray) -> list[tuple[int, int, int, int, int]]:
  """`(label, top, left, height, width)` of one image's rectangles from its uniform draws."""
  index = {name: i + 1 for i, name in enumerate(CONCEPT_COLOURS)}
  own = CLASS_CONCEPTS[CLASSES[cls]]
  decoys = CLASS_CONCEPTS[CLASSES[decoy]]
  shapes = [(index[c], *_SQUARE) for c in own]
  pick = decoys[min(int(draws[0] * len(decoys)), len(decoys) - 1)]
  shapes.append((index[pick], *_DECOY[len(own)]))
  cells = np.argsort(draws[1:17])[:len(shapes)]
  out = []
  for (label, h, w), cell, (dy, dx) in zip(shapes, cells, draws[17:].reshape(-1, 2)):
    top = (cell // 4) * _CELL + int(dy * (_CELL - h + 1))
    left = (cell % 4) * _CELL + int(dx * (_CELL - w + 1))
    out.append((label, top, left, h, w))
  return out


def planted_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """n images of the planted world: `(images [n, 32, 32, 3] float32 in [-1, 1], labels
  [n, 32, 32, 1] int32 (0 = background, i = CONCEPTS[i]), classes [n] int32)`.

  Deterministic per seed and prefix-stable (the first n of a longer sample are the same), as
  z samples are: every image is drawn from its own row of one uniform array.
  """
  if n < 1:
    raise ValueError(f"n is {n}, expected a positive number of images")
  draws = np.random.default_rng(seed).random((n, 25))
  k = len(CLASSES)
  classes = np.minimum((draws[:, 0] * k).astype(np.int32), k - 1)
  decoys = (classes + 1 + np.minimum((draws[:, 1] * (k - 1)).astype(np.int32), k - 2)) % k
  labels = np.zeros((n, SIZE, SIZE), np.int32)
  for i in range(n):
    for label, top, left, h, w in _regions(int(classes[i]), int(decoys[i]), draws[i, 2:]):
      labels[i, top:top + h, left:left + w] = label
  images = concept_colours()[labels]
  return images, labels[..., None], classes
