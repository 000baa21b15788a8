"""Scene classes: deterministic, prefix-stable, balanced, and their exact labels follow each class's
recipe, so a classifier of them has to look at objects; `render` is untouched by the hook."""

import importlib

import numpy as np
import pytest

from jaxdissect import sceneworld as sw
from jaxdissect.sceneworld import concepts, scenes

IDX = sw.CONCEPT_INDEX
K = len(scenes.CLASSES)
PER_CLASS = 40


@pytest.fixture(scope="module")
def sample():
  """`PER_CLASS` scenes of every class."""
  return scenes.render_scenes(K * PER_CLASS, seed=21)


def _has(labels, concept):
  """`[n]` whether each image has a pixel of `concept` (any channel)."""
  return (labels == IDX[concept]).any(axis=(1, 2, 3))


def _of(name, classes):
  return classes == scenes.CLASSES.index(name)


def test_classes_are_named_and_many():
  assert len(scenes.CLASSES) >= 8 and len(set(scenes.CLASSES)) == K
  assert tuple(r.name for r in scenes.RECIPES) == scenes.CLASSES
  for r in scenes.RECIPES:
    assert len(r.mountains) == concepts.MAX_MOUNTAINS + 1
    assert len(r.buildings) == concepts.MAX_BUILDINGS + 1
    assert len(r.trees) == concepts.MAX_TREES + 1 and len(r.clouds) == concepts.MAX_CLOUDS + 1


def test_shapes_dtypes_and_range():
  images, labels, classes = scenes.render_scenes(5, seed=0, size=32)
  assert images.shape == (5, 32, 32, 3) and images.dtype == np.float32
  assert labels.shape == (5, 32, 32, 2) and labels.dtype == np.int32
  assert classes.shape == (5,) and classes.dtype == np.int32
  assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.1
  assert all(len(a) == 0 for a in scenes.render_scenes(0, seed=0))
  with pytest.raises(ValueError, match="n is -1"):
    scenes.render_scenes(-1, seed=0)
  with pytest.raises(ValueError, match="seed is -2"):
    scenes.render_scenes(1, seed=-2)


def test_deterministic_and_prefix_stable():
  images, labels, classes = scenes.render_scenes(133, seed=7)   # crosses a drawing chunk
  again = scenes.render_scenes(133, seed=7)
  for a, b in zip((images, labels, classes), again):
    np.testing.assert_array_equal(a, b)
  for start, n in ((0, 10), (5, 3), (125, 8)):
    part = scenes.render_scenes(n, seed=7, start=start)
    for a, b in zip((images, labels, classes), part):
      np.testing.assert_array_equal(a[start:start + n], b)
  other, _, _ = scenes.render_scenes(8, seed=8)
  assert not np.array_equal(images[:8], other)
  plain, _ = sw.render(8, seed=7)
  assert not np.array_equal(images[:8], plain)   # its own streams, not render's


def test_classes_are_balanced_in_every_aligned_block():
  classes = scenes.classes_of(20 * K, seed=3)
  for block in classes.reshape(20, K):
    assert sorted(block) == list(range(K))
  assert not np.array_equal(classes[:K], scenes.classes_of(K, seed=4))
  np.testing.assert_array_equal(scenes.classes_of(7, seed=3, start=K + 1), classes[K + 1:K + 8])


def test_lighting_changes_colours_only():
  lit, labels, classes = scenes.render_scenes(12, seed=5)
  unlit, labels2, classes2 = scenes.render_scenes(12, seed=5, lighting=False)
  np.testing.assert_array_equal(labels, labels2)
  np.testing.assert_array_equal(classes, classes2)
  shift = np.abs(lit - unlit).mean(axis=(1, 2, 3))
  assert (shift > 0.01).mean() > 0.5


def test_a_default_recipe_reproduces_render():
  """The hook consumes the uniforms exactly as `render` does."""
  render = importlib.import_module("jaxdissect.sceneworld.render")
  n = 40
  u, noise = render._scene_draws(n, 9, 0, 64)
  full = lambda p: np.tile(np.asarray(p, np.float64), (n, 1))
  recipe = render.Recipe(
      horizon=full([0.35, 0.6]), mountains=full([0.35, 0.35, 0.3]),
      clouds=full([0.25, 0.3, 0.25, 0.2]), water=np.full(n, 0.4), pond=np.full(n, 0.5),
      road=np.full(n, 0.45), perspective=np.full(n, 0.6), buildings=full([0.3, 0.3, 0.22, 0.18]),
      trees=full([0.3, 0.25, 0.2, 0.15, 0.1]))
  images, labels = sw.render(n, seed=9)
  for r in (None, recipe):
    got_images, got_labels = render.draw_scenes(u, noise, 64, r)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(got_images, images, atol=1e-6)


def test_forbidden_objects_never_appear(sample):
  _, labels, classes = sample
  recipes = scenes.RECIPES
  for concept, field in (("building", "buildings"), ("mountain", "mountains"),
                         ("tree", "trees")):
    for r in recipes:
      if getattr(r, field)[0] == 1.0:
        assert not _has(labels[_of(r.name, classes)], concept).any(), (r.name, concept)
  for r in recipes:
    mine = labels[_of(r.name, classes)]
    if r.water == 0:
      assert not _has(mine, "water").any(), r.name
    if r.road == 0:
      assert not _has(mine, "road").any(), r.name


def test_required_objects_are_seen(sample):
  _, labels, classes = sample
  required = {"harbour": ("water", "building"), "lakeside": ("water", "tree"),
              "riverside": ("water", "tree"), "village": ("building", "tree"),
              "street": ("building", "road"), "highway": ("road",), "forest": ("tree",),
              "mountain_pass": ("mountain", "road")}
  for name, needed in required.items():
    mine = labels[_of(name, classes)]
    for concept in needed:
      assert _has(mine, concept).mean() >= 0.9, (name, concept, _has(mine, concept).mean())


def test_amounts_and_layout_tell_sibling_classes_apart(sample):
  _, labels, classes = sample
  area = lambda name, concept: (labels[_of(name, classes)] == IDX[concept]).any(-1).mean()
  assert area("forest", "tree") > 3 * area("meadow", "tree")
  water = (labels == IDX["water"]).any(-1)                       # [n, H, W]
  width = water.any(axis=1).mean(axis=1)                         # fraction of columns reached
  assert width[_of("riverside", classes)].mean() > width[_of("lakeside", classes)].mean() + 0.2
