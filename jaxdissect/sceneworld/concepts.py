"""The scene world's vocabulary: its concepts, the drawing slots and the part slots.

Everything that names what a pixel can be lives here, shared by the drawing code (`canvas`,
`objects`), the renderer (`render`) and its users: `CONCEPTS` is the label numbering of every
label map the scene world produces, `LAYERS` the drawing slots an `instance` map indexes.
"""

from __future__ import annotations

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

# Part slots within a layer (colour table rows) and the part concept each one labels, and the
# object concept of each drawing slot.
NO_PART, ROOF, WINDOW, DOOR, TRUNK = range(5)
PART_CONCEPT = np.array([0] + [CONCEPT_INDEX[p] for p in ("roof", "window", "door", "trunk")],
                        np.int32)
LAYER_CONCEPT = np.array([CONCEPT_INDEX[name] for name in LAYERS], np.int32)


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
