"""The heavy dissection part: one-pass dissection's overhead on a generator of realistic cost.

ProgGAN-256 (LSUN sizes, random weights) with the scene segmenter on 4x average-pooled images,
layer4 (8x8x512) upsampled to 64x64: bare pass against one-pass dissection over `n` images. A
`segmenter` named by a `ports.semseg` arch such as `resnet50-upernet` swaps the stand-in for that
network (random weights) on the full 256x256 image with 128x128 labels.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from experiments.benchmarks import dissect_pass
from experiments.benchmarks.common import median
from jaxdissect import dissect, zoo
from jaxdissect.model import Segmenter
from ports import proggan


def pooled_segmenter(seg: Segmenter, factor: int) -> Segmenter:
  """`seg` applied to images average-pooled `factor`x: a stand-in segmenter for large images."""

  def pool(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))

  return Segmenter(lambda p, x: seg.segment_fn(p, pool(x)), lambda p, x: seg.label_fn(p, pool(x)),
                   seg.params, seg.concepts)


def heavy_segmenter(kind: str, precision: str) -> Segmenter:
  """The heavy workload's segmenter: the scene segmenter on 4x pooled images (64x64 labels), or
  an ADE20K-format port (`ports.semseg` arch, random weights) on the full 256x256 image with
  128x128 output, the original's segmentation resolution for 256px GANs."""
  if kind == "pooled_scene":
    return pooled_segmenter(zoo.load_segmenter("sceneworld"), 4)
  from ports import semseg  # pylint: disable=g-import-not-at-top
  params = semseg.network(kind).init(jax.random.key(1), jnp.zeros((1, 64, 64, 3)))["params"]
  return semseg.make_segmenter(params, kind, seg_size=(128, 128), precision=precision)


def bench_heavy(repeats: int, n: int, batch: int, segmenter: str, precision: str) -> dict:
  """ProgGAN-256 layer4 with the `segmenter`: bare pass vs one-pass dissection."""
  gen = proggan.make_generator(proggan.LSUN_SIZES, jax.random.key(0))
  seg = heavy_segmenter(segmenter, precision)
  config = dissect.Config(("layer4",), n, batch_size=batch)
  forward = dissect_pass.bare_forward(gen, seg, config)
  start = time.perf_counter()
  run = dissect_pass.compiled_run(gen, seg, config)
  compile_s = time.perf_counter() - start
  bare, samples = [], []
  for r in range(repeats):
    dissect_pass.repeat_around_bare(forward, config, lambda: dissect_pass.dissection_pass(run),
                                    bare, samples, "heavy", r)
  out = {"n": config.n, "batch": config.batch_size, "warmup": config.warmup,
         "segmenter": segmenter, "precision": precision,
         "compile_s": compile_s, **dissect_pass.summary(samples, bare),
         **dissect_pass.stage_costs(gen, seg, run, repeats)}
  # The pass tallies the images the warmup did not (it tallies its own when it keeps them);
  # at n images the warmup and finish (fixed) are amortised over more tallied images.
  big = 10000
  per_image = [(s["tally_s"] / (config.n - s.get("warmup_images", 0)),
                s["warmup_s"] + s["finish_s"], s.get("warmup_images", 0)) for s in samples]
  out["pass_ratio_per_image"] = median([p / (b / config.n) for (p, _, _), b in
                                        zip(per_image, bare)])
  out["projected_n"] = big
  out["projected_ratio"] = median([(p * (big - w) + fixed) / (b / config.n * big)
                                   for (p, fixed, w), b in zip(per_image, bare)])
  return out
