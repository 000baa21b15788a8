"""The light dissection part: how much one-pass dissection adds to the scene world's bare pass.

The scene world, layer4 alone and layers layer1..layer10, with top-1% thresholds and with IQR
thresholds (`_iqr`): a jitted generator forward capturing the layers plus the segmenter's labels
over `n` images (compile excluded) against `dissect.dissect` over the same images, with and
without compilation (the warmup included), and the two-pass `reference_dissect` of layer4.
"""

from __future__ import annotations

import functools
import time

from experiments.benchmarks import dissect_pass
from jaxdissect import dissect, reference, zoo


def bench_light(repeats: int, n: int, batch: int) -> dict:
  """Scene world, layer4 and all ten layers: bare pass vs one-pass (and two-pass) dissection."""
  world = zoo.load_world("sceneworld")
  gen, seg = world.generator, world.segmenter
  every = tuple(gen.layers[:-1])
  workloads = {"layer4": ("layer4",), "all": every,
               "layer4_iqr": ("layer4",), "all_iqr": every}
  configs = {name: dissect.Config(layers, n, batch_size=batch,
                                  threshold="iqr" if name.endswith("iqr") else 0.01)
             for name, layers in workloads.items()}
  forwards = {name: dissect_pass.bare_forward(gen, seg, c) for name, c in configs.items()}
  runs = {name: dissect_pass.compiled_run(gen, seg, c) for name, c in configs.items()}
  bare = {name: [] for name in workloads}
  samples = {name: [] for name in workloads}
  c4 = configs["layer4"]

  def measure(name: str, config: dissect.Config) -> dict:
    sample = dissect_pass.dissection_pass(runs[name])
    start = time.perf_counter()
    dissect.dissect(gen, seg, config)  # builds and compiles its own functions
    sample["with_compile_s"] = time.perf_counter() - start
    if name == "layer4":
      start = time.perf_counter()
      reference.reference_dissect(gen, seg, "layer4", n=c4.n, batch_size=c4.batch_size,
                                  seed=c4.seed, q=c4.threshold)
      sample["reference_s"] = time.perf_counter() - start
    return sample

  for r in range(repeats):
    for name, config in configs.items():
      dissect_pass.repeat_around_bare(forwards[name], config,
                                      functools.partial(measure, name, config), bare[name],
                                      samples[name], f"light {name}", r)
  out = {"n": n, "batch": batch}
  for name in workloads:
    out[name] = {"layers": list(workloads[name]), "threshold": configs[name].threshold,
                 **dissect_pass.summary(samples[name], bare[name]),
                 **dissect_pass.stage_costs(gen, seg, runs[name], repeats)}
  return out
