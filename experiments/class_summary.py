"""What the class-ablation results mean: the acceptance check, and each class's top units named.

Issue 16 accepts the classifier half when, for most classes, ablating the class's top-4 units
(ranked on a training split) removes at least half of that class's held-out accuracy while
the mean accuracy of the other classes drops by at most 5 points. "Accuracy" here is balanced
accuracy's excess over chance, (recall + true-negative rate) / 2 - 0.5: balanced accuracy is
the paper's per-class metric, and 0.5 is what any classifier scores on a class it cannot tell
apart (never predicting it, or predicting it at random), so "half the accuracy removed" is
half the way from the unedited score to chance. Recall alone would count a class as
destroyed when its images merely move to a neighbour, and its chance level depends on how
often the edited classifier predicts the class. The other classes' drop is in balanced-
accuracy points (x 100). These are pure functions of the result arrays, kept apart from the
scripts' flags so they can be checked by hand.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdissect.class_ablation import own_and_others
from jaxdissect.report.reader import DissectionReadError, read_dissection

CHANCE = 0.5


def acceptance(removed: np.ndarray, baseline: np.ndarray, sizes: Sequence[int], top: int = 4,
               share: float = 0.5, points: float = 5.0) -> dict[str, Any]:
  """The acceptance check on `removed [K, S, K]` (balanced accuracy of every class when class
  k's top `sizes[s]` units are ablated) against the unedited `baseline [K]`.

  Per class and size: `removed_share` = (baseline - own) / (baseline - 0.5), the share of the
  class's accuracy above chance that the ablation removed, and `others_drop_points` = 100 x
  (mean baseline of the other classes - their mean under the ablation). A class passes when
  removed_share >= `share` and others_drop_points <= `points`; "most classes" is more than
  half of them. Reported at `top` units, and the count at every size.
  """
  removed, baseline = np.asarray(removed, np.float64), np.asarray(baseline, np.float64)
  sizes = [int(s) for s in sizes]
  if top not in sizes:
    raise ValueError(f"top is {top}, but the curves were measured at sizes {sizes}")
  k = baseline.shape[0]
  own, others = own_and_others(removed)                               # [K, S]
  base_others = np.array([np.nanmean(np.delete(baseline, c)) for c in range(k)])
  with np.errstate(invalid="ignore", divide="ignore"):
    share_removed = (baseline[:, None] - own) / (baseline[:, None] - CHANCE)
  drop = 100 * (base_others[:, None] - others)
  passes = (share_removed >= share) & (drop <= points)
  s = sizes.index(top)
  count = int(passes[:, s].sum())
  return {
      "definition": "accuracy = balanced accuracy - 0.5 (its excess over chance); removed "
                    "share = (unedited - ablated) / (unedited - 0.5) of the class itself; "
                    "others' drop = 100 x (mean unedited - mean ablated) balanced accuracy of "
                    "the other classes, in points",
      "top": top, "share": share, "points": points,
      "removed_share": share_removed[:, s].tolist(),
      "others_drop_points": drop[:, s].tolist(),
      "passes": passes[:, s].tolist(),
      "classes_passing": count, "classes": k, "most_classes_pass": bool(count > k / 2),
      "by_size": {str(n): {"classes_passing": int(passes[:, i].sum()),
                           "removed_share": share_removed[:, i].tolist(),
                           "others_drop_points": drop[:, i].tolist()}
                  for i, n in enumerate(sizes)},
  }


def statement(result: dict[str, Any], classes: Sequence[str]) -> str:
  """The acceptance result in one plain sentence."""
  passing = [c for c, ok in zip(classes, result["passes"]) if ok]
  verdict = "met" if result["most_classes_pass"] else "NOT met"
  return (f"{result['classes_passing']} of {result['classes']} classes lose >= "
          f"{result['share']:.0%} of their held-out accuracy above chance when their top "
          f"{result['top']} units are ablated while the other classes drop <= "
          f"{result['points']:g} points ({', '.join(passing) or 'none'}): 'most classes' is "
          f"{verdict}.")


def unit_labels(path: str | None, layer: str) -> tuple[dict[int, dict[str, Any]] | None, str]:
  """Each unit's dissection label in `layer` from `path` (a `dissect.json` or its folder), and
  a note saying where the labels came from or why there are none."""
  if not path:
    return None, "no dissection given (--dissection)"
  folder = os.path.dirname(path) if os.path.basename(path) == "dissect.json" else path
  if not os.path.isfile(os.path.join(folder, "dissect.json")):
    return None, f"no dissection: {os.path.join(folder, 'dissect.json')} does not exist"
  try:
    record = read_dissection(folder).layer(layer)
  except DissectionReadError as e:
    return None, f"no dissection labels: {e}"
  labels = {u.unit: {"label": u.label, "category": u.category, "iou": u.iou,
                     "interpretable": u.interpretable} for u in record.units}
  return labels, f"labels from {os.path.join(folder, 'dissect.json')}"


def top_units(order: np.ndarray, accuracy_drop: np.ndarray, margin_drop: np.ndarray | None,
              labels: dict[int, dict[str, Any]] | None, classes: Sequence[str],
              top: int = 4) -> list[dict[str, Any]]:
  """Per class, its `top` units with their training-split drops and dissection labels."""
  rows = []
  for k, name in enumerate(classes):
    units = []
    for u in order[k, :top]:
      u = int(u)
      entry = {"unit": u, "accuracy_drop": float(accuracy_drop[u, k]),
               "margin_drop": None if margin_drop is None else float(margin_drop[u, k])}
      entry.update((labels or {}).get(u, {}))
      units.append(entry)
    rows.append({"class": name, "units": units,
                 "units_with_accuracy_drop": int(np.sum(np.abs(accuracy_drop[:, k]) > 0))})
  return rows


def markdown_table(rows: list[dict[str, Any]], note: str) -> str:
  """The top-units table as markdown: a class per row, each unit as `#u label (IoU)`."""
  lines = ["| class | top units (dissection label, IoU) | units whose ablation costs accuracy |",
           "|---|---|---:|"]
  for row in rows:
    cells = []
    for u in row["units"]:
      label = (f"{u['label']} ({u['iou']:.2f}{'' if u['interpretable'] else ', not interp.'})"
               if "label" in u else "unlabelled")
      cells.append(f"#{u['unit']} {label}")
    lines.append(f"| {row['class']} | {'; '.join(cells)} | {row['units_with_accuracy_drop']} |")
  return "\n".join(lines + ["", f"Labels: {note}."])
