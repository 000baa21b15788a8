"""What the causal scripts read from a finished dissection: its document, a layer, a concept.

`ablate`, `optimize_units` and `insert` start from `experiments.dissect`'s output folder,
so the model, segmenter and IoU tables they use are the dissected ones, and bad choices fail the
same way in each script: one line naming the value and the valid ones.
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.cli import UsageError
from jaxdissect import causal
from jaxdissect.report import document


def load_dissection(folder: str) -> dict:
  """The `dissect.json` document of `folder`."""
  path = os.path.join(folder, "dissect.json")
  if not os.path.exists(path):
    raise UsageError(f"--dissection={folder} has no dissect.json; run experiments.dissect first")
  with open(path) as f:
    return json.load(f)


def concept_index(doc: dict, concept: str) -> int:
  """Label index of `concept` (not the none label)."""
  names = [c["name"] for c in doc["concepts"]]
  if concept not in names[1:]:
    raise UsageError(f"--concept={concept!r} is unknown; valid concepts are: "
                     f"{', '.join(names[1:])}")
  return names.index(concept)


def layer_iou(folder: str, layer: dict) -> np.ndarray:
  """The `[units, concepts]` IoU table of a layer record."""
  return np.load(os.path.join(folder, layer["dirname"], "iou.npy"))


def pick_layer(doc: dict, folder: str, concept: str, name: str | None) -> dict:
  """The layer record called `name`, or (None) the one holding the concept's best unit."""
  names = [layer["layer"] for layer in doc["layers"]]
  if name is not None:
    if name not in names:
      raise UsageError(f"--layer={name!r} was not dissected; dissected layers: {', '.join(names)}")
    return doc["layers"][names.index(name)]
  c = concept_index(doc, concept)
  return max(doc["layers"], key=lambda layer: layer_iou(folder, layer)[:, c].max())


def result_stem(folder: str, kind: str, concept: str) -> str:
  """`folder/<kind>-<concept>`: where a causal script's JSON (and plot) for a concept go."""
  return os.path.join(folder, f"{kind}-{document.layer_dirname(concept)}")


def learned_alpha(folder: str, concept: str, layer: dict, flag: str) -> np.ndarray:
  """The `[C]` coefficients optimize_units learned for `concept` on `layer` (`flag` names the
  option that asked for them, for the error when they are missing)."""
  path = result_stem(folder, "units", concept) + ".json"
  if not os.path.exists(path):
    raise UsageError(f"{flag} needs {path}; run experiments.optimize_units first")
  with open(path) as f:
    learned = json.load(f)
  if learned["layer"] != layer["layer"]:
    raise UsageError(f"{path} holds coefficients of {learned['layer']}, not "
                     f"{layer['layer']}; pass --layer {learned['layer']}")
  return np.asarray(learned["alpha"], np.float32)


def unit_thresholds(layer: dict) -> np.ndarray:
  """`[C]` each unit's dissection threshold (its top-q level): the default insertion value."""
  return np.array([u["threshold"] for u in layer["units"]], np.float32)


INSERT_VALUES = ("quantile", "concept_mean")


def insertion_values(layer: dict, choice: str, gen, seg, concept: int, zdim: int, *,
                     n: int = 200, seed: int = 5, batch_size: int = 50) -> np.ndarray:
  """`[C]` per-unit insertion levels: "quantile", each unit's dissection threshold (its top-q
  level, the 0.99 quantile at the default q); "concept_mean", its mean activation on the
  concept's pixels over n images of z seed `seed` (`causal.conditional_means`)."""
  if choice not in INSERT_VALUES:
    raise UsageError(f"insertion value {choice!r}; valid choices are: {', '.join(INSERT_VALUES)}")
  if choice == "quantile":
    return unit_thresholds(layer)
  try:
    return causal.conditional_means(gen, seg, layer["layer"], concept, n=n, batch_size=batch_size,
                                    seed=seed, zdim=zdim)
  except ValueError as e:
    raise UsageError(str(e)) from e
