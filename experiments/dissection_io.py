"""What the causal scripts take from a finished dissection: its record, models, layer, concept.

`ablate`, `optimize_units`, `insert` and `artifacts` start from `experiments.dissect`'s output
folder, read through the one typed reader (`jaxdissect.report.reader`), so the model,
segmenter and IoU tables they use are the dissected ones, and bad choices fail the same way in
each script: one line naming the value and the valid ones.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from experiments import models
from experiments.cli import UsageError
from jaxdissect import causal
from jaxdissect.report import document
from jaxdissect.report.reader import (Dissection, DissectionReadError, LayerRecord,
                                      read_dissection, read_unit_set)


def open_dissection(folder: str) -> tuple[Dissection, models.Models]:
  """The dissection in `folder` and the models it was made with (UsageError if unreadable)."""
  try:
    dissection = read_dissection(folder)
  except DissectionReadError as e:
    raise UsageError(f"--dissection: {e}") from None
  return dissection, models.of_dissection(dissection)


def concept_index(dissection: Dissection, concept: str) -> int:
  """Label index of `concept` (not the none label)."""
  try:
    return dissection.concept_index(concept)
  except DissectionReadError as e:
    raise UsageError(f"--concept: {e}") from None


def pick_layer(dissection: Dissection, concept: str, name: str | None) -> LayerRecord:
  """The layer record called `name`, or (None) the one holding the concept's best unit."""
  try:
    if name is not None:
      return dissection.layer(name)
    concept_index(dissection, concept)
    return dissection.best_layer(concept)
  except DissectionReadError as e:
    raise UsageError(f"--layer: {e}") from None


def result_stem(folder: str, kind: str, concept: str) -> str:
  """`folder/<kind>-<concept>`: where a causal script's JSON (and plot) for a concept go."""
  return os.path.join(folder, f"{kind}-{document.layer_dirname(concept)}")


def header(dissection: Dissection, layer: LayerRecord) -> dict[str, Any]:
  """The fields every causal result JSON starts with: what was edited, of which model."""
  return {"model": dissection.model, "segmenter": dissection.segmenter, "layer": layer.layer}


def learned_alpha(folder: str, concept: str, layer: LayerRecord, flag: str) -> np.ndarray:
  """The `[C]` coefficients optimize_units learned for `concept` on `layer` (`flag` names the
  option that asked for them, for the error when they are missing)."""
  path = result_stem(folder, "units", concept) + ".json"
  if not os.path.exists(path):
    raise UsageError(f"{flag} needs {path}; run experiments.optimize_units first")
  try:
    name, _, alpha = read_unit_set(path)
  except DissectionReadError as e:
    raise UsageError(f"{flag}: {e}") from None
  if name != layer.layer:
    raise UsageError(f"{path} holds coefficients of {name}, not {layer.layer}; pass --layer "
                     f"{name}")
  if alpha.shape != (layer.shape[2],):
    raise UsageError(f"{path} holds {alpha.shape} coefficients; {layer.layer} has "
                     f"{layer.shape[2]} units")
  return alpha


INSERT_VALUES = ("quantile", "concept_mean")


def insertion_values(layer: LayerRecord, choice: str, gen, seg, concept: int, *,
                     n: int = 200, seed: int = 5, batch_size: int = 50) -> np.ndarray:
  """`[C]` per-unit insertion levels: "quantile", each unit's dissection threshold (its top-q
  level, the 0.99 quantile at the default q); "concept_mean", its mean activation on the
  concept's pixels over n images of z seed `seed` (`causal.conditional_means`)."""
  if choice not in INSERT_VALUES:
    raise UsageError(f"insertion value {choice!r}; valid choices are: {', '.join(INSERT_VALUES)}")
  if choice == "quantile":
    return layer.thresholds()
  try:
    return causal.conditional_means(gen, seg, layer.layer, concept, n=n, batch_size=batch_size,
                                    seed=seed)
  except ValueError as e:
    raise UsageError(str(e)) from e
