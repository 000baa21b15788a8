"""Models for experiment scripts: specs resolved through `jaxdissect.zoo`, errors as one line.

Every script that loads models goes through here, whether the specs come from its flags
(`experiments.model_flags`) or from a finished dissection (`dissect.json` records them), so a
model is named the same way and fails the same way everywhere.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from experiments.cli import UsageError
from jaxdissect import precision, zoo
from jaxdissect.classifier import Classifier
from jaxdissect.model import Generator, Segmenter


class Models(NamedTuple):
  """The loaded models and the specs (and factory arguments) they were loaded from."""

  generator: Generator
  segmenter: Segmenter
  model: str
  segmenter_spec: str
  model_args: dict[str, Any]
  segmenter_args: dict[str, Any]
  dtype: str


def load_models(model: str, segmenter: str | None, model_args: Any = None,
                segmenter_args: Any = None, dtype: str = "float32") -> Models:
  """Resolves specs (a `zoo.SpecError` becomes a one-line UsageError) in `dtype`."""
  try:
    model_args, segmenter_args = zoo.keyword_args(model_args), zoo.keyword_args(segmenter_args)
    segmenter = segmenter or zoo.default_segmenter(model)
    gen = zoo.load_generator(model, model_args)
    seg = zoo.load_segmenter(segmenter, segmenter_args)
  except zoo.SpecError as e:
    raise UsageError(str(e)) from None
  return Models(precision.generator_in(gen, dtype), precision.segmenter_in(seg, dtype), model,
                segmenter, model_args, segmenter_args, dtype)


class ClassifierModels(NamedTuple):
  """A loaded classifier and segmenter (None: the images' exact labels) and their specs."""

  classifier: Classifier
  segmenter: Segmenter | None
  model: str
  segmenter_spec: str | None
  model_args: dict[str, Any]
  segmenter_args: dict[str, Any]
  dtype: str


def load_classifier_models(model: str, segmenter: str | None, model_args: Any = None,
                           segmenter_args: Any = None, dtype: str = "float32"
                           ) -> ClassifierModels:
  """Resolves a classifier spec and an optional segmenter spec (as `load_models`) in `dtype`."""
  try:
    model_args, segmenter_args = zoo.keyword_args(model_args), zoo.keyword_args(segmenter_args)
    classifier = zoo.load_classifier(model, model_args)
    seg = None if segmenter is None else zoo.load_segmenter(segmenter, segmenter_args)
  except zoo.SpecError as e:
    raise UsageError(str(e)) from None
  seg = None if seg is None else precision.segmenter_in(seg, dtype)
  return ClassifierModels(precision.classifier_in(classifier, dtype), seg, model, segmenter,
                          model_args, segmenter_args, dtype)


def of_dissection(dissection: Any, dtype: str = "float32") -> Models:
  """The models a finished dissection (`jaxdissect.report.reader.Dissection`) was made with."""
  return load_models(dissection.model, dissection.segmenter, dissection.model_args,
                     dissection.segmenter_args, dtype)


def slug(spec: str) -> str:
  """A short folder-name part for a spec: the name, the checkpoint's stem, or the factory."""
  kind, _, rest = spec.partition(":")
  if not rest:
    return kind
  stem = os.path.splitext(os.path.basename(rest.split(",")[0].rstrip("/\\")))[0]
  return f"{kind.rsplit('.', 1)[-1]}-{stem}" if kind in zoo.KINDS else stem or "model"
