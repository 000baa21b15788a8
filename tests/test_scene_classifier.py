"""The scene classifier keeps the classifier protocol (shapes, names, capture before the edit,
ablation = the unit zeroed) and its shipped weights classify held-out scenes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import zoo
from jaxdissect.classifier import Classifier
from jaxdissect.model import Edit
from jaxdissect.sceneworld import classifier as cls
from jaxdissect.sceneworld import scenes

SHAPES = {"conv1": (64, 64, 16), "conv2": (32, 32, 32), "conv3": (16, 16, 64),
          "conv4": (8, 8, 96), "conv5": (8, 8, 128)}


@pytest.fixture(scope="module")
def fresh():
  """A randomly initialised classifier."""
  return cls.make_classifier(cls.init_params(jax.random.key(0)))


@pytest.fixture(scope="module")
def images():
  return scenes.render_scenes(4, seed=2)[0]


def test_layers_are_named_like_vgg(fresh):
  assert fresh.layers == cls.LAYERS and fresh.layers[-1] == "conv5_3"
  stages = sorted({name.split("_")[0] for name in fresh.layers})
  assert stages == ["conv1", "conv2", "conv3", "conv4", "conv5"]
  assert fresh.classes == scenes.CLASSES and fresh.image_shape == (64, 64, 3)
  assert isinstance(fresh, Classifier)


def test_logits_and_captured_shapes(fresh, images):
  logits, acts = fresh.apply_fn(fresh.params, images)
  assert logits.shape == (4, len(scenes.CLASSES)) and acts == {}
  logits2, acts = fresh.apply_fn(fresh.params, images, capture=fresh.layers)
  np.testing.assert_allclose(logits2, logits, rtol=1e-5, atol=1e-5)
  assert list(acts) == list(fresh.layers)
  for name, a in acts.items():
    assert a.shape == (4, *SHAPES[name.split("_")[0]]), name
    assert float(a.min()) >= 0                           # after the ReLU
  _, one = fresh.apply_fn(fresh.params, images, capture="conv5_3")
  assert list(one) == ["conv5_3"]


def test_bad_calls_are_named(fresh, images):
  with pytest.raises(ValueError, match="conv6_1"):
    fresh.apply_fn(fresh.params, images, capture="conv6_1")
  with pytest.raises(ValueError, match="fc8"):
    fresh.apply_fn(fresh.params, images, edits={"fc8": Edit(1.0, 0.0)})
  with pytest.raises(ValueError, match="images"):
    fresh.apply_fn(fresh.params, images[:, :32])
  with pytest.raises(ValueError, match="dtype"):
    fresh.apply_fn(fresh.params, (images > 0).astype(np.int32))


def _ablate(unit, width):
  return Edit(jnp.zeros(width).at[unit].set(1.0), jnp.zeros(width))


@pytest.mark.parametrize("layer,unit", [("conv3_1", 5), ("conv5_3", 17)])
def test_ablating_a_unit_equals_zeroing_its_filter(fresh, images, layer, unit):
  """An ablation edit gives the forward pass of a network whose unit is dead."""
  width = SHAPES[layer.split("_")[0]][-1]
  edited, acts = fresh.apply_fn(fresh.params, images, edits={layer: _ablate(unit, width)},
                                capture=layer)
  _, plain = fresh.apply_fn(fresh.params, images, capture=layer)
  np.testing.assert_array_equal(acts[layer], plain[layer])   # captured before the edit
  assert float(plain[layer][..., unit].max()) > 0            # there was something to ablate
  dead = jax.tree.map(lambda x: x, fresh.params)
  dead[layer] = {"kernel": fresh.params[layer]["kernel"].at[..., unit].set(0.0),
                 "bias": fresh.params[layer]["bias"].at[unit].set(0.0)}
  expected, _ = fresh.apply_fn(dead, images)
  np.testing.assert_allclose(edited, expected, rtol=1e-5, atol=1e-5)
  assert not np.allclose(edited, fresh.apply_fn(fresh.params, images)[0], atol=1e-6)


def test_last_layer_edit_is_pool_then_linear(fresh, images):
  """Editing conv5_3 changes the logits exactly through the mean pool and the linear head."""
  _, acts = fresh.apply_fn(fresh.params, images, capture="conv5_3")
  value = jnp.full(128, 0.5)
  alpha = jnp.zeros(128).at[jnp.arange(0, 128, 3)].set(0.7)
  logits, _ = fresh.apply_fn(fresh.params, images, edits={"conv5_3": Edit(alpha, value)})
  x = acts["conv5_3"] * (1 - alpha) + value * alpha
  fc = fresh.params["fc"]
  np.testing.assert_allclose(logits, x.mean(axis=(1, 2)) @ fc["kernel"] + fc["bias"],
                             rtol=1e-5, atol=1e-5)


def test_edits_vmap_into_counterfactual_batches(fresh, images):
  units = jnp.arange(4)
  alphas = jax.nn.one_hot(units, 128)
  batched = jax.vmap(lambda a: fresh.apply_fn(fresh.params, images[:2],
                                              edits={"conv5_3": Edit(a, 0.0)})[0])(alphas)
  assert batched.shape == (4, 2, len(scenes.CLASSES))
  single = fresh.apply_fn(fresh.params, images[:2], edits={"conv5_3": Edit(alphas[2], 0.0)})[0]
  np.testing.assert_allclose(batched[2], single, rtol=1e-5, atol=1e-5)


def test_shipped_classifier_classifies_held_out_scenes():
  model = cls.load_classifier()
  with open(cls.EVAL_PATH) as f:
    recorded = json.load(f)
  n = recorded["fast_eval_n"]
  images, _, classes = scenes.render_scenes(n, seed=recorded["eval_seed"])
  logits, _ = model.apply_fn(model.params, images)
  accuracy = float(np.mean(np.argmax(logits, axis=1) == classes))
  assert accuracy >= 0.8
  assert accuracy == pytest.approx(recorded["fast_accuracy"], abs=2 / n)
  assert recorded["accuracy"] >= 0.9 and recorded["eval_n"] >= 1000
  size = sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(cls.DEFAULT_PATH) for f in files)
  assert size < 4 * 2 ** 20


def test_zoo_loads_it_by_name():
  model = zoo.load_classifier("sceneworld")
  assert model.layers == cls.LAYERS and model.classes == scenes.CLASSES
  with pytest.raises(zoo.SpecError, match="sceneworld"):
    zoo.load_classifier("sceneworlds")
