"""What the class experiments share: the classifier, labelled image sets, the unit ranking.

`classifier_ablation` and `classifier_attack` both need a classifier, images with their true
classes drawn from a seeded sample (a training split to rank units on, held-out images to
measure on) and each class's units ranked by single-unit ablation on the training split. The
flags and the ranking live here so both scripts name and compute them the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli, models, spec_flags
from experiments.cli import UsageError
from experiments.progress import progress_hook
from jaxdissect import class_ablation, class_margins
from jaxdissect.classifier import Classifier

MODEL = flags.DEFINE_string("model", "sceneworld", "Classifier spec (jaxdissect.zoo), e.g. "
                            "sceneworld or jaxdissect.planted_classifier:make_planted_classifier.")
DATASET = flags.DEFINE_string("dataset", "sceneworld", "Labelled image set: sceneworld (rendered "
                              "scene classes) or planted (the planted classifier's world).")
LAYER = flags.DEFINE_string("layer", None, "Layer whose units are ranked and ablated (default: "
                            "the classifier's last layer with more than one pixel).")
TRAIN_N = flags.DEFINE_integer("train_n", 2000, "Images of the training split units are "
                               "ranked on.")
TRAIN_SEED = flags.DEFINE_integer("train_seed", 1000, "Sample of the training split (1000: the "
                                  "scene classifier's own training images).")
TIEBREAK = flags.DEFINE_enum("tiebreak", "margin", ["margin", "index"], "How units whose "
                             "ablation costs a class the same accuracy are ordered: by the drop "
                             "of the class's mean logit margin, or by unit index (the paper's "
                             "rule alone).")
BATCH = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
CHUNK = flags.DEFINE_integer("chunk", 128, "Edits vmapped per classifier call.")
QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")
TOP = flags.DEFINE_integer("top", 4, "A class's top units: in the ablation's table and "
                           "acceptance check, and the units the attack's change is measured on.")
OUTDIR = flags.DEFINE_string("outdir", None, "Output folder (default results/class-<model>).")


def _scenes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  from jaxdissect.sceneworld import scenes  # pylint: disable=g-import-not-at-top
  images, _, classes = scenes.render_scenes(n, seed)
  return images, classes, scenes.CLASSES


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  from jaxdissect import planted_classifier  # pylint: disable=g-import-not-at-top
  images, _, classes = planted_classifier.planted_images(n, seed)
  return images, classes, planted_classifier.CLASSES


# Labelled image sets: name -> (n, seed) -> (images [n, H, W, 3], classes [n], class names).
DATASETS: dict[str, Callable[[int, int], tuple[np.ndarray, np.ndarray, tuple[str, ...]]]] = {
    "sceneworld": _scenes, "planted": _planted}


class Setup(NamedTuple):
  """The loaded classifier, the layer studied and the model spec."""

  classifier: Classifier
  layer: str
  model: str
  model_args: dict[str, Any]


def outdir() -> str:
  """The output folder `--outdir` names, or the model's default, created."""
  return cli.writable_dir("outdir", OUTDIR.value or os.path.join(
      "results", f"class-{models.slug(MODEL.value)}"))


def last_spatial_layer(classifier: Classifier) -> str:
  """The classifier's last layer with more than one pixel (its last layer if none has)."""
  x = jax.ShapeDtypeStruct((1, *classifier.image_shape), jnp.float32)
  _, acts = jax.eval_shape(
      lambda x: classifier.apply_fn(classifier.params, x, capture=classifier.layers), x)
  spatial = [n for n in classifier.layers if acts[n].shape[1] * acts[n].shape[2] > 1]
  return (spatial or classifier.layers)[-1]


def setup() -> Setup:
  """The classifier and layer the flags name (UsageError for bad ones)."""
  if DATASET.value not in DATASETS:
    raise UsageError(f"--dataset={DATASET.value!r}; valid image sets are: {', '.join(DATASETS)}")
  for flag in (TRAIN_N, BATCH, CHUNK, TOP):
    if flag.value < 1:
      raise UsageError(f"--{flag.name}={flag.value}; expected a positive integer")
  m = models.load_classifier_models(MODEL.value, None, spec_flags.MODEL_ARG.value, None,
                                    spec_flags.DTYPE.value)
  classifier = m.classifier
  layer = LAYER.value or last_spatial_layer(classifier)
  if layer not in classifier.layers:
    raise UsageError(f"--layer={layer!r} is not a layer of {MODEL.value}; its layers are: "
                     f"{', '.join(classifier.layers)}")
  return Setup(classifier, layer, MODEL.value, m.model_args)


def images(classifier: Classifier, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`(images, classes)`: n images of sample `seed` of `--dataset`, checked against the
  classifier (its image size and its class names, in order)."""
  if n < 1:
    raise UsageError(f"an image count is {n}; expected a positive number of images")
  x, y, names = cli.checked(DATASETS[DATASET.value], n, seed)
  if tuple(names) != tuple(classifier.classes):
    raise UsageError(f"--dataset={DATASET.value} has classes {', '.join(names)} but the "
                     f"classifier's are {', '.join(classifier.classes)}")
  if x.shape[1:] != tuple(classifier.image_shape):
    raise UsageError(f"--dataset={DATASET.value} has images of shape {list(x.shape[1:])}; the "
                     f"classifier takes {list(classifier.image_shape)}")
  return x, y


class Ranking(NamedTuple):
  """Each class's units ranked on the training split, and the sweeps that ranked them."""

  order: np.ndarray                          # [K, U]
  sweep: class_ablation.Sweep
  margins: class_margins.MarginSweep | None  # None with --tiebreak index


def rank(s: Setup) -> Ranking:
  """Single-unit sweeps on the training split (`--train_n`, `--train_seed`) and the ranking."""
  x, y = images(s.classifier, TRAIN_N.value, TRAIN_SEED.value)
  common = dict(batch_size=BATCH.value, chunk=CHUNK.value)
  sweep = class_ablation.single_unit_sweep(
      s.classifier, s.layer, x, y, progress=progress_hook(QUIET.value, "single-unit sweep"),
      **common)
  margins = None
  if TIEBREAK.value == "margin":
    margins = class_margins.single_unit_margins(
        s.classifier, s.layer, x, y, progress=progress_hook(QUIET.value, "single-unit margins"),
        **common)
  order = class_margins.rank_units(sweep.drop, None if margins is None else margins.drop)
  return Ranking(order, sweep, margins)


def settings() -> dict:
  """The shared flags' values, for the result JSON."""
  return {"model": MODEL.value, "dataset": DATASET.value, "train_n": TRAIN_N.value,
          "train_seed": TRAIN_SEED.value, "tiebreak": TIEBREAK.value,
          "batch_size": BATCH.value, "chunk": CHUNK.value, "top": TOP.value,
          "dtype": spec_flags.DTYPE.value}
