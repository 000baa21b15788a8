"""`dissect.json`: the dissection as one JSON document (the contract of design §4).

Users' scripts, the HTML report and the paint server all read this file, so it is built in one
place from the pipeline's per-layer results. Everything in it is a deterministic function of
the results: no times or paths of the machine, so a resumed run writes the same bytes.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from jaxdissect.dissect import LayerResult
from jaxdissect.thresholds import Interpretable


def layer_dirname(layer: str) -> str:
  """A folder name for a layer: its characters other than letters, digits and ' ._-' dropped."""
  name = re.sub(r"[^A-Za-z0-9 ._-]", "", layer).strip()
  return name if name not in ("", ".", "..") else "layer"


def unit_image_path(layer: str, unit: int) -> str:
  """Where a unit's top-k strip lives, relative to the output folder."""
  return f"{layer_dirname(layer)}/units/unit{unit:04d}.jpg"


def _unit(result: LayerResult, u: int, concepts: Sequence[tuple[str, str]],
          interpretable: Interpretable, iqr: bool) -> dict[str, Any]:
  label = int(result.label[u])
  name, category = concepts[label]
  iou = float(result.best_iou[u])
  record = {
      "unit": u,
      "threshold": float(result.thresholds[u]),
      "label": name,
      "category": category,
      "iou": iou,
      "interpretable": interpretable(label, iou, float(result.iqr[u])),
      "top": [{"image": int(i), "max": float(v)}
              for i, v in zip(result.top_indices[u], result.top_values[u]) if i >= 0],
      "image": unit_image_path(result.layer, u),
      "iou_bound": float(result.iou_bound[u]),
  }
  if iqr:
    record["iqr"] = float(result.iqr[u])
  return record


def layer_record(result: LayerResult, concepts: Sequence[tuple[str, str]],
                 interpretable: Interpretable, iqr: bool = False) -> dict[str, Any]:
  """One entry of `layers`: shape, interpretable count, concept counts and unit records."""
  units = [_unit(result, u, concepts, interpretable, iqr) for u in range(len(result.label))]
  counts: dict[str, int] = {}
  categories: dict[str, int] = {}
  for unit in units:
    if unit["interpretable"]:
      counts[unit["label"]] = counts.get(unit["label"], 0) + 1
      categories[unit["category"]] = categories.get(unit["category"], 0) + 1
  order = sorted(counts, key=lambda c: (-counts[c], c))
  return {
      "layer": result.layer,
      "dirname": layer_dirname(result.layer),
      "shape": [int(s) for s in result.shape],
      "interpretable": sum(u["interpretable"] for u in units),
      "concept_counts": {c: counts[c] for c in order},
      "category_counts": dict(sorted(categories.items())),
      "iou_bound": float(np.max(result.iou_bound)) if len(result.iou_bound) else 0.0,
      "units": units,
  }


def dissection_doc(results: Mapping[str, LayerResult], concepts: Sequence[tuple[str, str]], *,
                   model: str, segmenter: str, settings: Mapping[str, Any],
                   interpretable: Interpretable, iqr: bool = False) -> dict[str, Any]:
  """The whole `dissect.json` document, layers in the order of `results`."""
  return {
      "model": model,
      "segmenter": segmenter,
      "settings": dict(settings),
      "concepts": [{"index": i, "name": n, "category": c} for i, (n, c) in enumerate(concepts)],
      "interpretable": interpretable.record(),
      "layers": [layer_record(r, concepts, interpretable, iqr) for r in results.values()],
  }
