"""The margin tie-break of class rankings: the vmapped margin sweep against a plain loop, and the
ranking's order (accuracy first, margin within ties, unit index last)."""

import numpy as np
import pytest

from jaxdissect import Edit
from jaxdissect import class_ablation as ca
from jaxdissect import class_margins as cm
from jaxdissect import planted_classifier as pc


@pytest.fixture(scope="module")
def classifier():
  return pc.make_planted_classifier()


def _looped_margins(classifier, images, labels):
  """Each class's mean margin with no edit and with each unit zeroed alone, one unit a call."""
  def mean_margins(edits):
    logits = np.asarray(classifier.apply_fn(classifier.params, images, edits)[0], np.float64)
    own = logits[np.arange(len(labels)), labels]
    other = np.where(np.eye(logits.shape[1], dtype=bool)[labels], -np.inf, logits).max(1)
    return np.array([np.mean((own - other)[labels == k]) for k in range(len(pc.CLASSES))])
  rows = []
  for u in range(pc.UNITS):
    alpha = np.zeros(pc.UNITS, np.float32)
    alpha[u] = 1
    rows.append(mean_margins({"features": Edit(alpha, np.zeros_like(alpha))}))
  return mean_margins(None), np.stack(rows)


def test_vmapped_margins_match_a_loop_over_units(classifier):
  images, _, labels = pc.planted_images(70, 4)  # batches of 32: the last one padded
  sweep = cm.single_unit_margins(classifier, "features", images, labels, batch_size=32,
                                 chunk=12)
  base, ablated = _looped_margins(classifier, images, labels)
  np.testing.assert_allclose(sweep.baseline, base, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sweep.ablated, ablated, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sweep.drop, base[None] - ablated, rtol=1e-5, atol=1e-5)
  assert sweep.n == 70
  # Zeroing a class's planted unit costs that class's images margin; noise units cost nothing.
  for k, units in enumerate(pc.CLASS_UNITS.values()):
    assert (sweep.drop[list(units), k] > 0.5).all()
    np.testing.assert_allclose(sweep.drop[list(pc.NOISE_UNITS), k], 0, atol=1e-5)


def test_rank_breaks_accuracy_ties_by_margin_then_index():
  acc = np.array([[0.0], [0.2], [0.0], [0.0], [np.nan], [0.0]])
  margin = np.array([[1.0], [0.0], [3.0], [1.0], [9.0], [np.nan]])
  np.testing.assert_array_equal(cm.rank_units(acc, margin), [[1, 2, 0, 3, 5, 4]])
  np.testing.assert_array_equal(cm.rank_units(acc), [[1, 0, 2, 3, 5, 4]])
  np.testing.assert_array_equal(cm.rank_units(acc), ca.rank_units(acc))


def test_rank_without_tiebreak_is_the_papers_rule():
  drop = np.random.default_rng(0).choice([0.0, 0.1, 0.2, np.nan], size=(40, 5))
  np.testing.assert_array_equal(cm.rank_units(drop), ca.rank_units(drop))


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match=r"expected \[3, 2\]"):
    cm.rank_units(np.zeros((3, 2)), np.zeros((2, 3)))
  with pytest.raises(ValueError, match="units, classes"):
    cm.rank_units(np.zeros(3))
