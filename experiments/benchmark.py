"""Benchmarks of the statistics core and the ProgGAN-256 generator, measured in one run.

Command (about 2-3 minutes on 2 CPU cores):

  python -m experiments.benchmark --out benchmark.json

What it measures, all in the same process so ratios are meaningful on a noisy machine:
  (a) statistics update time per image for a stream shaped like ProgGAN-256 `layer4` upsampled
      to 64x64 (512 units, batch 32): the quantile sketch on every pixel, the sketch on a 1/16
      pixel subsample (what dissection feeds it), and the IoU tally against 2-channel labels;
  (b) the ProgGAN-256 generator forward time per image, its achieved GFLOP/s, and the GFLOP/s of a
      large float32 matmul (the practical limit of this machine);
  (c) the quantile sketch's memory in bytes.
It writes a JSON record and logs a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import platform
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.stats import iou, quantile
from ports import proggan

_OUT = flags.DEFINE_string("out", "benchmark.json", "Where to write the JSON results.")
_BATCH = flags.DEFINE_integer("batch", 32, "Images per statistics batch.")
_GEN_BATCH = flags.DEFINE_integer("gen_batch", 4, "Images per generator batch.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (after one warm-up).")
_CONCEPTS = flags.DEFINE_integer("concepts", 64, "Concepts in the IoU tally.")
_SUBSAMPLE = flags.DEFINE_integer("subsample", 4, "Pixel stride per axis for the sketch.")


def timed(fn, *args, repeats: int) -> float:
  """Median wall seconds of `fn(*args)` after one warm-up call (which also compiles)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def proggan_flops(sizes) -> float:
  """Multiply-adds x 2 of one ProgGAN forward, from the architecture (spec §1)."""
  flops, res, c_in = 2.0 * 16 * sizes[0] * sizes[1], 4, sizes[1]
  flops += 2.0 * res * res * 9 * c_in * sizes[1]
  for c_out in sizes[2:]:
    res *= 2
    flops += 2.0 * res * res * 9 * (c_in * c_out + c_out * c_out)
    c_in = c_out
  return flops + 2.0 * res * res * c_in * 3


def stats_stream(batch: int, key: jax.Array):
  """Layer4-like activations (8x8x512 upsampled to 64x64) and 2-channel labels."""
  k1, k2 = jax.random.split(key)
  raw = jax.nn.relu(jax.random.normal(k1, (batch, 8, 8, 512)))
  acts = jax.image.resize(raw, (batch, 64, 64, 512), "linear")
  labels = jax.random.randint(k2, (batch, 64, 64, 2), 0, _CONCEPTS.value, jnp.int32)
  return acts, labels


def bench_stats(repeats: int) -> dict:
  batch = _BATCH.value
  acts, labels = stats_stream(batch, jax.random.key(0))
  sketch = quantile.quantile_sketch(512)
  state = sketch.update(sketch.init(), acts)  # past the first, cheapest fills
  s = _SUBSAMPLE.value
  full = jax.jit(sketch.update)
  sub = jax.jit(lambda st, a: sketch.update(st, a[:, ::s, ::s]))
  tally = iou.iou_tally(512, _CONCEPTS.value)
  thresholds = jnp.full((512,), 1.0)
  tally_update = jax.jit(tally.update)
  t_full = timed(full, state, acts, repeats=repeats) / batch
  t_sub = timed(sub, state, acts, repeats=repeats) / batch
  t_iou = timed(tally_update, tally.init(), acts, thresholds, labels, repeats=repeats) / batch
  return {
      **subsample_accuracy(batch, s),
      "sketch_full_s_per_image": t_full,
      "sketch_subsampled_s_per_image": t_sub,
      "iou_tally_s_per_image": t_iou,
      "sketch_memory_bytes": quantile.memory_bytes(state),
      "subsample_stride": s,
  }


def subsample_accuracy(batch: int, stride: int, batches: int = 4, units: int = 64) -> dict:
  """Rank error (max over units and q) of the sketch fed all pixels vs every stride-th pixel per
  axis, against numpy's exact quantiles of all upsampled pixels of `batches` batches."""
  sketch = quantile.quantile_sketch(units)
  full, sub = sketch.init(), sketch.init()
  update = jax.jit(sketch.update)
  exact = []
  for i in range(batches):
    acts, _ = stats_stream(batch, jax.random.key(100 + i))
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


def bench_generator(repeats: int) -> dict:
  gen = proggan.make_generator(proggan.LSUN_SIZES, jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (_GEN_BATCH.value, proggan.LSUN_SIZES[0]))
  forward = jax.jit(lambda p, z: gen.apply_fn(p, z)[0])
  t_gen = timed(forward, gen.params, z, repeats=repeats) / _GEN_BATCH.value
  a = jax.random.normal(jax.random.key(2), (2048, 2048))
  t_mm = timed(jax.jit(lambda a: a @ a), a, repeats=repeats)
  flops = proggan_flops(proggan.LSUN_SIZES)
  return {
      "generator_s_per_image": t_gen,
      "generator_gflops_per_image": flops / 1e9,
      "generator_gflop_per_s": flops / t_gen / 1e9,
      "matmul_gflop_per_s": 2 * 2048**3 / t_mm / 1e9,
  }


def markdown(r: dict) -> str:
  gen = r["generator_s_per_image"]
  rows = [
      ("ProgGAN-256 forward", gen, "1.00"),
      ("quantile sketch, every pixel", r["sketch_full_s_per_image"], None),
      (f"quantile sketch, 1/{r['subsample_stride']**2} pixels",
       r["sketch_subsampled_s_per_image"], None),
      ("IoU tally", r["iou_tally_s_per_image"], None),
      (f"sketch (1/{r['subsample_stride']**2}) + IoU tally",
       r["sketch_subsampled_s_per_image"] + r["iou_tally_s_per_image"], None),
      ("sketch (all) + IoU tally", r["sketch_full_s_per_image"] + r["iou_tally_s_per_image"], None),
  ]
  lines = ["| stage | ms / image | x generator |", "|---|---:|---:|"]
  for name, t, ratio in rows:
    lines.append(f"| {name} | {t * 1e3:.1f} | {ratio or f'{t / gen:.3f}'} |")
  lines.append("")
  lines.append(f"Generator {r['generator_gflop_per_s']:.1f} GFLOP/s vs matmul "
               f"{r['matmul_gflop_per_s']:.1f} GFLOP/s = "
               f"{r['generator_gflop_per_s'] / r['matmul_gflop_per_s']:.0%} "
               f"({r['generator_gflops_per_image']:.1f} GFLOP per image); sketch memory "
               f"{r['sketch_memory_bytes'] / 2**20:.1f} MiB for 512 units.")
  lines.append(f"Rank error of the sketch vs exact quantiles of all upsampled pixels "
               f"(q in 0.5..0.999, 64 units, {4 * _BATCH.value} images): all pixels "
               f"{r['sketch_rank_error_all_pixels']:.1e}, 1/{r['subsample_stride']**2} pixels "
               f"{r['sketch_rank_error_subsampled']:.1e}.")
  return "\n".join(lines)


def main(argv):
  del argv
  repeats = _REPEATS.value
  logging.info("devices: %s", jax.devices())
  result = {"machine": platform.processor() or platform.machine(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()], "date": time.strftime("%Y-%m-%d")}
  result.update(bench_generator(repeats))
  result.update(bench_stats(repeats))
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2)
  logging.info("\n%s", markdown(result))


if __name__ == "__main__":
  app.run(main)
