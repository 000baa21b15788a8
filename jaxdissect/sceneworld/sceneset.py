"""The scene classes as a dataset with exact labels, rendered row by row when asked for.

PNAS dissects a scene classifier over a dataset of images labelled by a segmenter. In the scene
world the renderer gives the images and their exact labels at once, so the classifier's units can
be dissected against the truth and against the scene segmenter's labels of the very same images.

The engine reads a dataset as rows of an array by index, batch after batch and again for each
unit's top images (`jaxdissect.latents`). Scene `i` of a sample depends only on `(seed, i)`
(`scenes.render_scenes`), so the dataset need not be held: `SceneImages` behaves like such an
array and renders only the rows asked for (about 1 ms each at 64x64), colour first, then the two
exact label channels (object, part) as `jaxdissect.imagesource` expects them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxdissect.imagefolder import row_positions
from jaxdissect.imagesource import ImageSet
from jaxdissect.sceneworld.concepts import CONCEPTS
from jaxdissect.sceneworld.scenes import render_scenes

LABEL_DEPTH = 2  # object, part
# The held-out scenes the shipped classifier's accuracy is measured on
# (`weights/classifier_eval.json`: eval_seed 999, eval_n 2000; it trained on seed 1000).
HELD_OUT_SEED, HELD_OUT_COUNT = 999, 2000


class SceneImages:
  """Scenes `0 .. count` of sample `seed` as a read-only `[count, size, size, 3 + 2]` float32
  array: colour in [-1, 1], then the object and part label indices (exact in float32).

  Indexing with an int gives one row; a slice, a list or an integer array give `[len, ...]`.
  Contiguous runs are rendered together, so a batch costs one call of the renderer.
  """

  def __init__(self, count: int, seed: int, size: int = 64):
    if count < 1:
      raise ValueError(f"count is {count}, expected a positive number of scenes")
    render_scenes(0, seed, size)  # checks seed and size
    self.count, self.seed, self.size = int(count), int(seed), int(size)

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (self.count, self.size, self.size, 3 + LABEL_DEPTH)

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32)

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, index: Any) -> np.ndarray:
    rows, one = row_positions(index, self.count, "SceneImages are", "scene")
    scenes = self._render(rows)
    return scenes[0] if one else scenes

  def _render(self, rows: Sequence[int]) -> np.ndarray:
    out = np.empty((len(rows), *self.shape[1:]), np.float32)
    j = 0
    while j < len(rows):  # one renderer call per run of consecutive rows
      k = j + 1
      while k < len(rows) and rows[k] == rows[k - 1] + 1:
        k += 1
      images, labels, _ = render_scenes(k - j, self.seed, self.size, start=rows[j])
      out[j:k, ..., :3] = images
      out[j:k, ..., 3:] = labels
      j = k
    return out

  def record(self) -> dict[str, Any]:
    """What a dissection records about these images: enough to render them again."""
    return {"reader": "sceneworld.render_scenes", "seed": self.seed, "count": self.count,
            "shape": list(self.shape[1:]), "lighting": True}


def scene_image_set(count: int = HELD_OUT_COUNT, seed: int = HELD_OUT_SEED, size: int = 64
                    ) -> ImageSet:
  """The scene-class dataset with its exact labels and the scene world's concepts."""
  return ImageSet(SceneImages(count, seed, size), f"sceneworld scenes (seed {seed})", CONCEPTS)
