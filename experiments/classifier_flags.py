"""The `--model` (a classifier), `--images` and `--resize` flags of scripts that study a
classifier over a dataset (with `experiments.spec_flags`' `--segmenter`, `--model_arg`, ...)."""

from __future__ import annotations

from typing import NamedTuple

from absl import flags

from experiments import image_sets, models, spec_flags
from experiments.cli import UsageError
from jaxdissect import zoo
from jaxdissect.imagesource import ImageSet

_MODEL = flags.DEFINE_string(
    "model", None, "Classifier spec: " + zoo.describe_specs("classifier") + ".")
_IMAGES = flags.DEFINE_string(
    "images", None, "The dataset: a folder of images (.jpg, .png, ...; searched recursively, in "
    "sorted order of their paths) or a built-in image set with exact labels.")
_RESIZE = flags.DEFINE_integer(
    "resize", None, "Shorter side each image of a folder is resized to before the centre crop "
    "to the classifier's size (torchvision's Resize + CenterCrop; default: the classifier's "
    "larger side; 0: no resizing, every image must be the classifier's size).")



class Loaded(NamedTuple):
  """The models and the image set the flags name."""

  models: models.ClassifierModels
  images: ImageSet


def resize_value() -> int | None:
  """`--resize` as `imagefolder.open_folder` takes it (-1: the default; None: none)."""
  if _RESIZE.value is None:
    return -1
  return None if _RESIZE.value == 0 else _RESIZE.value


def from_flags() -> Loaded:
  """The classifier, segmenter and image set the flags name (UsageError for bad ones)."""
  for flag in (_MODEL, _IMAGES):
    if not flag.value:
      raise UsageError(f"--{flag.name} is required: {flags.FLAGS[flag.name].help}")
  if _RESIZE.value is not None and _RESIZE.value < 0:
    raise UsageError(f"--resize={_RESIZE.value}; expected a side in pixels, or 0 for none")
  loaded = models.load_classifier_models(_MODEL.value, spec_flags.SEGMENTER.value,
                                         spec_flags.MODEL_ARG.value,
                                         spec_flags.SEGMENTER_ARG.value, spec_flags.DTYPE.value)
  size = loaded.classifier.image_shape[:2]
  return Loaded(loaded, image_sets.load(_IMAGES.value, size, resize_value()))
