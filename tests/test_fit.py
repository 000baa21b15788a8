"""The automatic forward chunk: the largest split that fits a byte budget, by XLA's analysis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import dissect, fit, sharding, steps
from jaxdissect.model import Segmenter

BATCH = 40


def _bytes(fn, z) -> int:
  """Bytes of `fn` on `z` by XLA's memory analysis, computed here without `jaxdissect.fit`."""
  m = jax.jit(fn).lower(z).compile().memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def test_the_chunk_shrinks_with_the_budget_and_is_the_largest_that_fits(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  forward = lambda chunk: steps.forward_fn(gen, seg, ("layer2",), chunk)
  z = jax.ShapeDtypeStruct((BATCH, *gen.latent_shape), jnp.float32)
  chunks = fit.divisors(BATCH)
  assert chunks == [40, 20, 10, 8, 5, 4, 2, 1]
  sizes = {c: _bytes(forward(c), z) for c in chunks}
  chosen = []
  for larger, smaller in ((40, 20), (10, 8), (4, 2)):
    budget = (sizes[larger] + sizes[smaller]) // 2  # between two neighbouring sizes' needs
    got = fit.largest_chunk(forward, (z,), chunks, budget)
    chosen.append(got.chunk)
    assert got.bytes == sizes[got.chunk] <= budget
    bigger = [c for c in chunks if c > got.chunk]
    assert sizes[min(bigger)] > budget, (budget, got)
  assert chosen == sorted(chosen, reverse=True) and chosen[-1] < chosen[0]
  assert fit.largest_chunk(forward, (z,), chunks, sizes[BATCH]).chunk == BATCH


def _wasteful(seg: Segmenter, width: int = 1024) -> Segmenter:
  """`seg` behind a wide 1x1 convolution that changes nothing: its [B, H, W, width] temporary
  grows with the images per call, as a real segmenter's do, and dwarfs the tally's memory."""
  w = jnp.ones((3, width)) / width
  v = jnp.ones((width, 1))

  def label_fn(params, images):
    wide = jnp.maximum(images @ w, 0.0)  # materialized: XLA does not fuse two dots
    return seg.label_fn(params, images + 0.0 * (wide @ v))

  return seg._replace(label_fn=label_fn)


def test_auto_chunk_dissects_as_the_same_chunk_given_explicitly(planted_world):
  gen, seg = planted_world.generator, _wasteful(planted_world.segmenter)
  mesh = sharding.data_mesh(2)  # the chunk splits each device's share: 25 of a batch of 50
  config = dissect.Config(("layer1", "layer2"), 150, batch_size=50, warmup=50, forward_chunk=-1)
  whole = dissect.prepare(gen, seg, config._replace(memory_budget=2**40), mesh)
  assert whole.forward_chunk == 25 and whole.fitted.tried == {25: whole.fitted.bytes}
  tight = config._replace(memory_budget=whole.fitted.bytes // 2)
  run = dissect.prepare(gen, seg, tight, mesh)
  assert 0 < run.forward_chunk < 25 and run.fitted.bytes <= tight.memory_budget, run.fitted
  auto = dissect.dissect(gen, seg, tight, mesh)
  explicit = dissect.dissect(gen, seg, config._replace(forward_chunk=run.forward_chunk), mesh)
  for layer in config.layers:
    for got, want in zip(auto[layer], explicit[layer]):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_budget_below_one_image_names_the_budget(planted_world):
  config = dissect.Config(("layer2",), 20, batch_size=10, forward_chunk=-1, memory_budget=1000)
  with pytest.raises(ValueError, match=r"budget 1,000 bytes .* even 1 image.* 1: [0-9,]+ bytes"):
    dissect.prepare(planted_world.generator, planted_world.segmenter, config)


def test_on_a_cpu_the_chunk_bounds_the_forwards_planned_temporaries(planted_world, monkeypatch):
  gen, seg = planted_world.generator, planted_world.segmenter
  config = dissect.Config(("layer2",), 20, batch_size=10)  # forward_chunk=-1 by default
  run = dissect.prepare(gen, seg, config)
  assert run.forward_chunk == 0 and run.fitted is None  # a tiny model: the whole share fits
  one = jax.ShapeDtypeStruct((1, *gen.latent_shape), jnp.float32)
  forward = steps.forward_fn(gen, seg, config.layers)
  per_image = jax.jit(forward).lower(one).compile().memory_analysis().temp_size_in_bytes
  assert per_image > 0
  monkeypatch.setattr(fit, "HOST_CALL_BYTES", 3 * per_image)
  assert dissect.prepare(gen, seg, config).forward_chunk == 2  # largest divisor of 10 <= 3
  monkeypatch.setattr(fit, "HOST_CALL_BYTES", 1)
  assert dissect.prepare(gen, seg, config).forward_chunk == 1


def test_bad_chunk_settings_are_refused(planted_world):
  gen = planted_world.generator
  with pytest.raises(ValueError, match="forward_chunk is -2, expected an integer >= -1"):
    dissect.check_config(dissect.Config(("layer2",), 10, forward_chunk=-2), gen)
  with pytest.raises(ValueError, match="memory_budget .* forward_chunk is 0"):
    dissect.check_config(dissect.Config(("layer2",), 10, forward_chunk=0, memory_budget=10**9),
                         gen)
  with pytest.raises(ValueError, match="memory_budget is 0"):
    dissect.check_config(dissect.Config(("layer2",), 10, forward_chunk=-1, memory_budget=0), gen)


class _Device:
  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    return self.stats


def test_device_budget_is_a_share_of_the_smallest_limit(monkeypatch):
  assert fit.device_budget([_Device({"bytes_limit": 1000}), _Device({"bytes_limit": 500})]) == 400
  assert fit.device_budget([_Device(None)]) is None
  assert fit.device_budget(jax.devices("cpu")[:1]) is None
  # A backend without a memory analysis keeps the largest chunk.
  monkeypatch.setattr(fit, "footprint", lambda *a, **k: None)
  assert fit.largest_chunk(lambda c: None, (), [8, 4, 2, 1], budget=1).chunk == 8
