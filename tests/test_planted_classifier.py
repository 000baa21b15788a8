"""The planted classifier: its units are exactly its concepts' masks, its logits read only them,
and ablating a class's units removes that class (the ground truth the classifier experiments'
tests rely on)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import Edit
from jaxdissect import planted_classifier as pc

CONCEPT_INDEX = {name: i for i, (name, _) in enumerate(pc.CONCEPTS)}


@pytest.fixture(scope="module")
def model():
  classifier = pc.make_planted_classifier()
  return classifier, jax.jit(classifier.apply_fn, static_argnames="capture")


@pytest.fixture(scope="module")
def data():
  return pc.planted_images(300, 0)


def _ablate(units):
  alpha = jnp.zeros(pc.UNITS).at[jnp.asarray(units)].set(1.0)
  return {"features": Edit(alpha, jnp.zeros(pc.UNITS))}


def test_protocol_and_ground_truth_tables(model):
  classifier, run = model
  assert classifier.layers == pc.LAYERS and classifier.classes == pc.CLASSES
  assert classifier.image_shape == (32, 32, 3)
  units = [u for us in pc.CLASS_UNITS.values() for u in us]
  assert sorted(units + list(pc.NOISE_UNITS)) == list(range(pc.UNITS))
  assert sorted(pc.PLANTED.values()) == sorted(units)
  logits, acts = run(classifier.params, jnp.zeros((2, 32, 32, 3)), capture=("pool",))
  assert logits.shape == (2, len(pc.CLASSES)) and set(acts) == {"pool"}
  assert acts["pool"].shape == (2, 1, 1, pc.UNITS)
  with pytest.raises(ValueError, match="unknown layer 'conv5_3'"):
    classifier.apply_fn(classifier.params, jnp.zeros((1, 32, 32, 3)), capture="conv5_3")
  with pytest.raises(ValueError, match=r"images has shape \[1, 16, 16, 3\]"):
    classifier.apply_fn(classifier.params, jnp.zeros((1, 16, 16, 3)))


def test_images_are_exact_deterministic_and_prefix_stable(data):
  images, labels, classes = data
  assert images.shape == (300, 32, 32, 3) and images.dtype == np.float32
  assert labels.shape == (300, 32, 32, 1) and labels.dtype == np.int32
  assert classes.shape == (300,) and set(classes.tolist()) == set(range(len(pc.CLASSES)))
  np.testing.assert_array_equal(images, pc.concept_colours()[labels[..., 0]])
  assert np.all(np.abs(images) <= 1)
  again = pc.planted_images(20, 0)
  for a, b in zip(again, data):
    np.testing.assert_array_equal(a, b[:20])
  assert not np.array_equal(pc.planted_images(20, 1)[1], labels[:20])
  for i in range(20):  # every concept of the image's class is there
    present = set(np.unique(labels[i]).tolist())
    assert {CONCEPT_INDEX[c] for c in pc.CLASS_CONCEPTS[pc.CLASSES[classes[i]]]} <= present
  with pytest.raises(ValueError, match="n is 0"):
    pc.planted_images(0, 0)


def test_planted_units_are_their_concept_masks_and_rare_enough_for_iou_one(model, data):
  classifier, run = model
  images, labels, _ = data
  _, acts = run(classifier.params, images, capture=("features",))
  features = np.asarray(acts["features"])
  for concept, unit in pc.PLANTED.items():
    mask = labels[..., 0] == CONCEPT_INDEX[concept]
    act = features[..., unit]
    assert set(np.unique(act).tolist()) == {0.0, 1.0}, concept
    np.testing.assert_array_equal(act == 1.0, mask, err_msg=concept)
    # dissection's default top 1%: the quantile falls on 0, so the on-set is the mask exactly
    assert 0.002 < mask.mean() < 0.007, (concept, mask.mean())
    assert np.quantile(act, 0.99) == 0.0 and np.array_equal(act > 0.0, mask)


def test_the_classifier_is_exactly_right_and_reads_only_planted_units(model, data):
  classifier, run = model
  images, _, classes = data
  logits, _ = run(classifier.params, images)
  np.testing.assert_array_equal(np.argmax(logits, -1), classes)
  assert set(np.unique(np.asarray(logits)).tolist()) <= {0.0, 0.5625, 1.0, 1.5, 2.0}
  edited, _ = run(classifier.params, images, _ablate(list(pc.NOISE_UNITS)))
  np.testing.assert_array_equal(edited, logits)


@pytest.mark.parametrize("name", pc.CLASSES)
def test_ablating_a_class_units_removes_the_class_only(model, data, name):
  classifier, run = model
  images, _, classes = data
  k = pc.CLASSES.index(name)
  for unit in pc.CLASS_UNITS[name]:  # each planted unit alone is needed
    predicted = np.argmax(run(classifier.params, images, _ablate([unit]))[0], -1)
    assert not np.any(predicted == k), (name, unit)
    others = classes != k
    np.testing.assert_array_equal(predicted[others], classes[others])  # others' recall intact


@pytest.mark.parametrize("concept", ["red", "green", "blue"])
def test_gradients_reach_one_channel_concepts_from_the_background(model, data, concept):
  classifier, _ = model
  images, labels, _ = data
  unit = pc.PLANTED[concept]

  def mass(x):
    return jnp.sum(classifier.apply_fn(classifier.params, x, capture=("features",))[1]
                   ["features"][..., unit])

  grad = np.asarray(jax.jit(jax.grad(mass))(jnp.asarray(images[:4])))
  background = labels[:4, ..., 0] == 0
  channel = pc.CONCEPT_COLOURS[concept].index(1)
  np.testing.assert_allclose(grad[background][:, channel], 1.0)  # d/dx (x - LO) / (HI - LO)
