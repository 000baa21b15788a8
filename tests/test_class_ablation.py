"""Class ablation on the planted classifier: the ranking finds each class's planted units, removing
them drops the class to chance and spares the others; the metric and its interval against numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import Edit
from jaxdissect import class_ablation as ca
from jaxdissect import planted_classifier as pc
from jaxdissect.causal import Z99

K = len(pc.CLASSES)
BATCH, CHUNK = 128, 12  # 300 images: the last batch and the last chunk of units are padded


@pytest.fixture(scope="module")
def classifier():
  return pc.make_planted_classifier()


@pytest.fixture(scope="module")
def train():
  images, _, classes = pc.planted_images(300, 1)
  return images, classes


@pytest.fixture(scope="module")
def test_split():
  images, _, classes = pc.planted_images(300, 2)
  return images, classes


@pytest.fixture(scope="module")
def experiment(classifier, train, test_split):
  return ca.class_ablation(classifier, "features", train, test_split, batch_size=BATCH,
                           chunk=CHUNK)


def _numpy_scores(predicted, labels, k):
  """Balanced accuracy and its 99% half-width per class, straight from the definitions."""
  ba, ci = np.full(k, np.nan), np.full(k, np.nan)
  for c in range(k):
    pos, neg = labels == c, labels != c
    if pos.any() and neg.any():
      recall = np.mean(predicted[pos] == c)
      tnr = np.mean(predicted[neg] != c)
      ba[c] = (recall + tnr) / 2
      ci[c] = Z99 * np.sqrt(recall * (1 - recall) / pos.sum() + tnr * (1 - tnr) / neg.sum()) / 2
  return ba, ci


def test_balanced_accuracy_and_ci_match_numpy():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 200)
  predicted = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 6, 200))
  labels[labels == 4] = 3  # classes 4 and 5 have no images (NaN, as the original), 5 is predicted
  counts = ca.count(jnp.asarray(predicted), jnp.asarray(labels), 6)
  ba, ci = _numpy_scores(predicted, labels, 6)
  np.testing.assert_allclose(ca.balanced_accuracy(counts), ba, rtol=1e-12)
  np.testing.assert_allclose(ca.ci99(counts), ci, rtol=1e-12)
  assert np.all(np.isnan(ba[4:])) and np.all(np.isfinite(ba[:4])) and counts.predicted[5] > 0
  valid = rng.random(200) < 0.5  # padding is not counted
  masked = ca.count(jnp.asarray(predicted), jnp.asarray(labels), 6, jnp.asarray(valid))
  np.testing.assert_allclose(ca.balanced_accuracy(masked),
                             _numpy_scores(predicted[valid], labels[valid], 6)[0], rtol=1e-12)
  assert int(masked.total) == valid.sum()


def test_vmapped_sweep_equals_the_python_loop_and_traces_once(classifier, train):
  traces = []

  def counting_apply(params, images, *args, **kwargs):
    if images.shape[0] == BATCH:  # not the one-image shape probes
      traces.append(1)
    return pc.planted_classifier_apply(params, images, *args, **kwargs)

  counted = classifier._replace(apply_fn=counting_apply)
  sweep = ca.single_unit_sweep(counted, "features", *train, batch_size=BATCH, chunk=CHUNK)
  assert len(traces) == 2  # one for the baseline, one for every batch and chunk of units
  looped = ca.single_unit_sweep_looped(classifier, "features", *train, batch_size=BATCH)
  assert sweep.ablated.shape == (pc.UNITS, K) and sweep.n == 300
  np.testing.assert_array_equal(sweep.ablated, looped.ablated)
  np.testing.assert_array_equal(sweep.baseline, looped.baseline)
  np.testing.assert_array_equal(sweep.ci99, looped.ci99)


def test_sweep_agrees_with_numpy_on_one_unit(classifier, train, experiment):
  images, labels = train
  unit = pc.PLANTED["white"]
  alpha = jnp.zeros(pc.UNITS).at[unit].set(1.0)
  logits, _ = classifier.apply_fn(classifier.params, images,
                                  {"features": Edit(alpha, jnp.zeros(pc.UNITS))})
  ba, ci = _numpy_scores(np.asarray(jnp.argmax(logits, -1)), labels, K)
  np.testing.assert_allclose(experiment.sweep.ablated[unit], ba, rtol=1e-12)
  np.testing.assert_allclose(experiment.sweep.ci99[unit], ci, rtol=1e-12)
  np.testing.assert_array_equal(experiment.sweep.baseline, 1.0)


def test_ranking_puts_each_class_planted_units_first(experiment):
  drop = experiment.sweep.drop
  for k, name in enumerate(pc.CLASSES):
    units = pc.CLASS_UNITS[name]
    assert set(experiment.ranking[k, :len(units)].tolist()) == set(units), name
    np.testing.assert_array_equal(drop[list(units), k], 0.5)  # recall 1 -> 0, TNR stays 1
    rest = np.delete(drop[:, k], units)
    assert rest.max() < 0.1, (name, rest)
  np.testing.assert_array_equal(drop[list(pc.NOISE_UNITS)], 0.0)


def test_removing_top_units_drops_the_class_to_chance_and_spares_the_others(experiment):
  curves = experiment.curves
  np.testing.assert_array_equal(curves.sizes, ca.SIZES)
  np.testing.assert_array_equal(curves.baseline, 1.0)
  own, others = ca.own_and_others(curves.removed)
  for k, name in enumerate(pc.CLASSES):
    s = list(curves.sizes).index(len(pc.CLASS_UNITS[name]))
    assert own[k, s] == 0.5, name
    # the class's images now go to their decoys' classes: each other class gains a few false
    # positives (about 3% of its negatives), nothing else changes
    assert others[k, s] > 0.95 and np.all(np.delete(curves.removed[k, s], k) > 0.9), name
  np.testing.assert_array_equal(own[:, curves.sizes >= 10], 0.5)  # every planted unit gone
  np.testing.assert_array_equal(curves.kept[:, curves.sizes >= 10], 1.0)  # all planted kept


def test_curve_intervals_match_numpy(classifier, test_split, experiment):
  images, labels = test_split
  ranking, curves = experiment.ranking, experiment.curves
  k, s = pc.CLASSES.index("lawn"), 1  # keep only lawn's top 2 units: a non-trivial score
  alpha = jnp.ones(pc.UNITS).at[ranking[k, :curves.sizes[s]]].set(0.0)
  logits, _ = classifier.apply_fn(classifier.params, images,
                                  {"features": Edit(alpha, jnp.zeros(pc.UNITS))})
  ba, ci = _numpy_scores(np.asarray(jnp.argmax(logits, -1)), labels, K)
  np.testing.assert_allclose(curves.kept[k, s], ba, rtol=1e-12)
  np.testing.assert_allclose(curves.kept_ci99[k, s], ci, rtol=1e-12)
  assert 0 < ba[k] < 1 and ci[k] > 0  # a real interval (Wald gives 0 width at 0 or 1)


def test_bad_inputs_raise_one_clear_error(classifier, train):
  images, labels = train
  with pytest.raises(ValueError, match="unknown class 'kitchen'; the classifier's classes are"):
    ca.class_index(classifier, ["lawn", "kitchen"])
  with pytest.raises(ValueError, match="unknown layer 'conv5_3'"):
    ca.single_unit_sweep(classifier, "conv5_3", images, labels)
  with pytest.raises(ValueError, match=r"labels have shape \[299\].*\[300\]"):
    ca.single_unit_sweep(classifier, "features", images, labels[:-1])
  with pytest.raises(ValueError, match=r"images has shape \[300, 16, 16, 3\]"):
    ca.baseline_counts(classifier, images[:, :16, :16], labels)
  with pytest.raises(ValueError, match=r"labels range over \[0, 6\]"):
    ca.baseline_counts(classifier, images[:2], np.asarray([0, 6]))
  with pytest.raises(ValueError, match=r"alphas have shape \[2, 5\], expected \[edits, 32\]"):
    ca.edit_counts(classifier, "features", images, labels, np.ones((2, 5)))
  with pytest.raises(ValueError, match=r"ranking has shape \[32, 6\], expected \[6, 32\]"):
    ca.ablation_curves(classifier, "features", images, labels, np.zeros((32, 6), int))
  with pytest.raises(ValueError, match=r"sizes are \[0, 2\]"):
    ca.ablation_curves(classifier, "features", images, labels, np.zeros((6, 32), int), (0, 2))
  with pytest.raises(ValueError, match="batch_size is 0"):
    ca.baseline_counts(classifier, images, labels, batch_size=0)
