"""Models by name: known names load, unknown names list the valid ones."""

import jax.numpy as jnp
import pytest

from jaxdissect import zoo


def test_planted_world_loads_by_name():
  world = zoo.load_world("planted")
  gen = world.generator
  image, acts = gen.apply_fn(gen.params, jnp.zeros((2, gen.zdim)), capture="layer2")
  labels = world.segmenter.label_fn(world.segmenter.params, image)
  assert image.shape == (2, 32, 32, 3) and acts["layer2"].shape == (2, 8, 8, 8)
  assert labels.shape == (2, 32, 32, 1)


def test_unknown_name_lists_choices():
  with pytest.raises(zoo.SpecError, match="unknown model 'progan'.*'sceneworld', 'sceneworld-stylegan2', 'planted'"):
    zoo.load_generator("progan")
  with pytest.raises(zoo.SpecError, match="unknown segmenter 'upp'"):
    zoo.load_segmenter("upp")


def test_sceneworld_loads_by_name_with_no_files_given():
  world = zoo.load_world()
  gen = world.generator
  image, acts = gen.apply_fn(gen.params, jnp.zeros((2, gen.zdim)), capture="layer4")
  probs = world.segmenter.segment_fn(world.segmenter.params, image)
  assert image.shape == (2, 64, 64, 3) and acts["layer4"].ndim == 4
  assert probs.shape == (2, 64, 64, len(world.segmenter.concepts))
