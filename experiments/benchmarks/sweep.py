"""The single-unit ablation sweep, vmapped over units against a Python loop over them.

All 128 single-unit ablations of the scene GAN's layer4: how much vmapping the edits speeds the
sweep up, and whether the vmapped effects match the looped ones.
"""

from __future__ import annotations

import time

from absl import logging
import numpy as np

from experiments.benchmarks.common import median


def bench_sweep(repeats: int, n: int, chunks: list[int], batch_size: int) -> dict:
  """All single-unit ablations of the scene GAN's layer4 (128 units) on n images: the vmapped
  sweep (each of `chunks` edits per call) against a Python loop over units of the same jitted
  function (one edit per call), compile excluded (each is run once on one batch first). Also the
  largest difference between the vmapped and the looped effects."""
  from jaxdissect import causal, zoo  # pylint: disable=g-import-not-at-top
  world = zoo.load_world("sceneworld")
  args = dict(n=n, batch_size=batch_size, seed=2)
  runs = {"loop": 1, **{f"vmapped_{c}": c for c in chunks}}
  times = {name: [] for name in runs}
  deltas = {}
  for _ in range(repeats):
    for name, chunk in runs.items():
      causal.single_unit_effects(world.generator, world.segmenter, "layer4", 128, chunk=chunk,
                                 **{**args, "n": batch_size})  # compile
      start = time.perf_counter()
      effect = causal.single_unit_effects(world.generator, world.segmenter, "layer4", 128,
                                          chunk=chunk, **args)
      times[name].append(time.perf_counter() - start)
      deltas[name] = effect.delta
  med = {k: median(v) for k, v in times.items()}
  speedup = {k: median([loop / t for loop, t in zip(times["loop"], times[k])])
             for k in runs if k != "loop"}
  diff = {k: float(np.max(np.abs(deltas[k] - deltas["loop"]))) for k in runs if k != "loop"}
  return {"sweep": {"n": n, "batch_size": batch_size, "units": 128, "seconds": med,
                    "runs": times, "speedup": speedup, "max_abs_delta_difference": diff}}


def log_summary(sweep: dict) -> None:
  """Logs the `sweep` record of `bench_sweep` in one line."""
  logging.info("single-unit ablation sweep, scene GAN layer4 (128 units), %d images: %s s; "
               "speedup over the loop %s; max |delta difference| %s", sweep["n"],
               sweep["seconds"], sweep["speedup"], sweep["max_abs_delta_difference"])
