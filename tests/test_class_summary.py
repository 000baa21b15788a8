"""The class-ablation acceptance check against a hand computation, and the top-units table."""

import json

import numpy as np
import pytest

from experiments import class_summary


def _curves():
  """3 classes, sizes (1, 4): removed[k, s, j] = class j's accuracy with k's top units zeroed."""
  baseline = np.array([0.9, 1.0, 0.8])
  removed = np.array([
      [[0.85, 0.99, 0.79], [0.70, 0.98, 0.78]],   # class 0's units
      [[0.90, 0.60, 0.80], [0.80, 0.50, 0.70]],   # class 1's units
      [[0.88, 0.97, 0.64], [0.88, 0.97, 0.62]],   # class 2's units
  ])
  return removed, baseline


def test_acceptance_matches_a_hand_computation():
  removed, baseline = _curves()
  result = class_summary.acceptance(removed, baseline, sizes=(1, 4), top=4)
  # At 4 units. Class 0: (0.9 - 0.70) / (0.9 - 0.5) = 0.5 of its accuracy above chance removed;
  # others: mean(1.0, 0.8) = 0.9 -> mean(0.98, 0.78) = 0.88, a 2-point drop: passes.
  # Class 1: (1.0 - 0.5) / 0.5 = 1.0; others 0.85 -> 0.75, 10 points: fails on the others.
  # Class 2: (0.8 - 0.62) / 0.3 = 0.6; others 0.95 -> 0.925, 2.5 points: passes.
  np.testing.assert_allclose(result["removed_share"], [0.5, 1.0, 0.6])
  np.testing.assert_allclose(result["others_drop_points"], [2.0, 10.0, 2.5])
  assert result["passes"] == [True, False, True]
  assert result["classes_passing"] == 2 and result["most_classes_pass"]
  # At 1 unit: shares 0.125, 0.8, 0.5333; drops 1.0, 0.0 (0.85 -> 0.85), 2.5 points.
  one = result["by_size"]["1"]
  np.testing.assert_allclose(one["removed_share"], [0.125, 0.8, 0.16 / 0.3])
  np.testing.assert_allclose(one["others_drop_points"], [1.0, 0.0, 2.5], atol=1e-12)
  assert one["classes_passing"] == 2  # classes 1 and 2
  json.dumps(result)  # plain JSON


def test_most_means_more_than_half_and_the_thresholds_are_parameters():
  removed, baseline = _curves()
  strict = class_summary.acceptance(removed, baseline, (1, 4), top=4, share=0.55, points=5)
  assert strict["passes"] == [False, False, True] and not strict["most_classes_pass"]
  text = class_summary.statement(strict, ["a", "b", "c"])
  assert "1 of 3 classes" in text and "(c)" in text and "NOT met" in text
  with pytest.raises(ValueError, match="sizes"):
    class_summary.acceptance(removed, baseline, (1, 4), top=3)


def test_top_units_table_with_and_without_labels(tmp_path):
  order = np.array([[2, 0, 1], [1, 2, 0]])
  acc = np.array([[0.0, 0.1], [0.0, 0.3], [0.2, 0.0]])
  margin = np.array([[1.0, 2.0], [0.5, 3.0], [4.0, 0.0]])
  labels = {2: {"label": "tree", "category": "object", "iou": 0.2, "interpretable": True},
            0: {"label": "sky", "category": "object", "iou": 0.01, "interpretable": False}}
  rows = class_summary.top_units(order, acc, margin, labels, ["forest", "street"], top=2)
  assert rows[0]["units"][0] == {"unit": 2, "accuracy_drop": 0.2, "margin_drop": 4.0,
                                 "label": "tree", "category": "object", "iou": 0.2,
                                 "interpretable": True}
  assert rows[0]["units_with_accuracy_drop"] == 1 and rows[1]["units_with_accuracy_drop"] == 2
  table = class_summary.markdown_table(rows, "labels from x")
  assert "| forest | #2 tree (0.20); #0 sky (0.01, not interp.) | 1 |" in table
  assert "#1 unlabelled" in table
  none, note = class_summary.unit_labels(str(tmp_path / "dissect.json"), "conv5_3")
  assert none is None and "does not exist" in note
  assert class_summary.unit_labels(None, "conv5_3")[0] is None
