"""bfloat16 against float32 on the scene world: does the cheaper dtype change the dissection?

Generator and segmenter run in each dtype (statistics in float32 either way); the IoU
differences and label agreement of the units interpretable in float32, and the wall times.
"""

from __future__ import annotations

import time

from absl import logging
import numpy as np

from jaxdissect import dissect, zoo


def bench_bf16(n: int, batch_size: int) -> dict:
  """The scene world dissected (all layers, q=0.01) with generator and segmenter in float32 and
  in bfloat16 (statistics in float32 either way): IoU differences of the units interpretable
  (IoU > 0.04) in float32, label agreement, and the wall time of each (compile included)."""
  from jaxdissect import precision  # pylint: disable=g-import-not-at-top
  world = zoo.load_world("sceneworld")
  config = dissect.Config(world.generator.layers, n, batch_size=batch_size)
  results, seconds = {}, {}
  for dtype in ("float32", "bfloat16"):
    start = time.perf_counter()
    results[dtype] = dissect.dissect(precision.generator_in(world.generator, dtype),
                                     precision.segmenter_in(world.segmenter, dtype), config)
    seconds[dtype] = time.perf_counter() - start
  layers, worst, agree, total = {}, 0.0, 0, 0
  for layer, ref in results["float32"].items():
    low = results["bfloat16"][layer]
    keep = np.asarray(ref.best_iou) > 0.04
    delta = np.abs(np.asarray(low.iou) - np.asarray(ref.iou))[keep]
    layers[layer] = {"interpretable": int(keep.sum()),
                     "max_abs_delta_iou": float(delta.max()) if delta.size else 0.0,
                     "same_label": int(np.sum(np.asarray(low.label)[keep]
                                              == np.asarray(ref.label)[keep]))}
    worst = max(worst, layers[layer]["max_abs_delta_iou"])
    agree += layers[layer]["same_label"]
    total += layers[layer]["interpretable"]
  return {"bf16": {"n": n, "batch_size": batch_size, "seconds": seconds, "layers": layers,
                   "max_abs_delta_iou": worst, "same_label": agree, "interpretable": total}}


def log_summary(r: dict) -> None:
  """Logs the `bf16` record of `bench_bf16` in one line."""
  logging.info("bfloat16 vs float32 on the scene world, %d images: max |delta IoU| %.4f over "
               "%d interpretable units, %d keep their label; %s", r["n"], r["max_abs_delta_iou"],
               r["interpretable"], r["same_label"], r["seconds"])
