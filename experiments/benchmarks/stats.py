"""The statistics core against the ProgGAN-256 generator (issue 2): is the update cheap enough?

What it measures, in interleaved rounds (one timing of every stage per round) so that ratios
hold on a noisy machine:
  (a) statistics update time per image for a stream shaped like ProgGAN-256 `layer4` upsampled
      to 64x64 (512 units, batch 32): the quantile sketch on every pixel on its first batches
      and in its steady state (after `steady_images`), the sketch on a fixed 1/16 pixel grid
      (shown to alias, not a shortcut), and the IoU tally against 2-channel labels;
  (b) the ProgGAN-256 generator forward time per image, its achieved GFLOP/s, and the GFLOP/s of a
      large float32 matmul (the practical limit of this machine);
  (c) the quantile sketch's memory in bytes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.common import matmul_gflop_per_s, median, once
from jaxdissect.stats import iou, quantile
from ports import proggan


def proggan_flops(sizes) -> float:
  """Multiply-adds x 2 of one ProgGAN forward, from the architecture (spec §1)."""
  flops, res, c_in = 2.0 * 16 * sizes[0] * sizes[1], 4, sizes[1]
  flops += 2.0 * res * res * 9 * c_in * sizes[1]
  for c_out in sizes[2:]:
    res *= 2
    flops += 2.0 * res * res * 9 * (c_in * c_out + c_out * c_out)
    c_in = c_out
  return flops + 2.0 * res * res * c_in * 3


def stats_stream(batch: int, key: jax.Array, concepts: int):
  """Layer4-like activations (8x8x512 upsampled to 64x64) and 2-channel labels."""
  k1, k2 = jax.random.split(key)
  raw = jax.nn.relu(jax.random.normal(k1, (batch, 8, 8, 512)))
  acts = jax.image.resize(raw, (batch, 64, 64, 512), "linear")
  labels = jax.random.randint(k2, (batch, 64, 64, 2), 0, concepts, jnp.int32)
  return acts, labels


def bench_stats(repeats: int, batch: int, gen_batch: int, concepts: int, subsample: int,
                steady_images: int) -> dict:
  """Statistics core against the generator, timed in interleaved rounds (one of each per round).

  The sketch is timed twice: on its first batches (nothing thinned yet) and in the steady state
  after `steady_images` images, where a long dissection spends nearly all its time. Updates
  donate the state, as a streaming loop does; the copy that feeds each timed call is untimed.
  Each ratio is the median over rounds of that round's stats time over its generator time.
  """
  acts, labels = stats_stream(batch, jax.random.key(0), concepts)
  sketch = quantile.quantile_sketch(512)
  feed = jax.jit(sketch.update, donate_argnums=0)
  s = subsample
  feed_sub = jax.jit(lambda st, a: sketch.update(st, a[:, ::s, ::s]), donate_argnums=0)
  copy = jax.jit(lambda st: jax.tree.map(jnp.copy, st))
  first = feed(sketch.init(), acts)  # past the very first, cheapest fill
  steady = copy(first)
  for i in range(1, max(1, steady_images // batch)):
    steady = feed(steady, stats_stream(batch, jax.random.key(1000 + i), concepts)[0])
  tally = iou.iou_tally(512, concepts)
  tally_update = jax.jit(tally.update)
  thresholds = jnp.full((512,), 1.0)
  gen = proggan.make_generator(proggan.LSUN_SIZES, jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (gen_batch, proggan.LSUN_SIZES[0]))
  forward = jax.jit(lambda p, z: gen.apply_fn(p, z)[0])

  def fed(update, state):
    state = jax.block_until_ready(copy(state))
    return once(update, state, acts) / batch

  stages = {
      "generator_s_per_image": lambda: once(forward, gen.params, z) / gen_batch,
      "sketch_first_s_per_image": lambda: fed(feed, first),
      "sketch_steady_s_per_image": lambda: fed(feed, steady),
      "sketch_subsampled_s_per_image": lambda: fed(feed_sub, steady),
      "iou_tally_s_per_image": lambda: once(tally_update, tally.init(), acts, thresholds,
                                            labels) / batch,
  }
  for run in stages.values():  # compile and warm up
    run()
  rounds = [{name: run() for name, run in stages.items()} for _ in range(repeats)]
  out = {name: median([r[name] for r in rounds]) for name in stages}
  for phase in ("first", "steady"):
    out[f"stats_{phase}_x_generator"] = median(
        [(r[f"sketch_{phase}_s_per_image"] + r["iou_tally_s_per_image"])
         / r["generator_s_per_image"] for r in rounds])
  flops = proggan_flops(proggan.LSUN_SIZES)
  out.update({
      "rounds": rounds,
      "steady_shift": int(steady.shift),
      "steady_images": int(steady.count[0]) // (64 * 64),
      "generator_gflops_per_image": flops / 1e9,
      "generator_gflop_per_s": flops / out["generator_s_per_image"] / 1e9,
      "matmul_gflop_per_s": matmul_gflop_per_s(repeats),
      "sketch_memory_bytes": quantile.memory_bytes(first),
      "subsample_stride": s,
      **subsample_accuracy(batch, s, concepts),
  })
  return out


def subsample_accuracy(batch: int, stride: int, concepts: int, batches: int = 4,
                       units: int = 64) -> dict:
  """Rank error (max over units and q) of the sketch fed all pixels vs every stride-th pixel per
  axis, against numpy's exact quantiles of all upsampled pixels of `batches` batches."""
  sketch = quantile.quantile_sketch(units)
  full, sub = sketch.init(), sketch.init()
  update = jax.jit(sketch.update)
  exact = []
  for i in range(batches):
    acts, _ = stats_stream(batch, jax.random.key(100 + i), concepts)
    acts = acts[..., :units]
    full = update(full, acts)
    sub = update(sub, acts[:, ::stride, ::stride])
    exact.append(np.asarray(acts).reshape(-1, units))
  exact = np.sort(np.concatenate(exact), axis=0)
  qs = np.float32([0.5, 0.9, 0.99, 0.995, 0.999])
  out = {}
  for name, state in (("all_pixels", full), ("subsampled", sub)):
    est = np.asarray(sketch.result(state, qs))
    err = 0.0
    for u in range(units):
      lo = np.searchsorted(exact[:, u], est[:, u], "left") / len(exact)
      hi = np.searchsorted(exact[:, u], est[:, u], "right") / len(exact)
      err = max(err, float(np.max(np.maximum(0, np.maximum(lo - qs, qs - hi)))))
    out[f"sketch_rank_error_{name}"] = err
  return out
