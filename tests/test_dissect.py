"""The one-pass dissection against the two-pass reference, on the planted and scene worlds."""

import jax
import numpy as np
import pytest

from jaxdissect import dissect, planted, reference, zsample


def _config(world, layers, n, **kw):
  kw.setdefault("batch_size", 50)
  return dissect.Config(layers=tuple(layers), n=n, **kw)


def test_planted_units_are_found_with_their_concepts(planted_world):
  results = dissect.dissect(planted_world.generator, planted_world.segmenter,
                            _config(planted_world, ["layer2"], 1000, batch_size=100))
  r = results["layer2"]
  names = [name for name, _ in planted.CONCEPTS]
  for concept, (_, unit) in planted.PLANTED.items():
    assert names[r.label[unit]] == concept and r.best_iou[unit] >= 0.9, (concept, r.best_iou)
  others = [u for u in range(planted.UNITS) if u not in planted.COLOUR_UNITS]
  assert np.all(r.best_iou[others] <= 0.04), r.best_iou


def test_planted_one_pass_equals_two_pass_reference(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  r = dissect.dissect(gen, seg, _config(planted_world, ["layer1", "layer2"], 300))
  for layer in ("layer1", "layer2"):
    ref = reference.reference_dissect(gen, seg, layer, n=300, batch_size=50)
    assert np.max(np.abs(r[layer].iou - ref.iou)) <= 1e-3
    np.testing.assert_array_equal(r[layer].label, ref.label)


def test_scene_world_one_pass_matches_reference_within_1e3(scene_world):
  gen, seg = scene_world.generator, scene_world.segmenter
  n = 200
  r = dissect.dissect(gen, seg, _config(scene_world, ["layer6"], n))["layer6"]
  ref = reference.reference_dissect(gen, seg, "layer6", n=n, batch_size=50)
  assert np.max(np.abs(r.iou - ref.iou)) <= 1e-3
  assert np.max(r.iou_bound) <= 1e-3
  # The thresholds switch on the same pixels: they sit within one data gap of the exact ones.
  np.testing.assert_allclose(r.thresholds, ref.thresholds, rtol=1e-3, atol=1e-4)
  assert np.mean(r.label == ref.label) == 1.0


def test_iqr_mode_iou_is_exact_at_its_thresholds(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  r = dissect.dissect(gen, seg, _config(planted_world, ["layer2"], 300,
                                        threshold="iqr"))["layer2"]
  ref = reference.reference_dissect(gen, seg, "layer2", n=300, batch_size=50,
                                    thresholds=r.thresholds.astype(np.float32))
  np.testing.assert_allclose(r.iou, ref.iou, atol=1e-6)
  names = [name for name, _ in planted.CONCEPTS]
  for concept, (_, unit) in planted.PLANTED.items():
    assert names[r.label[unit]] == concept and r.iqr[unit] > 0.5


def test_results_do_not_depend_on_batch_size(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  a = dissect.dissect(gen, seg, _config(planted_world, ["layer2"], 200, batch_size=50))["layer2"]
  b = dissect.dissect(gen, seg, _config(planted_world, ["layer2"], 200, batch_size=20))["layer2"]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_top_images_are_the_units_strongest_images(planted_world):
  gen = planted_world.generator
  r = dissect.dissect(gen, planted_world.segmenter,
                      _config(planted_world, ["layer1"], 100, topk=5))["layer1"]
  _, acts = gen.apply_fn(gen.params, zsample.standard_z(100, 1, planted.ZDIM), capture=("layer1",))
  peaks = np.asarray(acts["layer1"]).max(axis=(1, 2))  # [n, U]
  for u in range(peaks.shape[1]):
    np.testing.assert_array_equal(r.top_indices[u], np.argsort(-peaks[:, u], kind="stable")[:5])
    np.testing.assert_allclose(r.top_values[u], np.sort(peaks[:, u])[::-1][:5], rtol=1e-6)


def test_one_compiled_step_serves_every_batch(planted_world):
  run = dissect.prepare(planted_world.generator, planted_world.segmenter,
                        _config(planted_world, ["layer2"], 200))
  state = dissect.start(run)
  for first, z in dissect.remaining(run, state):
    state = run.step(state, z, np.int32(first))
  assert dissect.images_tallied(state) == 200
  assert run.step.cache_size() == 1  # one trace, one compiled executable


def test_bad_configs_name_the_value_and_the_choices(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  with pytest.raises(ValueError, match="layer99.*layer1"):
    dissect.prepare(gen, seg, _config(planted_world, ["layer99"], 10))
  with pytest.raises(ValueError, match="out of range"):
    dissect.prepare(gen, seg, _config(planted_world, ["layer2"], 10, threshold=1.5))
  with pytest.raises(ValueError, match="'median'"):
    dissect.prepare(gen, seg, _config(planted_world, ["layer2"], 10, threshold="median"))


def test_a_segmenter_that_rejects_the_images_is_reported(planted_world, scene_world):
  seg = scene_world.segmenter

  def fixed_size_labels(params, images):
    if images.shape[1:3] != (64, 64):
      raise ValueError(f"expects 64x64 images, got {images.shape[1:3]}")
    return seg.label_fn(params, images)

  picky = seg._replace(label_fn=fixed_size_labels)
  with pytest.raises(ValueError, match=r"segmenter cannot label .* \[32, 32, 3\]"):
    dissect.prepare(planted_world.generator, picky, _config(planted_world, ["layer2"], 10))


def test_a_layer_finer_than_the_labels_is_refused(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter

  def coarse_labels(params, images):
    return seg.label_fn(params, images)[:, ::8, ::8]

  coarse = seg._replace(label_fn=coarse_labels)
  with pytest.raises(ValueError, match="layer2 is 8x8, larger than the segmentation 4x4"):
    dissect.prepare(gen, coarse, _config(planted_world, ["layer2"], 10))


def test_non_finite_activations_are_reported(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter

  def broken(params, z, edits=None, capture=None):
    image, acts = gen.apply_fn(params, z, edits, capture)
    acts["layer2"] = acts["layer2"].at[:, 0, 0, 4].set(jax.numpy.nan)
    return image, acts

  with pytest.raises(FloatingPointError, match="layer2.*units \\[4\\]"):
    dissect.dissect(gen._replace(apply_fn=broken), seg, _config(planted_world, ["layer2"], 50))


def test_the_warmup_tallies_its_own_images_once(planted_world, monkeypatch):
  gen, seg = planted_world.generator, planted_world.segmenter
  config = dissect.Config(("layer2",), 60, batch_size=20, warmup=40)
  assert dissect.images_tallied(dissect.start(dissect.prepare(gen, seg, config))) == 40
  kept = dissect.dissect(gen, seg, config)
  monkeypatch.setattr(dissect, "KEEP_WARMUP_BYTES", 0)  # too large to keep: generate them again
  assert dissect.images_tallied(dissect.start(dissect.prepare(gen, seg, config))) == 0
  again = dissect.dissect(gen, seg, config)
  for a, b in zip(kept["layer2"], again["layer2"], strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
