"""bfloat16 wrappers: they really compute in bfloat16, return float32, and stay close to float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import intervene, precision, zoo, zsample


@pytest.fixture(scope="module")
def world():
  return zoo.load_world("sceneworld")


def test_bfloat16_generator_is_close_and_returns_float32(world):
  z = jnp.asarray(zsample.standard_z(4, 0, world.generator.zdim))
  gen16 = precision.generator_in(world.generator, "bfloat16")
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(gen16.params)
             if jnp.issubdtype(leaf.dtype, jnp.floating))
  image, acts = gen16.apply_fn(gen16.params, z, capture=("layer4",))
  ref, ref_acts = world.generator.apply_fn(world.generator.params, z, capture=("layer4",))
  assert image.dtype == jnp.float32 and acts["layer4"].dtype == jnp.float32
  diff = np.abs(np.asarray(image - ref))
  # bfloat16 keeps 8 mantissa bits: different everywhere, close on average, a few pixels off.
  assert 0 < diff.mean() < 0.02 and np.quantile(diff, 0.99) < 0.15
  scale = float(jnp.max(jnp.abs(ref_acts["layer4"])))
  assert float(jnp.max(jnp.abs(acts["layer4"] - ref_acts["layer4"]))) < 0.02 * scale


def test_bfloat16_edits_and_segmenter(world):
  z = jnp.asarray(zsample.standard_z(4, 1, world.generator.zdim))
  gen16 = precision.generator_in(world.generator, "bfloat16")
  seg16 = precision.segmenter_in(world.segmenter, "bfloat16")
  edit = intervene.ablation([0, 5, 9], 128)
  image, _ = gen16.apply_fn(gen16.params, z, {"layer4": edit})
  plain, _ = gen16.apply_fn(gen16.params, z)
  assert float(jnp.max(jnp.abs(image - plain))) > 0
  probs = seg16.segment_fn(seg16.params, image)
  labels = seg16.label_fn(seg16.params, image)
  ref = world.segmenter.label_fn(world.segmenter.params, image)
  assert probs.dtype == jnp.float32 and labels.dtype == ref.dtype
  assert float(np.mean(np.asarray(labels) == np.asarray(ref))) > 0.97


def test_float32_is_the_identity_and_unknown_dtype_is_named(world):
  assert precision.generator_in(world.generator, "float32") is world.generator
  with pytest.raises(ValueError, match="unknown dtype 'float16'.*'bfloat16'"):
    precision.segmenter_in(world.segmenter, "float16")
