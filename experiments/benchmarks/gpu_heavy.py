"""The GPU heavy part: a dissection whose models do not fit a device at the batch asked for.

ProgGAN-256 layer4 (LSUN sizes, random weights) with a ResNet-50 UPerNet (random weights) on the
full 256x256 image with 128x128 labels, at `--heavy_batch` images per batch and
`forward_chunk=-1`: `jaxdissect.fit` picks the images per model call from XLA's memory analysis
(at batch 100 the whole batch would ask an H100 for ~163 GiB). It records the device, the batch,
the chosen chunk with XLA's planned bytes and the budget, the device's measured peak, and the
wall seconds of each stage: prepare (shapes and the fit's trial compiles), compile (generator
and step, each also run once on a batch: a GPU's second or so, a CPU's half minute), warmup,
tally passes, finish, and the total including all of them.

One command on a GPU machine (a few minutes on one H100 by a FLOP estimate, not yet timed: 137
GFLOP per image, trial compiles included; writes benchmark_gpu_heavy.json and
benchmark_gpu_heavy.md, and logs the table):

  python -m experiments.benchmark --what=dissect --parts gpu_heavy --heavy_n 10000 \
      --heavy_batch 100 --out benchmark_gpu_heavy.json

A CPU smoke test (about 2 minutes on 2 cores; CPUs report no memory limit, so a budget is given:
XLA planned 1.8 GiB for the batch of 20 in one call and the fit split it into calls of 5;
without the budget the whole batch goes in one call):

  python -m experiments.benchmark --what=dissect --parts gpu_heavy --heavy_n 20 \
      --heavy_batch 20 --heavy_memory_budget_gib 1.2 --out /tmp/benchmark_gpu_heavy.json
"""

from __future__ import annotations

import time

import jax

from experiments.benchmarks import dissect_heavy, dissect_pass
from jaxdissect import dissect
from ports import proggan

SEGMENTER = "resnet50-upernet"


def _memory(device: jax.Device) -> dict:
  """The allocator's limit and peak of `device` ({} where it reports none, as CPUs)."""
  stats = device.memory_stats() or {}
  return {k: int(stats[k]) for k in ("bytes_limit", "peak_bytes_in_use") if k in stats}


def bench_gpu_heavy(n: int, batch: int, precision: str, budget: int | None = None) -> dict:
  """One dissection of ProgGAN-256 layer4 with the UPerNet, the forward chunk chosen to fit
  `budget` bytes (None: the device's limit, `jaxdissect.fit.device_budget`), stage by stage."""
  gen = proggan.make_generator(proggan.LSUN_SIZES, jax.random.key(0))
  seg = dissect_heavy.heavy_segmenter(SEGMENTER, precision)
  config = dissect.Config(("layer4",), n, batch_size=batch, forward_chunk=dissect.AUTO_CHUNK,
                          memory_budget=budget)
  start = time.perf_counter()
  run = dissect.prepare(gen, seg, config)
  prepared = time.perf_counter()
  dissect_pass.compile_prepared(run)
  compiled = time.perf_counter()
  times = dissect_pass.dissection_pass(run)
  total = time.perf_counter() - start
  device = run.mesh.devices.flat[0]
  share = batch // run.mesh.devices.size
  fitted = run.fitted
  return {"device": device.device_kind, "platform": device.platform,
          "devices": run.mesh.devices.size, "n": n, "batch": batch, "share": share,
          "segmenter": SEGMENTER, "precision": precision, "warmup": min(n, config.warmup),
          "chunk": run.forward_chunk or share, "fitted": fitted is not None,
          "budget_bytes": fitted.budget if fitted else None,
          "planned_bytes": fitted.bytes if fitted else None,
          "tried": {str(c): b for c, b in fitted.tried.items()} if fitted else {},
          "prepare_s": prepared - start, "compile_s": compiled - prepared,
          **times, "total_with_compile_s": total,
          "images_per_s": n * times["passes"] / times["tally_s"], **_memory(device)}


def markdown(r: dict) -> list[str]:
  """The table of a `bench_gpu_heavy` record."""
  gib = lambda b: "-" if b is None else "compile failed" if b < 0 else f"{b / 2**30:.1f}"
  tried = ", ".join(f"{c}: {gib(b)}" for c, b in r["tried"].items()) or "none (no budget)"
  title = (f"GPU heavy: ProgGAN-256 layer4 + {r['segmenter']} (random weights, {r['precision']} "
           f"precision), 256px images, 128x128 labels, n={r['n']}, batch {r['batch']} "
           f"({r['share']} per device), warmup {r['warmup']}, on {r['devices']} x {r['device']}.")
  header = ("| images per call (auto) | XLA plan (GiB) | budget (GiB) | device peak (GiB) "
            "| prepare + fit (s) | compile + a batch (s) | warmup (s) | tally (s) | passes "
            "| finish (s) | total incl. compile (s) | images/s (tally) |")
  row = (f"| {r['chunk']} | {gib(r['planned_bytes'])} | {gib(r['budget_bytes'])} | "
         f"{gib(r.get('peak_bytes_in_use'))} | {r['prepare_s']:.1f} | {r['compile_s']:.1f} | "
         f"{r['warmup_s']:.1f} | {r['tally_s']:.1f} | {r['passes']} | {r['finish_s']:.1f} | "
         f"{r['total_with_compile_s']:.1f} | {r['images_per_s']:.1f} |")
  return ["", title, "", header, "|---:" * 12 + "|", row, "",
          f"XLA's plan per images-per-call size tried (GiB): {tried}.", ""]
