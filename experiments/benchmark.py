"""Benchmarks of the statistics core, the ProgGAN-256 generator and one-pass dissection.

Command for the statistics core (about 4 minutes on 2 CPU cores):

  python -m experiments.benchmark --repeats 7 --out benchmark.json

What it measures, in interleaved rounds (one timing of every stage per round) so that ratios
hold on a noisy machine:
  (a) statistics update time per image for a stream shaped like ProgGAN-256 `layer4` upsampled
      to 64x64 (512 units, batch 32): the quantile sketch on every pixel on its first batches
      and in its steady state (after `--steady_images`), the sketch on a fixed 1/16 pixel grid
      (shown to alias, not a shortcut), and the IoU tally against 2-channel labels;
  (b) the ProgGAN-256 generator forward time per image, its achieved GFLOP/s, and the GFLOP/s of a
      large float32 matmul (the practical limit of this machine);
  (c) the quantile sketch's memory in bytes.
It writes a JSON record (every round included) and logs a Markdown table for BENCHMARKS.md.

Command for the single-unit ablation sweep, vmapped against a loop over units (about 8 min):

  python -m experiments.benchmark --what=sweep --repeats 1 --out benchmark_sweep.json

  (`--sweep_n`, `--sweep_batch` and `--sweep_chunks 16,128` change the workload.)

Command for bfloat16 against float32 on the scene world (`--light_n` images; a few minutes):

  python -m experiments.benchmark --what=bf16 --out benchmark_bf16.json

Command for dissection against a bare generator+segmenter pass (`--parts` picks a subset):

  python -m experiments.benchmark --what=dissect --out benchmark_dissect.json

  (light) the scene world, layer4 alone and layers layer1..layer10: a jitted generator forward
      capturing the layers plus the segmenter's labels over `--light_n` images (compile excluded)
      against `dissect.dissect` over the same images, with and without compilation (the warmup
      included), and the two-pass `reference_dissect` of layer4;
  (heavy) ProgGAN-256 (LSUN sizes, random weights) with the scene segmenter on 4x average-pooled
      images, layer4 (8x8x512) upsampled to 64x64: bare pass against one-pass dissection over
      `--heavy_n` images;
  (memory) peak RSS of `python -m experiments.dissect` on layer4,layer6 for each `--memory_n`,
      each in a fresh subprocess;
  (scaling, not run by default) the same CLI on layer4 with `--devices` 1, 2, 4 (forced CPU
      devices on a CPU host, real ones elsewhere): wall time, peak RSS, and whether every
      `dissect.json` is byte-identical to the 1-device one.
`--heavy_segmenter resnet50-upernet` swaps the stand-in for a ResNet-50 UPerNet (random
weights) on the full 256x256 image with 128x128 labels.
Every part's timings repeat `--repeats` times, interleaved, and report medians; each ratio is the
median of the per-repeat ratios, and each repeat's denominator is the mean of a bare pass run
just before and one just after the timings it divides. Per-stage costs per image come from timing
each stage's jitted function alone on one batch, with images/s, each stage's share, and the
generator's and segmenter's achieved GFLOP/s (XLA's cost analysis of the compiled stage) next to
a large matmul's GFLOP/s timed in the same part. The whole run takes about 15-20 minutes on 2
shared CPU cores.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import dissect, reference, zoo
from jaxdissect.model import Segmenter
from jaxdissect.stats import iou, quantile
from jaxdissect.zsample import z_batches
from ports import proggan

_WHAT = flags.DEFINE_enum("what", "stats", ["stats", "dissect", "sweep", "bf16"],
                          "stats: statistics core vs generator; dissect: one-pass dissection vs "
                          "a bare generator+segmenter pass.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON results (default "
                           "benchmark.json, or benchmark_dissect.json with --what=dissect).")
_BATCH = flags.DEFINE_integer("batch", 32, "Images per statistics batch.")
_GEN_BATCH = flags.DEFINE_integer("gen_batch", 4, "Images per generator batch.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (after one warm-up); with "
                                "--what=stats, interleaved rounds of every stage.")
_CONCEPTS = flags.DEFINE_integer("concepts", 64, "Concepts in the IoU tally.")
_SUBSAMPLE = flags.DEFINE_integer("subsample", 4, "Pixel stride per axis for the sketch.")
_STEADY_IMAGES = flags.DEFINE_integer("steady_images", 1024,
                                      "Images fed to the sketch before its steady-state timing.")
_PARTS = flags.DEFINE_list("parts", ["light", "heavy", "memory"],
                           "With --what=dissect: the workloads to measure (light, heavy, "
                           "memory, scaling).")
_LIGHT_N = flags.DEFINE_integer("light_n", 1000, "Images of the scene-world workload.")
_LIGHT_BATCH = flags.DEFINE_integer("light_batch", 100, "Batch size of the scene-world workload.")
_HEAVY_N = flags.DEFINE_integer("heavy_n", 200, "Images of the ProgGAN-256 workload.")
_HEAVY_BATCH = flags.DEFINE_integer("heavy_batch", 10, "Batch size of the ProgGAN-256 workload.")
_SWEEP_N = flags.DEFINE_integer("sweep_n", 100, "Images of the ablation sweep benchmark.")
_SWEEP_BATCH = flags.DEFINE_integer("sweep_batch", 50, "Images per batch of the sweep benchmark.")
_SWEEP_CHUNKS = flags.DEFINE_list("sweep_chunks", ["16"], "Edits per vmapped call to time.")
_HEAVY_SEGMENTER = flags.DEFINE_string("heavy_segmenter", "pooled_scene",
                                       "pooled_scene, or a ports.semseg arch such as "
                                       "resnet50-upernet (random weights, 128x128 output).")
_HEAVY_PRECISION = flags.DEFINE_enum("heavy_precision", "highest",
                                     ["default", "high", "highest"],
                                     "Matmul precision of a ports.semseg heavy segmenter.")
_SCALING_DEVICES = flags.DEFINE_list("scaling_devices", ["1", "2", "4"],
                                     "Device counts of the scaling part.")
_SCALING_N = flags.DEFINE_integer("scaling_n", 1000, "Images of the scaling part.")
_SCALING_BATCH = flags.DEFINE_integer("scaling_batch", 100, "Batch size of the scaling part "
                                      "(a multiple of every device count).")
_MEMORY_N = flags.DEFINE_list("memory_n", ["1000", "10000"],
                              "Image counts whose dissection peak RSS is compared.")


def _once(fn, *args) -> float:
  """Wall seconds of one call of `fn(*args)`."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def timed(fn, *args, repeats: int) -> float:
  """Median wall seconds of `fn(*args)` after one warm-up call (which also compiles)."""
  jax.block_until_ready(fn(*args))
  return float(np.median([_once(fn, *args) for _ in range(repeats)]))


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
  """Statistics core against the generator, timed in interleaved rounds (one of each per round).

  The sketch is timed twice: on its first batches (nothing thinned yet) and in the steady state
  after `--steady_images` images, where a long dissection spends nearly all its time. Updates
  donate the state, as a streaming loop does; the copy that feeds each timed call is untimed.
  Each ratio is the median over rounds of that round's stats time over its generator time.
  """
  batch = _BATCH.value
  acts, labels = stats_stream(batch, jax.random.key(0))
  sketch = quantile.quantile_sketch(512)
  feed = jax.jit(sketch.update, donate_argnums=0)
  s = _SUBSAMPLE.value
  feed_sub = jax.jit(lambda st, a: sketch.update(st, a[:, ::s, ::s]), donate_argnums=0)
  copy = jax.jit(lambda st: jax.tree.map(jnp.copy, st))
  first = feed(sketch.init(), acts)  # past the very first, cheapest fill
  steady = copy(first)
  for i in range(1, max(1, _STEADY_IMAGES.value // batch)):
    steady = feed(steady, stats_stream(batch, jax.random.key(1000 + i))[0])
  tally = iou.iou_tally(512, _CONCEPTS.value)
  tally_update = jax.jit(tally.update)
  thresholds = jnp.full((512,), 1.0)
  gen = proggan.make_generator(proggan.LSUN_SIZES, jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (_GEN_BATCH.value, proggan.LSUN_SIZES[0]))
  forward = jax.jit(lambda p, z: gen.apply_fn(p, z)[0])

  def fed(update, state):
    state = jax.block_until_ready(copy(state))
    return _once(update, state, acts) / batch

  stages = {
      "generator_s_per_image": lambda: _once(forward, gen.params, z) / _GEN_BATCH.value,
      "sketch_first_s_per_image": lambda: fed(feed, first),
      "sketch_steady_s_per_image": lambda: fed(feed, steady),
      "sketch_subsampled_s_per_image": lambda: fed(feed_sub, steady),
      "iou_tally_s_per_image": lambda: _once(tally_update, tally.init(), acts, thresholds,
                                             labels) / batch,
  }
  for run in stages.values():  # compile and warm up
    run()
  rounds = [{name: run() for name, run in stages.items()} for _ in range(repeats)]
  out = {name: float(np.median([r[name] for r in rounds])) for name in stages}
  for phase in ("first", "steady"):
    out[f"stats_{phase}_x_generator"] = float(np.median(
        [(r[f"sketch_{phase}_s_per_image"] + r["iou_tally_s_per_image"])
         / r["generator_s_per_image"] for r in rounds]))
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
      **subsample_accuracy(batch, s),
  })
  return out


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


def matmul_gflop_per_s(repeats: int, size: int = 2048) -> float:
  """GFLOP/s of a large float32 matmul: the practical compute limit of this machine."""
  a = jax.random.normal(jax.random.key(2), (size, size))
  return 2 * size**3 / timed(jax.jit(lambda a: a @ a), a, repeats=repeats) / 1e9


def compiled_flops(fn, *args) -> float:
  """FLOPs of one call of `fn(*args)` by XLA's cost analysis of the compiled program."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returns one dict per program
    analysis = analysis[0]
  return float(analysis["flops"])


def markdown(r: dict) -> str:
  gen = r["generator_s_per_image"]
  sub = f"1/{r['subsample_stride']**2}"
  rows = [
      ("ProgGAN-256 forward (random weights, LSUN sizes)", gen, None),
      ("quantile sketch, every pixel, first batches", r["sketch_first_s_per_image"], None),
      (f"quantile sketch, every pixel, steady state ({r['steady_images']} images in, "
       f"shift {r['steady_shift']})", r["sketch_steady_s_per_image"], None),
      (f"quantile sketch, {sub} pixels (fixed grid), steady state",
       r["sketch_subsampled_s_per_image"], None),
      (f"IoU tally (512 units x {_CONCEPTS.value} concepts)", r["iou_tally_s_per_image"], None),
      ("**sketch (first batches) + IoU tally**",
       r["sketch_first_s_per_image"] + r["iou_tally_s_per_image"], r["stats_first_x_generator"]),
      ("**sketch (steady state) + IoU tally**",
       r["sketch_steady_s_per_image"] + r["iou_tally_s_per_image"], r["stats_steady_x_generator"]),
  ]
  lines = ["| stage | ms / image | x generator |", "|---|---:|---:|"]
  for name, t, ratio in rows:
    lines.append(f"| {name} | {t * 1e3:.1f} | {t / gen if ratio is None else ratio:.3f} |")
  lines.append("")
  lines.append(f"Medians of {len(r['rounds'])} interleaved rounds; the two bold ratios are "
               "medians of per-round ratios.")
  lines.append(f"Generator {r['generator_gflop_per_s']:.1f} GFLOP/s vs matmul "
               f"{r['matmul_gflop_per_s']:.1f} GFLOP/s = "
               f"{r['generator_gflop_per_s'] / r['matmul_gflop_per_s']:.0%} "
               f"({r['generator_gflops_per_image']:.1f} GFLOP per image); sketch memory "
               f"{r['sketch_memory_bytes'] / 2**20:.1f} MiB for 512 units.")
  lines.append(f"Rank error of the sketch vs exact quantiles of all upsampled pixels "
               f"(q in 0.5..0.999, 64 units, {4 * _BATCH.value} images): all pixels "
               f"{r['sketch_rank_error_all_pixels']:.1e}, {sub} pixels "
               f"{r['sketch_rank_error_subsampled']:.1e}.")
  return "\n".join(lines)


# Dissection against a bare generator+segmenter pass (issue 4).


def pooled_segmenter(seg: Segmenter, factor: int) -> Segmenter:
  """`seg` applied to images average-pooled `factor`x: a stand-in segmenter for large images."""

  def pool(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))

  return Segmenter(lambda p, x: seg.segment_fn(p, pool(x)), lambda p, x: seg.label_fn(p, pool(x)),
                   seg.params, seg.concepts)


def bare_forward(gen, seg, config: dissect.Config):
  """The jitted generator (capturing the config's layers) + segmenter labels, compiled."""
  forward = jax.jit(dissect.forward_fn(gen, seg, config.layers))
  jax.block_until_ready(forward(jnp.zeros((config.batch_size, config.zdim), jnp.float32)))
  return forward


def bare_pass(forward, config: dissect.Config) -> float:
  """Wall seconds of `forward` over the config's n latents, batch by batch."""
  start = time.perf_counter()
  for _, z in z_batches(config.n, config.seed, config.batch_size, config.zdim):
    jax.block_until_ready(forward(jnp.asarray(z)))
  return time.perf_counter() - start


def around_bare(forward, config: dissect.Config, measure) -> tuple[float, dict]:
  """Runs `measure() -> dict` between two bare passes (drift on a shared machine hits both
  sides); returns the bare passes' mean and the dict with both bare times added."""
  before = bare_pass(forward, config)
  sample = measure()
  after = bare_pass(forward, config)
  sample.update(bare_before_s=before, bare_after_s=after)
  return (before + after) / 2, sample


def compiled_run(gen, seg, config: dissect.Config) -> dissect.Run:
  """A prepared run whose generator and step are already compiled for the config's batch size."""
  run = dissect.prepare(gen, seg, config)
  z = jnp.zeros((config.batch_size, config.zdim), jnp.float32)
  jax.block_until_ready(run.generate(z))
  jax.block_until_ready(run.step(dissect.template_state(run), z, jnp.int32(0)))
  return run


def dissection_pass(run: dissect.Run) -> dict:
  """Seconds of a whole dissection on a compiled run, driven as `dissect.dissect` drives it."""
  times = {"warmup_s": 0.0, "tally_s": 0.0, "finish_s": 0.0, "passes": 0}
  start = time.perf_counter()
  state = dissect.start(run)
  times["warmup_s"] = time.perf_counter() - start
  while True:
    t0 = time.perf_counter()
    for first, z in dissect.remaining(run, state):
      state = run.step(state, jnp.asarray(z), jnp.int32(first))
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    results, state = dissect.finish(run, state)
    times["tally_s"] += t1 - t0
    times["finish_s"] += time.perf_counter() - t1
    times["passes"] += 1
    if results is not None:
      break
  times["total_s"] = time.perf_counter() - start
  return times


def stage_costs(gen, seg, run: dissect.Run, repeats: int) -> dict:
  """Milliseconds per image of each stage of a step, each jitted alone and timed on one batch.

  `tally` is everything the step adds to the bare pass: upsampling, binning, the per-concept
  scatter-adds and the top-k; `step` is the fused generate + segment + tally.
  """
  config, shapes = run.config, run.shapes
  batch = config.batch_size
  _, z = next(z_batches(batch, config.seed, batch, config.zdim))
  z = jnp.asarray(z)
  generate = jax.jit(lambda z: gen.apply_fn(gen.params, z, capture=config.layers))
  label = jax.jit(lambda x: seg.label_fn(seg.params, x))
  image, acts = generate(z)
  labels = label(image)
  brackets = dissect.warmup_brackets(config, shapes, [jax.device_get(acts)])
  state = dissect.init_state(config, shapes, run.num_concepts, brackets)
  tally = jax.jit(dissect.tally_fn(config, shapes, run.num_concepts))
  first = jnp.int32(0)
  ms = lambda fn, *args: timed(fn, *args, repeats=repeats) / batch * 1e3
  out = {"generator_ms": ms(generate, z), "segmenter_ms": ms(label, image),
         "tally_ms": ms(tally, state, acts, labels, first),
         "step_ms": ms(run.step, state, z, first),
         "generator_gflop": compiled_flops(generate, z) / batch / 1e9,
         "segmenter_gflop": compiled_flops(label, image) / batch / 1e9,
         "matmul_gflop_per_s": matmul_gflop_per_s(repeats)}
  for stage in ("generator", "segmenter"):
    out[f"{stage}_gflop_per_s"] = out[f"{stage}_gflop"] / out[f"{stage}_ms"] * 1e3
  return out


def _median(values) -> float:
  return float(np.median(values))


def _summary(samples: list[dict], bare: list[float]) -> dict:
  """Medians of each timing and of the per-repeat ratios to the bare pass."""
  out = {"bare_s": _median(bare), "runs": samples}
  for key in samples[0]:
    out[key] = _median([s[key] for s in samples])
  for key in ("total_s", "tally_s", "with_compile_s", "reference_s"):
    if key in samples[0]:
      out[key[:-2] + "_ratio"] = _median([s[key] / b for s, b in zip(samples, bare)])
  return out


def bench_light(repeats: int) -> dict:
  """Scene world, layer4 and all ten layers: bare pass vs one-pass (and two-pass) dissection."""
  world = zoo.load_world("sceneworld")
  gen, seg = world.generator, world.segmenter
  workloads = {"layer4": ("layer4",), "all": tuple(gen.layers[:-1])}
  configs = {name: dissect.Config(layers, _LIGHT_N.value, world.zdim,
                                  batch_size=_LIGHT_BATCH.value)
             for name, layers in workloads.items()}
  forwards = {name: bare_forward(gen, seg, c) for name, c in configs.items()}
  runs = {name: compiled_run(gen, seg, c) for name, c in configs.items()}
  bare = {name: [] for name in workloads}
  samples = {name: [] for name in workloads}
  c4 = configs["layer4"]

  def measure(name: str, config: dissect.Config) -> dict:
    sample = dissection_pass(runs[name])
    start = time.perf_counter()
    dissect.dissect(gen, seg, config)  # builds and compiles its own functions
    sample["with_compile_s"] = time.perf_counter() - start
    if name == "layer4":
      start = time.perf_counter()
      reference.reference_dissect(gen, seg, "layer4", n=c4.n, batch_size=c4.batch_size,
                                  seed=c4.seed, q=c4.threshold, zdim=c4.zdim)
      sample["reference_s"] = time.perf_counter() - start
    return sample

  for r in range(repeats):
    for name, config in configs.items():
      mean, sample = around_bare(forwards[name], config, functools.partial(measure, name, config))
      bare[name].append(mean)
      samples[name].append(sample)
      logging.info("light %s repeat %d: bare %.2f s, %s", name, r + 1, bare[name][-1],
                   {k: round(v, 2) for k, v in sample.items()})
  out = {"n": _LIGHT_N.value, "batch": _LIGHT_BATCH.value}
  for name in workloads:
    out[name] = {"layers": list(workloads[name]), **_summary(samples[name], bare[name]),
                 **stage_costs(gen, seg, runs[name], repeats)}
  return out


def heavy_segmenter(kind: str) -> Segmenter:
  """The heavy workload's segmenter: the scene segmenter on 4x pooled images (64x64 labels), or
  an ADE20K-format port (`ports.semseg` arch, random weights) on the full 256x256 image with
  128x128 output, the original's segmentation resolution for 256px GANs."""
  if kind == "pooled_scene":
    return pooled_segmenter(zoo.load_segmenter("sceneworld"), 4)
  from ports import semseg  # pylint: disable=g-import-not-at-top
  params = semseg.network(kind).init(jax.random.key(1), jnp.zeros((1, 64, 64, 3)))["params"]
  return semseg.make_segmenter(params, kind, seg_size=(128, 128),
                               precision=_HEAVY_PRECISION.value)


def bench_heavy(repeats: int) -> dict:
  """ProgGAN-256 layer4 with the `--heavy_segmenter`: bare pass vs one-pass dissection."""
  gen = proggan.make_generator(proggan.LSUN_SIZES, jax.random.key(0))
  seg = heavy_segmenter(_HEAVY_SEGMENTER.value)
  config = dissect.Config(("layer4",), _HEAVY_N.value, proggan.LSUN_SIZES[0],
                          batch_size=_HEAVY_BATCH.value)
  forward = bare_forward(gen, seg, config)
  start = time.perf_counter()
  run = compiled_run(gen, seg, config)
  compile_s = time.perf_counter() - start
  bare, samples = [], []
  for r in range(repeats):
    mean, sample = around_bare(forward, config, lambda: dissection_pass(run))
    bare.append(mean)
    samples.append(sample)
    logging.info("heavy repeat %d: bare %.2f s, %s", r + 1, bare[-1],
                 {k: round(v, 2) for k, v in samples[-1].items()})
  out = {"n": config.n, "batch": config.batch_size, "warmup": config.warmup,
         "segmenter": _HEAVY_SEGMENTER.value, "precision": _HEAVY_PRECISION.value,
         "compile_s": compile_s, **_summary(samples, bare),
         **stage_costs(gen, seg, run, repeats)}
  # At n images the warmup (a fixed `warmup` images) is amortised over more tallied images.
  big = 10000
  per_image = [(s["tally_s"] / config.n, s["warmup_s"] + s["finish_s"]) for s in samples]
  out["projected_n"] = big
  out["projected_ratio"] = _median([(p * big + fixed) / (b / config.n * big)
                                    for (p, fixed), b in zip(per_image, bare)])
  return out


# Runs argv[1:] with stdout discarded and prints its peak RSS in KiB; exits with its status.
_RSS_LAUNCHER = ("import os, subprocess, sys; "
                 "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
                 "_, status, usage = os.wait4(p.pid, 0); print(usage.ru_maxrss); "
                 "sys.exit(os.waitstatus_to_exitcode(status))")


def peak_rss(cmd: list[str], cwd: str, env: dict | None = None) -> tuple[int, float]:
  """Peak resident set size in bytes and wall seconds of a process running `cmd`.

  Linux carries a process's RSS high-water mark across exec, so a child started straight from
  this (large) process would report at least this process's RSS. A small launcher process starts
  the child and reads its own peak with `os.wait4` (RUSAGE_CHILDREN would give the largest of
  all children waited for so far).
  """
  with tempfile.TemporaryFile() as err:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RSS_LAUNCHER, *cmd], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=err, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode:
      err.seek(0)
      tail = err.read().decode(errors="replace")[-2000:]
      raise RuntimeError(f"{' '.join(cmd)} exited with status {proc.returncode}:\n{tail}")
  return int(proc.stdout.split()[-1]) * 1024, seconds  # ru_maxrss is in KiB on Linux


def bench_memory() -> dict:
  """Peak RSS of a two-layer scene-world dissection for each --memory_n, each in a fresh process."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = {"commands": [], "peak_rss_bytes": [], "wall_s": [], "n": []}
  for n in (int(v) for v in _MEMORY_N.value):
    with tempfile.TemporaryDirectory() as outdir:
      cmd = [sys.executable, "-m", "experiments.dissect", "--quiet", "--images=false",
             "--outdir", outdir, "--layers", "layer4,layer6", "--n", str(n), "--fresh"]
      rss, seconds = peak_rss(cmd, root)
    logging.info("memory n=%d: peak RSS %.0f MiB, %.0f s", n, rss / 2**20, seconds)
    out["commands"].append(" ".join(["python"] + cmd[1:6] + ["TMP"] + cmd[7:]))
    for key, value in (("n", n), ("peak_rss_bytes", rss), ("wall_s", seconds)):
      out[key].append(value)
  out["ratio"] = out["peak_rss_bytes"][-1] / out["peak_rss_bytes"][0]
  return out


def bench_scaling() -> dict:
  """`python -m experiments.dissect` of the scene world on 1, 2, 4... devices, each in a fresh
  process: wall time, peak RSS and whether `dissect.json` is byte-identical to the 1-device one.

  On a CPU host the devices are forced (`--xla_force_host_platform_device_count`): they share
  the same cores, so this shows correctness and overhead, not speed-up; on a GPU/TPU host the
  real local devices are used.
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  counts = [int(v) for v in _SCALING_DEVICES.value]
  env = dict(os.environ)
  if jax.default_backend() == "cpu":
    env.update(JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={max(counts)}".strip())
  elif max(counts) > jax.local_device_count():
    raise app.UsageError(f"--scaling_devices {counts}: this host has "
                         f"{jax.local_device_count()} devices")
  batch = _SCALING_BATCH.value
  out = {"n": _SCALING_N.value, "batch": batch, "forced_cpu": jax.default_backend() == "cpu",
         "devices": [], "wall_s": [], "peak_rss_bytes": [], "identical_to_first": []}
  args = ["--quiet", "--images=false", "--layers", "layer4", "--n", str(_SCALING_N.value),
          "--batch_size", str(batch), "--forward_chunk", str(batch // max(counts)), "--fresh"]
  out["command"] = " ".join(["python -m experiments.dissect --outdir TMP", *args])
  with tempfile.TemporaryDirectory() as tmp:
    first = None
    for count in counts:
      outdir = os.path.join(tmp, str(count))
      cmd = [sys.executable, "-m", "experiments.dissect", "--outdir", outdir, *args,
             "--devices", str(count)]
      rss, seconds = peak_rss(cmd, root, env)
      with open(os.path.join(outdir, "dissect.json"), "rb") as f:
        written = f.read()
      first = written if first is None else first
      logging.info("scaling: %d device(s) %.1f s, peak RSS %.0f MiB, identical: %s", count,
                   seconds, rss / 2**20, written == first)
      for key, value in (("devices", count), ("wall_s", seconds), ("peak_rss_bytes", rss),
                         ("identical_to_first", written == first)):
        out[key].append(value)
  return out


def bench_dissect(repeats: int, path: str, header: dict) -> dict:
  """Runs the parts named by --parts, writing the JSON record to `path` after each."""
  parts = {"light": lambda: bench_light(repeats), "heavy": lambda: bench_heavy(repeats),
           "memory": bench_memory, "scaling": bench_scaling}
  for part in _PARTS.value:
    if part not in parts:
      raise app.UsageError(f"--parts: unknown part {part!r}; valid parts are {list(parts)}")
  result = {"repeats": repeats}
  for part in _PARTS.value:
    start = time.perf_counter()
    result[part] = parts[part]()
    logging.info("%s part done in %.0f s", part, time.perf_counter() - start)
    with open(path, "w") as f:
      json.dump({**header, **result}, f, indent=2)
  return result


def dissect_markdown(r: dict) -> str:
  """Markdown tables of the dissection benchmark for BENCHMARKS.md."""
  lines = []
  if "light" in r:
    light = r["light"]
    lines += [f"Light: scene world, n={light['n']}, batch {light['batch']} "
              f"(medians of {r['repeats']} repeats; ratio = median of per-repeat ratios).", "",
              "| layers | bare gen+seg (s) | one-pass, compile excluded (s) | x bare "
              "| one-pass incl. compile (s) | x bare | passes |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("layer4", "all"):
      w = light[name]
      lines.append(f"| {name} | {w['bare_s']:.2f} | {w['total_s']:.2f} | {w['total_ratio']:.1f} "
                   f"| {w['with_compile_s']:.2f} | {w['with_compile_ratio']:.1f} "
                   f"| {w['passes']:.0f} |")
    w = light["layer4"]
    lines += ["", f"Two-pass reference, layer4 (compile included): {w['reference_s']:.2f} s = "
              f"{w['reference_ratio']:.1f}x the bare pass.", ""]
  heavy = r.get("heavy")
  if heavy:
    lines += [f"Heavy: ProgGAN-256 layer4, segmenter {heavy['segmenter']} "
              f"({heavy['precision']} precision), n={heavy['n']}, "
              f"batch {heavy['batch']}, warmup {heavy['warmup']} images.", "",
              "| bare gen+seg (s) | one-pass, compile excluded (s) | x bare | passes "
              f"| tally passes (s) | x bare | each pass x bare "
              f"| projected x bare at n={heavy['projected_n']} |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {heavy['bare_s']:.1f} | {heavy['total_s']:.1f} | {heavy['total_ratio']:.2f} | "
              f"{heavy['passes']:.0f} | {heavy['tally_s']:.1f} | {heavy['tally_ratio']:.2f} | "
              f"{heavy['tally_ratio'] / heavy['passes']:.2f} | "
              f"{heavy['projected_ratio']:.2f} |", ""]
  rows = [(f"scene {name}", r["light"][name], r["light"]["n"])
          for name in ("layer4", "all") if "light" in r]
  rows += [("ProgGAN-256 layer4", heavy, heavy["n"])] if heavy else []
  if rows:
    lines += stage_markdown(rows)
  if "memory" in r:
    m = r["memory"]
    lines += ["| n | peak RSS (MiB) | wall (s) |", "|---:|---:|---:|"]
    for n, rss, s in zip(m["n"], m["peak_rss_bytes"], m["wall_s"]):
      lines.append(f"| {n} | {rss / 2**20:.0f} | {s:.0f} |")
    lines.append(f"\nPeak RSS ratio n={m['n'][-1]} / n={m['n'][0]}: {m['ratio']:.3f}\n")
  if "scaling" in r:
    c = r["scaling"]
    kind = "forced CPU devices on the same cores" if c["forced_cpu"] else "local devices"
    lines += [f"Device scaling ({kind}): `{c['command']}` with --devices D", "",
              "| devices | wall (s) | peak RSS (MiB) | dissect.json identical to 1 device |",
              "|---:|---:|---:|---|"]
    for d, sec, rss, same in zip(c["devices"], c["wall_s"], c["peak_rss_bytes"],
                                 c["identical_to_first"]):
      lines.append(f"| {d} | {sec:.1f} | {rss / 2**20:.0f} | {'yes' if same else 'NO'} |")
  return "\n".join(lines)


def stage_markdown(rows: list[tuple[str, dict, int]]) -> list[str]:
  """Per-stage tables: cost, images/s and share, and achieved GFLOP/s against the matmul's."""
  lines = ["Per-image stage costs, each stage jitted alone on one batch; share = of the sum of "
           "generator, segmenter, tally, warmup / n and finish / n:", "",
           "| workload | stage | ms / image | images/s | share |", "|---|---|---:|---:|---:|"]
  for name, w, n in rows:
    costs = {"generator": w["generator_ms"], "segmenter": w["segmenter_ms"],
             "tally": w["tally_ms"], "warmup / n": w["warmup_s"] / n * 1e3,
             "finish / n": w["finish_s"] / n * 1e3}
    total = sum(costs.values())
    for stage, ms in costs.items():
      lines.append(f"| {name} | {stage} | {ms:.2f} | {1e3 / ms:.1f} | {ms / total:.1%} |")
    lines.append(f"| {name} | fused step (gen+seg+tally) | {w['step_ms']:.2f} | "
                 f"{1e3 / w['step_ms']:.1f} | - |")
  lines += ["", "Achieved GFLOP/s (XLA cost analysis of each compiled stage) against a 2048x2048 "
            "float32 matmul timed in the same part:", "",
            "| workload | generator GFLOP / image | GFLOP/s | segmenter GFLOP / image | GFLOP/s "
            "| matmul GFLOP/s | generator / matmul | segmenter / matmul |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name, w, _ in rows:
    mm = w["matmul_gflop_per_s"]
    lines.append(f"| {name} | {w['generator_gflop']:.2f} | {w['generator_gflop_per_s']:.1f} | "
                 f"{w['segmenter_gflop']:.2f} | {w['segmenter_gflop_per_s']:.1f} | {mm:.1f} | "
                 f"{w['generator_gflop_per_s'] / mm:.0%} | {w['segmenter_gflop_per_s'] / mm:.0%} |")
  return lines + [""]


def bench_sweep(repeats: int, n: int, chunks: list[int], batch_size: int) -> dict:
  """All single-unit ablations of the scene GAN's layer4 (128 units) on n images: the vmapped
  sweep (each of `chunks` edits per call) against a Python loop over units of the same jitted
  function (one edit per call), compile excluded (each is run once on one batch first). Also the
  largest difference between the vmapped and the looped effects."""
  from jaxdissect import causal, zoo  # pylint: disable=g-import-not-at-top
  world = zoo.load_world("sceneworld")
  args = dict(n=n, batch_size=batch_size, seed=2, zdim=world.zdim)
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
  med = {k: float(np.median(v)) for k, v in times.items()}
  speedup = {k: float(np.median([loop / t for loop, t in zip(times["loop"], times[k])]))
             for k in runs if k != "loop"}
  diff = {k: float(np.max(np.abs(deltas[k] - deltas["loop"]))) for k in runs if k != "loop"}
  return {"sweep": {"n": n, "batch_size": batch_size, "units": 128, "seconds": med,
                    "runs": times, "speedup": speedup, "max_abs_delta_difference": diff}}


def bench_bf16(n: int, batch_size: int) -> dict:
  """The scene world dissected (all layers, q=0.01) with generator and segmenter in float32 and
  in bfloat16 (statistics in float32 either way): IoU differences of the units interpretable
  (IoU > 0.04) in float32, label agreement, and the wall time of each (compile included)."""
  from jaxdissect import precision  # pylint: disable=g-import-not-at-top
  world = zoo.load_world("sceneworld")
  config = dissect.Config(world.generator.layers, n, world.zdim, batch_size=batch_size)
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


def main(argv):
  del argv
  repeats = _REPEATS.value
  logging.info("devices: %s", jax.devices())
  result = {"machine": platform.processor() or platform.machine(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()], "date": time.strftime("%Y-%m-%d")}
  if _WHAT.value == "sweep":
    result.update(bench_sweep(repeats, _SWEEP_N.value, [int(c) for c in _SWEEP_CHUNKS.value],
                              _SWEEP_BATCH.value))
    with open(_OUT.value or "benchmark_sweep.json", "w") as f:
      json.dump(result, f, indent=2)
    sweep = result["sweep"]
    logging.info("single-unit ablation sweep, scene GAN layer4 (128 units), %d images: %s s; "
                 "speedup over the loop %s; max |delta difference| %s", sweep["n"],
                 sweep["seconds"], sweep["speedup"], sweep["max_abs_delta_difference"])
    return
  if _WHAT.value == "bf16":
    result.update(bench_bf16(_LIGHT_N.value, _LIGHT_BATCH.value))
    with open(_OUT.value or "benchmark_bf16.json", "w") as f:
      json.dump(result, f, indent=2)
    r = result["bf16"]
    logging.info("bfloat16 vs float32 on the scene world, %d images: max |delta IoU| %.4f over "
                 "%d interpretable units, %d keep their label; %s", r["n"], r["max_abs_delta_iou"],
                 r["interpretable"], r["same_label"], r["seconds"])
    return
  if _WHAT.value == "dissect":
    result["cpus"] = os.cpu_count()
    result.update(bench_dissect(repeats, _OUT.value or "benchmark_dissect.json", result))
    logging.info("\n%s", dissect_markdown(result))
    return
  result.update(bench_stats(repeats))
  with open(_OUT.value or "benchmark.json", "w") as f:
    json.dump(result, f, indent=2)
  logging.info("\n%s", markdown(result))


if __name__ == "__main__":
  app.run(main)
