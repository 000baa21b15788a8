"""Benchmarks of the statistics core, the ProgGAN-256 generator and one-pass dissection.

Command for the statistics core (about 4 minutes on 2 CPU cores):

  python -m experiments.benchmark --repeats 7 --out benchmark.json

It times the statistics update (quantile sketch and IoU tally) against the ProgGAN-256 forward in
interleaved rounds, writes a JSON record (every round included) and logs a Markdown table for
BENCHMARKS.md; `experiments/benchmarks/stats.py` says what it measures.

Command for the single-unit ablation sweep, vmapped against a loop over units (about 8 min):

  python -m experiments.benchmark --what=sweep --repeats 1 --out benchmark_sweep.json

  (`--sweep_n`, `--sweep_batch` and `--sweep_chunks 16,128` change the workload.)

Command for bfloat16 against float32 on the scene world (`--light_n` images; a few minutes):

  python -m experiments.benchmark --what=bf16 --out benchmark_bf16.json

Command for one training step of the scene ProgGAN against the scene StyleGAN2 (a minute or two):

  python -m experiments.benchmark --what=train --repeats 5 --out benchmark_train.json

Command for dissection against a bare generator+segmenter pass (`--parts` picks a subset):

  python -m experiments.benchmark --what=dissect --out benchmark_dissect.json

  (light) the scene world, layer4 alone and layers layer1..layer10, over `--light_n` images;
  (heavy) ProgGAN-256 layer4 with the `--heavy_segmenter`, over `--heavy_n` images;
  (memory) peak RSS of `python -m experiments.dissect` for each `--memory_n`;
  (scaling, not run by default) the same CLI on each of `--scaling_devices` devices.
`--heavy_segmenter resnet50-upernet` swaps the stand-in for a ResNet-50 UPerNet (random
weights) on the full 256x256 image with 128x128 labels. Each part's module in
`experiments/benchmarks/` says what it measures, and `dissect_pass.py` how the timings repeat and
what the ratios divide. The whole run takes about 15-20 minutes on 2 shared CPU cores.

Commands for the ProgGAN-256 parts of issue 15 (not run by default: the generator alone costs
about 0.3 s per image on 2 CPU cores, so they take very roughly 25 and 50 minutes):

  python -m experiments.benchmark --what=dissect --parts proggan_memory --out proggan_memory.json
  python -m experiments.benchmark --what=dissect --parts versus_original --out versus.json

  (proggan_memory) peak RSS of a ProgGAN-256 layer4 dissection (128x128 labels from the
  `--proggan_segmenter` stand-in) in a fresh process for each `--proggan_memory_n`, against
  the 1.5 GB target;
  (versus_original) the original's default job (layer4, `--versus_n` images, unit images on)
  with IQR and with quantile thresholds, each in a fresh process: wall time and peak RSS against
  the original's figures quoted in issue 15, and against a bare generator+segmenter floor.
`--proggan_batch` and `--proggan_warmup` (0: the library's defaults) change both; a smoke test:
`--proggan_memory_n 20,40 --versus_n 20 --proggan_batch 10 --proggan_warmup 10`.

Command for the GPU check of the automatic forward chunk (issue 15; not run by default):

  python -m experiments.benchmark --what=dissect --parts gpu_heavy --heavy_n 10000 \
      --heavy_batch 100 --out benchmark_gpu_heavy.json

  (gpu_heavy) ProgGAN-256 layer4 with a ResNet-50 UPerNet at batch 100, `--forward_chunk=-1`:
  the chosen images per call and each stage's wall time; `experiments/benchmarks/gpu_heavy.py`
  has its CPU smoke test (`--heavy_memory_budget_gib` forces a split where no limit is known).
With --what=dissect the Markdown tables are also written next to the JSON (`.md`).

This script holds the flags and runs what they pick; the benchmarks take plain arguments.
"""

from __future__ import annotations

import json
import os
import platform
import time

from absl import app, flags, logging
import jax

from experiments.benchmarks import (bf16, dissect_heavy, dissect_light, dissect_memory,
                                    dissect_scaling, gpu_heavy, markdown, proggan_memory, stats,
                                    sweep, train_step, versus_original)

_WHAT = flags.DEFINE_enum("what", "stats", ["stats", "dissect", "sweep", "bf16", "train"],
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
                           "memory, scaling, proggan_memory, versus_original, gpu_heavy).")
_LIGHT_N = flags.DEFINE_integer("light_n", 1000, "Images of the scene-world workload.")
_LIGHT_BATCH = flags.DEFINE_integer("light_batch", 100, "Batch size of the scene-world workload.")
_HEAVY_N = flags.DEFINE_integer("heavy_n", 200, "Images of the ProgGAN-256 workload.")
_HEAVY_BATCH = flags.DEFINE_integer("heavy_batch", 10, "Batch size of the ProgGAN-256 workload.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20, "Steps per round of --what=train.")
_SWEEP_N = flags.DEFINE_integer("sweep_n", 100, "Images of the ablation sweep benchmark.")
_SWEEP_BATCH = flags.DEFINE_integer("sweep_batch", 50, "Images per batch of the sweep benchmark.")
_SWEEP_CHUNKS = flags.DEFINE_list("sweep_chunks", ["16"], "Edits per vmapped call to time.")
_HEAVY_SEGMENTER = flags.DEFINE_string("heavy_segmenter", "pooled_scene",
                                       "pooled_scene, or a ports.semseg arch such as "
                                       "resnet50-upernet (random weights, 128x128 output).")
_HEAVY_PRECISION = flags.DEFINE_enum("heavy_precision", "highest",
                                     ["default", "high", "highest"],
                                     "Matmul precision of a ports.semseg heavy segmenter.")
_HEAVY_BUDGET = flags.DEFINE_float("heavy_memory_budget_gib", 0, "gpu_heavy part: device memory "
                                   "(GiB) the forward chunk must fit (0: the device's limit).")
_SCALING_DEVICES = flags.DEFINE_list("scaling_devices", ["1", "2", "4"],
                                     "Device counts of the scaling part.")
_SCALING_N = flags.DEFINE_integer("scaling_n", 1000, "Images of the scaling part.")
_SCALING_BATCH = flags.DEFINE_integer("scaling_batch", 100, "Batch size of the scaling part "
                                      "(a multiple of every device count).")
_MEMORY_N = flags.DEFINE_list("memory_n", ["1000", "10000"],
                              "Image counts whose dissection peak RSS is compared.")
_PROGGAN_MEMORY_N = flags.DEFINE_list("proggan_memory_n", ["500", "1000"],
                                      "Image counts of the proggan_memory part.")
_VERSUS_N = flags.DEFINE_integer("versus_n", 1000, "Images of the versus_original part.")
_PROGGAN_SEGMENTER = flags.DEFINE_string("proggan_segmenter", "pooled_scene",
                                         "Stand-in segmenter of the ProgGAN parts (128x128 "
                                         "labels): pooled_scene or a ports.semseg arch.")
_PROGGAN_BATCH = flags.DEFINE_integer("proggan_batch", 0, "Batch size of the ProgGAN parts "
                                      "(0: the library's default).")
_PROGGAN_WARMUP = flags.DEFINE_integer("proggan_warmup", 0, "Warmup images of the ProgGAN parts "
                                       "(0: the library's default).")


def _write(path: str, record: dict) -> None:
  with open(path, "w") as f:
    json.dump(record, f, indent=2)


def bench_dissect(repeats: int, path: str, header: dict) -> dict:
  """Runs the parts named by --parts, writing the JSON record to `path` after each."""
  parts = {
      "light": lambda: dissect_light.bench_light(repeats, _LIGHT_N.value, _LIGHT_BATCH.value),
      "heavy": lambda: dissect_heavy.bench_heavy(repeats, _HEAVY_N.value, _HEAVY_BATCH.value,
                                                 _HEAVY_SEGMENTER.value, _HEAVY_PRECISION.value),
      "memory": lambda: dissect_memory.bench_memory([int(v) for v in _MEMORY_N.value]),
      "scaling": lambda: dissect_scaling.bench_scaling([int(v) for v in _SCALING_DEVICES.value],
                                                       _SCALING_N.value, _SCALING_BATCH.value),
      "proggan_memory": lambda: proggan_memory.bench_proggan_memory(
          [int(v) for v in _PROGGAN_MEMORY_N.value], _PROGGAN_SEGMENTER.value,
          _PROGGAN_BATCH.value, _PROGGAN_WARMUP.value),
      "versus_original": lambda: versus_original.bench_versus(
          _VERSUS_N.value, _PROGGAN_SEGMENTER.value, _PROGGAN_BATCH.value,
          _PROGGAN_WARMUP.value),
      "gpu_heavy": lambda: gpu_heavy.bench_gpu_heavy(
          _HEAVY_N.value, _HEAVY_BATCH.value, _HEAVY_PRECISION.value,
          int(_HEAVY_BUDGET.value * 2**30) or None),
  }
  for part in _PARTS.value:
    if part not in parts:
      raise app.UsageError(f"--parts: unknown part {part!r}; valid parts are {list(parts)}")
  result = {"repeats": repeats}
  for part in _PARTS.value:
    start = time.perf_counter()
    result[part] = parts[part]()
    logging.info("%s part done in %.0f s", part, time.perf_counter() - start)
    _write(path, {**header, **result})
  return result


def main(argv):
  del argv
  repeats = _REPEATS.value
  logging.info("devices: %s", jax.devices())
  result = {"machine": platform.processor() or platform.machine(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()], "date": time.strftime("%Y-%m-%d")}
  if _WHAT.value == "dissect":
    result["cpus"] = os.cpu_count()
    path = _OUT.value or "benchmark_dissect.json"
    result.update(bench_dissect(repeats, path, result))
    text = markdown.dissect_markdown(result)
    if "gpu_heavy" in result:
      text += "\n".join(gpu_heavy.markdown(result["gpu_heavy"]))
    logging.info("\n%s", text)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
      f.write(text + "\n")
    return
  # --what: (default --out, the benchmark, how its result is logged).
  benches = {
      "stats": ("benchmark.json",
                lambda: stats.bench_stats(repeats, _BATCH.value, _GEN_BATCH.value,
                                          _CONCEPTS.value, _SUBSAMPLE.value,
                                          _STEADY_IMAGES.value),
                lambda r: logging.info("\n%s", markdown.stats_markdown(r, _CONCEPTS.value,
                                                                       _BATCH.value))),
      "sweep": ("benchmark_sweep.json",
                lambda: sweep.bench_sweep(repeats, _SWEEP_N.value,
                                          [int(c) for c in _SWEEP_CHUNKS.value],
                                          _SWEEP_BATCH.value),
                lambda r: sweep.log_summary(r["sweep"])),
      "bf16": ("benchmark_bf16.json", lambda: bf16.bench_bf16(_LIGHT_N.value, _LIGHT_BATCH.value),
               lambda r: bf16.log_summary(r["bf16"])),
      "train": ("benchmark_train.json",
                lambda: train_step.bench_train_step(repeats, _TRAIN_STEPS.value, 16),
                lambda r: train_step.log_summary(r["train_step"])),
  }
  default_out, bench, report = benches[_WHAT.value]
  result.update(bench())
  _write(_OUT.value or default_out, result)
  report(result)


if __name__ == "__main__":
  app.run(main)
