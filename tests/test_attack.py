"""The CW-L2 attack on the planted classifier reaches its target by growing the target's planted
units, and `unit_shift` measures that against numpy."""

import numpy as np
import pytest

from jaxdissect import attack
from jaxdissect import planted_classifier as pc
from jaxdissect.causal import Z99

TARGET = "poppies"  # red: one channel from the background, so gradients reach its unit


@pytest.fixture(scope="module")
def classifier():
  return pc.make_planted_classifier()


@pytest.fixture(scope="module")
def originals(classifier):
  images, _, classes = pc.planted_images(40, 3)
  ok = attack.eligible(classifier, images, classes, TARGET)
  return images[ok][:12]


@pytest.fixture(scope="module")
def result(classifier, originals):
  return attack.cw_l2(classifier, originals, TARGET, steps=100, search_steps=2, batch_size=8)


def _predict(classifier, images):
  return np.argmax(classifier.apply_fn(classifier.params, images)[0], -1)


def _features(classifier, images):
  return np.asarray(classifier.apply_fn(classifier.params, images,
                                        capture=("features",))[1]["features"], np.float64)


def test_eligible_images_are_neither_labelled_nor_predicted_as_the_target(classifier):
  images, _, classes = pc.planted_images(40, 3)
  ok = attack.eligible(classifier, images, classes, TARGET)
  k = pc.CLASSES.index(TARGET)
  np.testing.assert_array_equal(ok, (classes != k) & (_predict(classifier, images) != k))
  assert 12 <= ok.sum() < 40


def test_the_attack_reaches_the_target_with_a_small_change(classifier, originals, result):
  assert result.adversarial.shape == originals.shape and result.success.all()
  np.testing.assert_array_equal(_predict(classifier, result.adversarial),
                                pc.CLASSES.index(TARGET))
  assert np.all(np.abs(result.adversarial) <= 1)
  l2 = np.sqrt(np.sum(np.square(result.adversarial - originals), axis=(1, 2, 3)))
  np.testing.assert_allclose(result.l2, l2, rtol=1e-5)
  assert np.all(l2 < 2.0)  # the image has 3072 numbers; the attack moves them by ~0.01


def test_a_failed_attack_returns_the_original(classifier, originals):
  failed = attack.cw_l2(classifier, originals[:3], TARGET, steps=1, search_steps=1,
                        initial_const=1e-6)
  assert not failed.success.any() and np.all(np.isinf(failed.l2))
  np.testing.assert_array_equal(failed.adversarial, originals[:3])


@pytest.mark.parametrize("reduce", ["mean", "peak"])
def test_unit_shift_matches_numpy(classifier, originals, result, reduce):
  units = [pc.PLANTED["red"], 0]
  success = result.success.copy()
  success[0] = False  # only images that became the target count
  shift = attack.unit_shift(classifier, "features", originals, result.adversarial, success,
                            units, reduce=reduce, batch_size=5)
  before = _features(classifier, originals[success])
  after = _features(classifier, result.adversarial[success])
  if reduce == "mean":
    per = np.abs(after - before).mean((1, 2))
  else:
    per = np.abs(after.max((1, 2)) - before.max((1, 2)))
  top, other = per[:, units].mean(1), np.delete(per, units, axis=1).mean(1)
  assert shift.n == success.sum() == len(top)
  np.testing.assert_allclose(shift.per_unit, per.mean(0), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose([shift.top, shift.other], [top.mean(), other.mean()], rtol=1e-5)
  ci = [Z99 * x.std(ddof=1) / np.sqrt(len(x)) for x in (top, other)]
  np.testing.assert_allclose([shift.top_ci99, shift.other_ci99], ci, rtol=1e-4)


def test_the_attack_moves_the_target_planted_units_more_than_the_others(classifier, originals,
                                                                         result):
  units = pc.CLASS_UNITS[TARGET]
  shift = attack.unit_shift(classifier, "features", originals, result.adversarial,
                            result.success, units)
  assert shift.top - shift.top_ci99 > shift.other + shift.other_ci99, shift
  assert shift.top > 3 * shift.other, shift
  assert np.argmax(shift.per_unit) == units[0]


def test_bad_inputs_raise_one_clear_error(classifier, originals, result):
  ok = result.success
  with pytest.raises(ValueError, match="unknown class 'kitchen'"):
    attack.cw_l2(classifier, originals, "kitchen")
  with pytest.raises(ValueError, match=r"images has shape \[12, 16, 32, 3\]"):
    attack.cw_l2(classifier, originals[:, :16], TARGET)
  with pytest.raises(ValueError, match="do not match"):
    attack.unit_shift(classifier, "features", originals, result.adversarial[:5], ok, [3])
  with pytest.raises(ValueError, match="do not match"):
    attack.unit_shift(classifier, "features", originals, result.adversarial, ok[:5], [3])
  with pytest.raises(ValueError, match=r"units are \[40\]"):
    attack.unit_shift(classifier, "features", originals, result.adversarial, ok, [40])
  with pytest.raises(ValueError, match="unknown reduce 'max'"):
    attack.unit_shift(classifier, "features", originals, result.adversarial, ok, [3],
                      reduce="max")
  with pytest.raises(ValueError, match="unknown layer 'conv5_3'"):
    attack.unit_shift(classifier, "conv5_3", originals, result.adversarial, ok, [3])
  with pytest.raises(ValueError, match="no image became the target"):
    attack.unit_shift(classifier, "features", originals, result.adversarial, ok & False, [3])
  with pytest.raises(ValueError, match=r"labels have shape \[3\], expected \[12\]"):
    attack.eligible(classifier, originals, np.zeros(3, int), TARGET)
