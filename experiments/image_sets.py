"""What `--images` names: a folder of image files, or a built-in image set with exact labels.

A classifier is dissected over a dataset. A folder (`jaxdissect.imagefolder`) is read lazily,
each image resized and centre-cropped to the classifier's size; its pixels are labelled by a
segmenter. A built-in set (a world's renderer, say) comes with exact labels in extra channels
and its concepts (`jaxdissect.imagesource.ImageSet`), so it needs no segmenter.
"""

from __future__ import annotations

from typing import Callable

from experiments.cli import UsageError
from jaxdissect import imagefolder
from jaxdissect.imagesource import ImageSet

# Built-in image sets: name -> loader(size) giving an ImageSet of `size` (H, W) images. A
# constant table, extended here (e.g. the scene world's rendered scenes with exact labels).
IMAGE_SETS: dict[str, Callable[[tuple[int, int]], ImageSet]] = {}


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
