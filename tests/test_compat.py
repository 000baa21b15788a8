"""The original GAN Dissection's definitions (raw-featuremap quantile, category-restricted IoU,
IQR levels from another sample, its interpretability rule) and given thresholds, against an
independent numpy implementation of the original's code (netdissect/dissection.py)."""

import jax
import numpy as np
import pytest

from jaxdissect import dissect, driver, latents, sharding, thresholds
from jaxdissect.upsample import taps

CHUNK = 10


def _sample(world, layer, n, seed):
  """Raw `[N, h, w, U]`, upsampled `[N, H, W, U]` activations and labels `[N, H, W, D]`."""
  gen, seg = world.generator, world.segmenter

  @jax.jit
  def run(z):
    image, acts = gen.apply_fn(gen.params, z, capture=(layer,))
    return acts[layer], None, seg.label_fn(seg.params, image)

  # Calls of CHUNK images, as the dissections' (the scene GAN's convolutions round apart for
  # other batch shapes on CPU).
  out = [run(z) for _, z in latents.seeded(seed).batches(n, CHUNK, gen.latent_shape)]
  raw, labels = (np.concatenate([np.asarray(o[i]) for o in out]) for i in (0, 2))
  return raw, _upsample(raw, labels.shape[1:3]), labels


def _upsample(raw, size):
  """Bilinear, half-pixel centres, edges clamped (the spec's upsampling) in float32 numpy:
  rows, then columns, each `a + (b - a) f` (XLA may fuse that into one rounding)."""
  (y0, y1, fy), (x0, x1, fx) = taps(raw.shape[1], size[0]), taps(raw.shape[2], size[1])
  fy, fx = fy.astype(np.float32)[None, :, None, None], fx.astype(np.float32)[None, None, :, None]
  rows = raw[:, y0] + (raw[:, y1] - raw[:, y0]) * fy
  return rows[:, :, x0] + (rows[:, :, x1] - rows[:, :, x0]) * fx


def _categories(concepts):
  names = []
  for _, c in concepts[1:]:
    names += [c] if c not in names else []
  return np.array([names.index(c) if c in names else 0 for _, c in concepts]), len(names)


def _tally(up, labels, level, concepts):
  """The original's `collect_bincounts` at per-unit `level [U, T]`: (ic [K, U, T], label pixels
  [K], category on-counts [C, U, T], category pixels [C]); row 0 of ic: every on-pixel."""
  num_concepts = len(concepts)
  cats, num_cats = _categories(concepts)
  n, units = up.shape[0], up.shape[-1]
  flat = up.reshape(n, -1, units)
  hot = np.stack([(labels == k).any(-1).reshape(n, -1) for k in range(num_concepts)])
  hot[0] = True
  present = np.stack([(labels == k).any(axis=(1, 2, 3)) for k in range(num_concepts)])  # [K, N]
  cat_present = np.stack([present[cats == c].any(0) for c in range(num_cats)])  # [C, N]
  ic = np.zeros((num_concepts, units, level.shape[1]), np.int64)
  cc = np.zeros((num_cats, units, level.shape[1]), np.int64)
  for u in range(units):  # one unit at a time: [N, P, T] comparisons
    on = (flat[..., u, None] > level[u]).astype(np.float64)  # float64 sums are exact counts
    ic[:, u] = hot.reshape(num_concepts, -1).astype(np.float64) @ on.reshape(-1, on.shape[-1])
    cc[:, u] = cat_present.astype(np.float64) @ on.sum(1)
  truth = hot.reshape(num_concepts, -1).sum(1)
  return ic, truth, cc, cat_present.sum(1) * flat.shape[1], cats


def _mi_je(arr):
  with np.errstate(divide="ignore", invalid="ignore"):
    mi = sum(np.nan_to_num(arr[j, k] * np.log(arr[j, k] / (arr[j].sum(0) * arr[:, k].sum(0))))
             for j in range(2) for k in range(2))
    je = -sum(np.nan_to_num(arr[j, k] * np.log(arr[j, k])) for j in range(2) for k in range(2))
  return np.maximum(mi, 0), np.maximum(je, 0)


def _original_scores(ic, truth, cc, tc, cats):
  """`score_tally_stats`: category IoU and IQR `[K, U]` at one level."""
  pred, total, truth = cc[cats], tc[cats][:, None], truth[:, None].astype(float)
  union = pred + truth - ic
  iou = ic / (union + 1e-20)
  arr = np.array([[ic, pred - ic], [truth - ic, total - union]], float) / total
  mi, je = _mi_je(arr)
  with np.errstate(divide="ignore", invalid="ignore"):
    iqr = np.nan_to_num(mi / je)
  iou[0], iqr[0] = 0, 0
  return iou, iqr


def _original_iqr_levels(up, labels, concepts):
  """`collect_iqr` on a sample: grid of exact upsampled quantiles, IQR per (label, unit,
  level), category-conditional predictions; the level and label of the best IQR per unit."""
  units = up.shape[-1]
  flat = up.reshape(-1, units)
  grid = np.maximum.accumulate(np.quantile(np.sort(flat, 0), thresholds.IQR_LEVELS, axis=0).T
                               .astype(np.float32), axis=1)  # [U, T]
  ic, truth, cc, tc, cats = _tally(up, labels, grid, concepts)
  frac = truth / truth[0]
  truth_f = frac[:, None, None]
  preds = (cc / tc[:, None, None])[cats]
  isects = ic / truth[:, None, None] * truth_f
  unions = truth_f + preds - isects
  arr = np.clip(np.array([[isects, preds - isects], [truth_f - isects, 1 - unions]]), 0, 1)
  mi, je = _mi_je(arr)
  mi[:, :, 0] = 0
  mi[frac < 1e-3] = 0
  with np.errstate(divide="ignore", invalid="ignore"):
    iqr = np.nan_to_num(mi / je)
  iqr[isects + arr[1, 1] <= 0.8] = 0
  iqr[:, grid <= 0] = 0
  iqr[0] = 0
  best = iqr.argmax(2)
  label = np.take_along_axis(iqr, best[..., None], 2)[..., 0].argmax(0)
  level = grid[np.arange(units), best[label, np.arange(units)]]
  return level, label


def _check(result, up, labels, level, concepts, label=None):
  """`result` against the original's numbers at `level`: levels, labels, IoU and IQR."""
  np.testing.assert_array_equal(result.thresholds.astype(np.float32), level)
  ic, truth, cc, tc, cats = _tally(up, labels, level[:, None], concepts)
  iou, iqr = _original_scores(ic[..., 0], truth, cc[..., 0], tc, cats)
  units = np.arange(len(level))
  label = iou.argmax(0) if label is None else label
  np.testing.assert_array_equal(result.label, label)
  np.testing.assert_allclose(result.iou, iou.T, rtol=1e-6, atol=1e-12)  # float32 iou.npy
  np.testing.assert_allclose(result.iqr, iqr[label, units], rtol=1e-9, atol=1e-12)
  return ic, truth, cc


def _config(layers, n, **kw):
  kw.setdefault("batch_size", 50)
  kw.setdefault("forward_chunk", CHUNK)
  return dissect.Config(layers=tuple(layers), n=n, **kw)


@pytest.mark.parametrize("world_name,layer,n", [("planted_world", "layer2", 200),
                                                ("scene_world", "layer6", 60)])
def test_raw_quantile_and_category_iou_match_the_original(world_name, layer, n, request):
  world = request.getfixturevalue(world_name)
  raw, up, labels = _sample(world, layer, n, 1)
  config = _config([layer], n, quantile_of="raw", iou="category", threshold=0.01)
  result = dissect.dissect(world.generator, world.segmenter, config)[layer]
  level = np.quantile(raw.reshape(-1, raw.shape[-1]), 0.99, axis=0).astype(np.float32)
  np.testing.assert_array_equal(result.thresholds.astype(np.float32), level)  # raw: bit exact
  _check(result, up, labels, level, world.segmenter.concepts)


# n small enough that the warmup grid holds every value (`IqrGrid.cap`): exact quantiles.
@pytest.mark.parametrize("world_name,layer,n", [("planted_world", "layer2", 150),
                                                ("scene_world", "layer6", 40)])
def test_iqr_levels_from_another_sample_match_the_original(world_name, layer, n, request):
  world = request.getfixturevalue(world_name)
  _, up2, labels2 = _sample(world, layer, n, 2)
  _, up, labels = _sample(world, layer, n, 1)
  config = _config([layer], n, threshold="iqr", iou="category", warmup=n,
                   threshold_latents=latents.seeded(2))
  result = dissect.dissect(world.generator, world.segmenter, config)[layer]
  level, label = _original_iqr_levels(up2, labels2, world.segmenter.concepts)
  _check(result, up, labels, level, world.segmenter.concepts, label)
  rule = thresholds.interpretable_for("iqr")
  names = [name for name, _ in world.segmenter.concepts]
  interpretable = [rule(result.label[u], result.best_iou[u], result.iqr[u])
                   for u in range(len(level))]
  if world_name == "planted_world":
    for concept, (_, unit) in __import__("jaxdissect.planted").planted.PLANTED.items():
      assert names[result.label[unit]] == concept and interpretable[unit]


def test_given_thresholds_count_exactly_what_numpy_counts(scene_world):
  layer, n = "layer6", 60
  _, up, labels = _sample(scene_world, layer, n, 1)
  rng = np.random.default_rng(0)
  flat = up.reshape(-1, up.shape[-1])
  level = flat[rng.integers(0, len(flat), flat.shape[1]), np.arange(flat.shape[1])]  # on values
  for iou in ("plain", "category"):
    config = _config([layer], n, batch_size=20, given_thresholds={layer: level}, iou=iou)
    run = dissect.prepare(scene_world.generator, scene_world.segmenter, config)
    state = dissect.start(run)
    for first, z in dissect.remaining(run, state):
      state = run.step(state, z, first)
    stat = dissect.gather_state(run, state).stats[layer]
    ic, truth, cc, tc, _ = _tally(up, labels, level[:, None], scene_world.segmenter.concepts)
    np.testing.assert_array_equal(np.asarray(stat.above), ic)
    np.testing.assert_array_equal(np.asarray(stat.pixels), truth)
    np.testing.assert_array_equal(np.asarray(stat.category_on), cc)
    np.testing.assert_array_equal(np.asarray(stat.category_pixels), tc)
    result, _ = dissect.layer_results(run, dissect.gather_state(run, state))
    if iou == "plain":
      union = ic[0][None, :, 0] + truth[:, None] - ic[..., 0]
      expected = np.where(union > 0, ic[..., 0] / np.maximum(union, 1), 0).T
      expected[:, 0] = 0
      np.testing.assert_allclose(result[layer].iou, expected.astype(np.float32), rtol=1e-6)
  with pytest.raises(ValueError, match="one per unit"):
    dissect.prepare(scene_world.generator, scene_world.segmenter,
                    _config([layer], n, given_thresholds={layer: level[:3]}))


@pytest.mark.parametrize("threshold", [0.01, "iqr"])
def test_gandissect_definitions_shard_and_resume(planted_world, tmp_path, threshold):
  gen, seg = planted_world.generator, planted_world.segmenter
  config = _config(["layer1", "layer2"], 90, batch_size=20, warmup=40, threshold=threshold,
                   quantile_of="raw", iou="category", threshold_latents=latents.seeded(2),
                   threshold_n=60)
  one = dissect.dissect(gen, seg, config)
  four = dissect.dissect(gen, seg, config, mesh=sharding.data_mesh(4))
  stop = {"batches": 0}

  def interrupt(stage, done, total):
    stop["batches"] += 1
    if stop["batches"] == 3:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    driver.run(gen, seg, config, checkpoint_dir=str(tmp_path), checkpoint_every=1,
               progress=interrupt)
  resumed = driver.run(gen, seg, config, checkpoint_dir=str(tmp_path), checkpoint_every=1)
  for other in (four, resumed):
    for layer in one:
      for name, x, y in zip(one[layer]._fields, one[layer], other[layer], strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{layer}.{name}")
  doc = driver.write(str(tmp_path / "out"), one, gen, seg, config, model="planted",
                     segmenter="planted", images=False)
  assert doc["definitions"]["iou"] == "category" and doc["definitions"]["quantile_of"] == "raw"
  assert doc["interpretable"]["rule"] == ("IQR > 0.01 and IoU > 0.05" if threshold == "iqr"
                                          else "IoU > 0.04")
