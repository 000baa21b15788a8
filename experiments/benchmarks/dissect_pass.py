"""Times one-pass dissection against a bare generator+segmenter pass (issue 4).

The light and heavy parts share this: a bare pass (the jitted generator capturing the layers
plus the segmenter's labels, compile excluded), a whole dissection on an already compiled run,
driven as `dissect.dissect` drives it, and each stage of a step timed alone. Every part's
timings repeat `repeats` times, interleaved, and report medians; each ratio is the median of the
per-repeat ratios, and each repeat's denominator is the mean of a bare pass run just before and
one just after the timings it divides. Per-stage costs per image come from timing each stage's
jitted function alone on one batch (shown with images/s and each stage's share), with the
generator's and segmenter's achieved GFLOP/s (XLA's cost analysis of the compiled stage) next to
a large matmul's GFLOP/s timed in the same part.

This is the one module that reaches into the dissection's pieces (`prepare`, the warmup, the
tally, the step) to time them alone; whole dissections run through `jaxdissect.driver`.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.common import compiled_flops, matmul_gflop_per_s, median, timed
from jaxdissect import dissect, driver, sharding, steps, warmup


class Bare(NamedTuple):
  """The compiled bare forward (generator capturing the layers + segmenter labels)."""

  fn: Callable
  latent_shape: tuple[int, ...]


def bare_forward(gen, seg, config: dissect.Config) -> Bare:
  """The jitted generator (capturing the config's layers) + segmenter labels, compiled."""
  forward = jax.jit(steps.forward_fn(gen, seg, config.layers))
  jax.block_until_ready(forward(jnp.zeros((config.batch_size, *gen.latent_shape), jnp.float32)))
  return Bare(forward, tuple(gen.latent_shape))


def bare_pass(forward: Bare, config: dissect.Config) -> float:
  """Wall seconds of `forward` over the config's n latents, batch by batch."""
  start = time.perf_counter()
  for _, z in config.source.batches(config.n, config.batch_size, forward.latent_shape):
    jax.block_until_ready(forward.fn(jnp.asarray(z)))
  return time.perf_counter() - start


def around_bare(forward, config: dissect.Config, measure) -> tuple[float, dict]:
  """Runs `measure() -> dict` between two bare passes (drift on a shared machine hits both
  sides); returns the bare passes' mean and the dict with both bare times added."""
  before = bare_pass(forward, config)
  sample = measure()
  after = bare_pass(forward, config)
  sample.update(bare_before_s=before, bare_after_s=after)
  return (before + after) / 2, sample


def repeat_around_bare(forward, config: dissect.Config, measure, bare: list[float],
                       samples: list[dict], label: str, repeat: int) -> None:
  """`around_bare` once, appending its bare mean and sample and logging them as `label`."""
  mean, sample = around_bare(forward, config, measure)
  bare.append(mean)
  samples.append(sample)
  logging.info("%s repeat %d: bare %.2f s, %s", label, repeat + 1, mean,
               {k: round(v, 2) for k, v in sample.items()})


def compiled_run(gen, seg, config: dissect.Config) -> dissect.Run:
  """A prepared run whose generator and step are already compiled for the config's batch size."""
  return compile_prepared(dissect.prepare(gen, seg, config))


def compile_prepared(run: dissect.Run) -> dissect.Run:
  """`run` with its functions compiled for the config's batch size (each run once on a batch of
  zero latents): the generator, the step, and the warmup's models-alone and tally-alone calls."""
  config = run.config
  z = np.zeros((config.batch_size, *run.latent_shape), np.float32)
  jax.block_until_ready(run.generate(sharding.shard_rows(run.mesh, z)))
  empty = dissect.place_state(run, dissect.template_state(run))
  empty = jax.block_until_ready(run.step(empty, z, 0))
  rows = min(config.batch_size, config.warmup, config.n)
  jax.block_until_ready(run.step.tally(empty, run.step.forward(z), 0, rows))
  return run


def dissection_pass(run: dissect.Run) -> dict:
  """Seconds of a whole dissection on a compiled run by the library's one run loop, with its
  stages timed apart (`driver.run_prepared(timings=...)`)."""
  times: dict = {}
  driver.run_prepared(run, timings=times)
  return times


def stage_costs(gen, seg, run: dissect.Run, repeats: int) -> dict:
  """Milliseconds per image of each stage of a step, each jitted alone and timed on one batch.

  `tally` is everything the step adds to the bare pass: upsampling, binning, the per-concept
  scatter-adds and the top-k; `step` is the fused generate + segment + tally.
  """
  config, shapes = run.config, run.shapes
  batch = config.batch_size
  _, z = next(config.source.batches(batch, batch, run.latent_shape))
  generate = jax.jit(lambda z: gen.apply_fn(gen.params, z, capture=config.layers))
  label = jax.jit(lambda x: seg.label_fn(seg.params, x))
  image, acts = generate(jnp.asarray(z))
  labels = label(image)
  brackets = warmup.host_brackets(run.rule, shapes.layers, shapes.seg_size,
                                  [jax.device_get(acts)], rows=batch)
  state = dissect.init_state(run, brackets)
  units = {layer: s[2] for layer, s in shapes.layers.items()}
  tally = jax.jit(steps.tally_fn(run.rule, units, shapes.seg_size, run.num_concepts,
                                 config.topk, config.tally_chunk))
  placed = [dissect.place_state(run, state)]

  def step(z):  # the step donates its state: each call continues from the last one's
    placed[0] = run.step(placed[0], z, 0)
    return placed[0]

  first = jnp.int32(0)
  ms = lambda fn, *args: timed(fn, *args, repeats=repeats) / batch * 1e3
  out = {"generator_ms": ms(generate, z), "segmenter_ms": ms(label, image),
         "tally_ms": ms(tally, state, acts, labels, first),
         "step_ms": ms(step, z),
         "generator_gflop": compiled_flops(generate, z) / batch / 1e9,
         "segmenter_gflop": compiled_flops(label, image) / batch / 1e9,
         "matmul_gflop_per_s": matmul_gflop_per_s(repeats)}
  for stage in ("generator", "segmenter"):
    out[f"{stage}_gflop_per_s"] = out[f"{stage}_gflop"] / out[f"{stage}_ms"] * 1e3
  return out


def summary(samples: list[dict], bare: list[float]) -> dict:
  """Medians of each timing and of the per-repeat ratios to the bare pass."""
  out = {"bare_s": median(bare), "runs": samples}
  for key in samples[0]:
    out[key] = median([s[key] for s in samples])
  for key in ("total_s", "tally_s", "with_compile_s", "reference_s"):
    if key in samples[0]:
      out[key[:-2] + "_ratio"] = median([s[key] / b for s, b in zip(samples, bare)])
  return out
