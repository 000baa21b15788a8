"""Threshold stages: each unit's level chosen before the pass that counts IoU at exactly it.

The default dissection (PNAS definitions) finds thresholds and IoU in one fused pass. The
original GAN Dissection's definitions do not fuse: its quantile is of the *raw* featuremap while
"on" is judged on the upsampled map, its IoU denominator needs per-image category counts, and its
IQR levels are picked on another sample. So these runs first fix every unit's level (and, for IQR,
its label), then one pass of `thresholds.CountAt` counts exact integers at those levels:

  given       levels from the caller (a file, another tool): no stage at all;
  quantile    the exact (1 - q) quantile, numpy's linear rule, of each unit's raw (or upsampled)
              activations over the threshold sample: the generator alone, keeping each unit's
              top q share of values (q * n * h * w of them: 1% of the raw map is small);
  iqr         the original's IQR choice (`thresholds.IqrCategory`) tallied over the threshold
              sample on the warmup's grid of levels, a dissection of its own.

The stage's output is the counting pass's bracket, so a checkpoint holds it and resumes without
running the stage again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxdissect import sharding, smallfile, thresholds
from jaxdissect.latents import pad_rows
from jaxdissect.npyfile import read_npy, read_npz
from jaxdissect.report.reader import MAX_DOC_BYTES  # a thresholds file may be a dissect.json
from jaxdissect.stats import levels
from jaxdissect.stats.topk import largest_values
from jaxdissect.upsample import upsample

QUANTILE_OF = ("upsampled", "raw")
IOU_DENOMINATORS = ("plain", "category")


def quantile_level(top: np.ndarray, q: float, total: int) -> np.ndarray:
  """`[U]` the (1 - q) quantile of `total` values per unit from the ascending values of ranks
  floor((1 - q)(total - 1)) and the next (`top [U, >= 2]`), bit for bit as `np.quantile`."""
  position = (1.0 - q) * (total - 1)
  t = position - np.floor(position)
  a, b = top[:, 0], top[:, min(1, top.shape[1] - 1)]
  d = b - a
  return np.where(t >= 0.5, b - d * (1 - t), a + d * t).astype(np.float32)


def exact_quantiles(run: Any, q: float, source, n: int, raw: bool) -> dict[str, np.ndarray]:
  """Each layer's exact per-unit (1 - q) quantile over the first `n` images of `source`: of the
  raw featuremap (`raw`) or of the activations upsampled to the labels, generator only."""
  import jax  # pylint: disable=g-import-not-at-top
  shapes = run.shapes
  up = jax.jit(lambda a: upsample(a, shapes.seg_size))
  per_image = {layer: (h * w if raw else shapes.seg_size[0] * shapes.seg_size[1])
               for layer, (h, w, _) in shapes.layers.items()}
  total = {layer: n * p for layer, p in per_image.items()}
  keep = {layer: t - int(np.floor((1.0 - q) * (t - 1))) for layer, t in total.items()}
  kept: dict[str, list[np.ndarray]] = {layer: [] for layer in shapes.layers}
  bad = {layer: False for layer in shapes.layers}
  for _, z in source.batches(n, run.config.batch_size, run.latent_shape):
    acts = run.generate(sharding.shard_rows(run.mesh, pad_rows(z, run.config.batch_size)))
    for layer, (_, _, units) in shapes.layers.items():
      a = sharding.gather_rows(acts[layer])[:len(z)].astype(np.float32)
      if not raw:
        a = np.asarray(up(a))
      values = np.ascontiguousarray(a.reshape(-1, units).T)
      bad[layer] |= not np.all(np.isfinite(values))
      kept[layer] = [largest_values(kept[layer] + [values], keep[layer])]
  out = {}
  for layer in shapes.layers:
    if bad[layer]:
      raise FloatingPointError(f"{layer}: non-finite activations; dissection needs finite ones")
    out[layer] = quantile_level(np.sort(kept[layer][0], axis=1), q, total[layer])
  return out


def brackets(gen, seg, run: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The `CountAt` bracket `(levels [U, 1], labels [U])` of every layer, from the run's stage."""
  from jaxdissect import dissect  # pylint: disable=g-import-not-at-top (dissect builds on this)
  config, shapes = run.config, run.shapes
  no_label = lambda u: np.full(u, -1, np.int32)
  if config.given_thresholds is not None:
    return {layer: (given_levels(config.given_thresholds, layer, c).reshape(-1, 1),
                    no_label(c)) for layer, (_, _, c) in shapes.layers.items()}
  source = config.threshold_source
  n = config.threshold_n or config.n
  if config.threshold == "iqr":
    sub = config._replace(latents=source, n=n, threshold_latents=None, threshold_n=None,
                          quantile_of="upsampled", iou="plain", given_thresholds=None)
    _, cats = levels.categories_of(seg.concepts)
    rule = thresholds.IqrCategory(config.iou, cats, seed=config.seed)
    stage = dissect.prepare(gen, seg, sub, run.mesh, rule=rule)
    state = dissect.start(stage)
    for first, z in dissect.remaining(stage, state):
      state = stage.step(state, z, first)
    results, _ = dissect.finish(stage, state)
    return {layer: (r.thresholds.astype(np.float32).reshape(-1, 1), r.label.astype(np.int32))
            for layer, r in results.items()}
  found = exact_quantiles(run, float(config.threshold), source, n, config.quantile_of == "raw")
  return {layer: (found[layer].reshape(-1, 1), no_label(len(found[layer])))
          for layer in shapes.layers}


def given_levels(given: Any, layer: str, units: int) -> np.ndarray:
  """Layer `layer`'s `[U]` float32 levels from a mapping of layer to levels; raises ValueError
  naming what is missing or misshapen."""
  if layer not in given:
    raise ValueError(f"given thresholds have no levels for layer {layer}; they have: "
                     f"{', '.join(sorted(given)) or 'none'}")
  value = np.asarray(given[layer], np.float32).reshape(-1)
  if value.shape != (units,):
    raise ValueError(f"given thresholds of layer {layer} have {value.size} values, expected one "
                     f"per unit ({units})")
  if not np.all(np.isfinite(value)):
    raise ValueError(f"given thresholds of layer {layer} are not all finite")
  return value


def load_thresholds(path: str, layers: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Per-layer levels from `path`: `.npy` (one layer: `[U]`), `.npz` (one array per layer name),
  or `.json` (`{layer: [levels]}`, or a `dissect.json`, whose units' thresholds are read).
  Raises ValueError (one line naming the file) for anything unreadable or misshapen."""
  if path.endswith(".npy"):
    if len(layers) != 1:
      raise ValueError(f"{path} holds one layer's thresholds but {len(layers)} layers are "
                       "dissected; use a .npz or .json keyed by layer")
    return {layers[0]: read_npy(path)}
  if path.endswith(".npz"):
    return read_npz(path)
  if path.endswith(".json"):
    try:
      doc = smallfile.read_json(path, MAX_DOC_BYTES, "thresholds file")
      if isinstance(doc, dict) and isinstance(doc.get("layers"), list):
        return {entry["layer"]: np.array([u["threshold"] for u in entry["units"]], np.float32)
                for entry in doc["layers"]}
      if isinstance(doc, dict):
        return {k: np.asarray(v, np.float32) for k, v in doc.items()}
      raise ValueError(f"it holds a JSON {type(doc).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as e:
      raise ValueError(f"thresholds file {path}: not readable levels ({type(e).__name__}: "
                       f"{smallfile.one_line(e)})") from None
  raise ValueError(f"thresholds file {path!r}: expected .npy, .npz or .json")
