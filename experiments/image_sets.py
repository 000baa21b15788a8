"""What `--images` names: a folder of image files, or a built-in image set with exact labels.

A classifier is dissected over a dataset. A folder (`jaxdissect.imagefolder`) is read lazily,
each image resized and centre-cropped to the classifier's size; its pixels are labelled by a
segmenter. A built-in set (a world's renderer, say) comes with exact labels in extra channels
and its concepts (`jaxdissect.imagesource.ImageSet`), so it needs no segmenter; given one, the
segmenter labels its colour channels instead.

Built-in sets:
  sceneworld_scenes  the 2000 held-out scene-class scenes (seed 999, on which the shipped scene
                     classifier's accuracy is measured; it trained on seed 1000), rendered on
                     demand at the classifier's size with exact object and part labels.
"""

from __future__ import annotations

from typing import Callable

from experiments.cli import UsageError
from jaxdissect import imagefolder
from jaxdissect.imagesource import ImageSet


def _sceneworld_scenes(size: tuple[int, int]) -> ImageSet:
  from jaxdissect.sceneworld import sceneset  # pylint: disable=g-import-not-at-top
  if size[0] != size[1] or size[0] < 16:
    raise UsageError(f"--images=sceneworld_scenes renders square scenes of at least 16 pixels; "
                     f"the classifier takes {size[0]}x{size[1]} images")
  return sceneset.scene_image_set(size=size[0])


# Built-in image sets: name -> loader(size) giving an ImageSet of `size` (H, W) images. A
# constant table, extended here.
IMAGE_SETS: dict[str, Callable[[tuple[int, int]], ImageSet]] = {
    "sceneworld_scenes": _sceneworld_scenes,
}


def load(spec: str, size: tuple[int, int], resize: int | None = -1) -> ImageSet:
  """The image set `spec` names for a model taking `size` (H, W) images: a built-in name, else
  a folder (`resize` as for `imagefolder.open_folder`). Raises UsageError (one line)."""
  if spec in IMAGE_SETS:
    return IMAGE_SETS[spec](tuple(size))
  try:
    folder = imagefolder.open_folder(spec, size, resize)
  except imagefolder.ImageDataError as e:
    names = f" or a built-in image set ({', '.join(IMAGE_SETS)})" if IMAGE_SETS else ""
    raise UsageError(f"--images={spec}: {e}; give a folder of images{names}") from None
  return ImageSet(folder, folder.root)
