"""Markdown tables of the benchmarks' JSON records, as BENCHMARKS.md shows them.

Rendering reads only the records (and, for the statistics core, two of its settings), so a
table can be redrawn from a saved JSON file.
"""

from __future__ import annotations


def stats_markdown(r: dict, concepts: int, batch: int) -> str:
  """The statistics-core table of a `stats.bench_stats` record run with `concepts`, `batch`."""
  gen = r["generator_s_per_image"]
  sub = f"1/{r['subsample_stride']**2}"
  rows = [
      ("ProgGAN-256 forward (random weights, LSUN sizes)", gen, None),
      ("quantile sketch, every pixel, first batches", r["sketch_first_s_per_image"], None),
      (f"quantile sketch, every pixel, steady state ({r['steady_images']} images in, "
       f"shift {r['steady_shift']})", r["sketch_steady_s_per_image"], None),
      (f"quantile sketch, {sub} pixels (fixed grid), steady state",
       r["sketch_subsampled_s_per_image"], None),
      (f"IoU tally (512 units x {concepts} concepts)", r["iou_tally_s_per_image"], None),
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
               f"(q in 0.5..0.999, 64 units, {4 * batch} images): all pixels "
               f"{r['sketch_rank_error_all_pixels']:.1e}, {sub} pixels "
               f"{r['sketch_rank_error_subsampled']:.1e}.")
  return "\n".join(lines)


def dissect_markdown(r: dict) -> str:
  """Markdown tables of the dissection benchmark for BENCHMARKS.md."""
  lines = []
  if "light" in r:
    light = r["light"]
    lines += [f"Light: scene world, n={light['n']}, batch {light['batch']} "
              f"(medians of {r['repeats']} repeats; ratio = median of per-repeat ratios).", "",
              "| layers | threshold | bare gen+seg (s) | one-pass, compile excluded (s) | x bare "
              "| one-pass incl. compile (s) | x bare | passes |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("layer4", "all", "layer4_iqr", "all_iqr"):
      if name not in light:
        continue
      w = light[name]
      lines.append(f"| {name.removesuffix('_iqr')} | {w.get('threshold', 0.01)} "
                   f"| {w['bare_s']:.2f} | {w['total_s']:.2f} | {w['total_ratio']:.2f} "
                   f"| {w['with_compile_s']:.2f} | {w['with_compile_ratio']:.2f} "
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
              "| warmup (s) | images the warmup tallied | tally pass (s) "
              f"| tally pass per image x bare | projected x bare at n={heavy['projected_n']} |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {heavy['bare_s']:.1f} | {heavy['total_s']:.1f} | {heavy['total_ratio']:.2f} | "
              f"{heavy['passes']:.0f} | {heavy['warmup_s']:.1f} "
              f"| {heavy.get('warmup_images', 0):.0f} | {heavy['tally_s']:.1f} | "
              f"{heavy.get('pass_ratio_per_image', float('nan')):.2f} | "
              f"{heavy['projected_ratio']:.2f} |", ""]
  rows = [(f"scene {name.replace('_iqr', ' (IQR)')}", r["light"][name], r["light"]["n"])
          for name in ("layer4", "all", "layer4_iqr", "all_iqr") if name in r.get("light", {})]
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
  if "proggan_memory" in r:
    lines += proggan_memory_markdown(r["proggan_memory"])
  if "versus_original" in r:
    lines += versus_markdown(r["versus_original"])
  return "\n".join(lines)


def proggan_memory_markdown(m: dict) -> list[str]:
  """The ProgGAN-256 layer4 peak-RSS table (`proggan_memory.bench_proggan_memory`)."""
  first = m["runs"][0]
  lines = ["", f"ProgGAN-256 layer4 (random weights), labels from the {first['segmenter']}; "
           f"batch {first['batch_size']}, threshold {first['threshold']}, fresh process each "
           f"(`{first['command']}`):", "",
           "| n | warmup | peak RSS (MiB) | <= 1.5 GB | wall (s) | passes |",
           "|---:|---:|---:|---|---:|---:|"]
  for run in m["runs"]:
    ok = "yes" if run["peak_rss_bytes"] <= m["target_bytes"] else "NO"
    lines.append(f"| {run['n']} | {run['warmup']} | {run['peak_rss_bytes'] / 2**20:.0f} | {ok} "
                 f"| {run['wall_s']:.0f} | {run['passes']} |")
  last = m["runs"][-1]
  return lines + ["", f"Peak RSS ratio n={last['n']} / n={first['n']}: {m['ratio']:.3f}", ""]


def versus_markdown(v: dict) -> list[str]:
  """Ours against the original's figures and the floor (`versus_original.bench_versus`)."""
  f = v["floor"]
  lines = ["", f"The original's default job: ProgGAN-256 layer4 (random weights), n={v['n']}, "
           f"unit images on; labels from the {v['segmenter']}. Original: figures quoted in "
           "issue 15 for this 2-core CPU (IQR 4500 s per 1,000 images, quantile 1 s per "
           "image, peak RSS 5 GB, the low end of 5-10 GB).", "",
           "| threshold | wall (s) | original (s) | speed-up | peak RSS (MiB) | x original RSS "
           "| passes | dissect + write (s) | wall / floor | dissect + write / floor |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for mode in ("iqr", "quantile"):
    w = v[mode]
    lines.append(f"| {w['threshold']} | {w['wall_s']:.0f} | {w['original_s']:.0f} | "
                 f"{w['speedup']:.1f}x | {w['peak_rss_bytes'] / 2**20:.0f} | "
                 f"{w['rss_ratio']:.2f} | {w['passes']} | {w['dissect_s'] + w['write_s']:.0f} | "
                 f"{w['wall_floor_ratio']:.2f} | {w['dissect_floor_ratio']:.2f} |")
  return lines + ["", f"Floor {f['floor_s']:.0f} s = bare generator+segmenter pass "
                  f"{f['bare_s']:.0f} s (batch {f['batch_size']}, compiled beforehand) + "
                  f"{f['top_images']} top images x {f['generator_s_per_image'] * 1e3:.0f} ms "
                  "of generator. Wall is the whole process (start, models, compile, dissection, "
                  "strips, report); dissect + write leaves out start-up and model building. The "
                  "stand-in segmenter is far cheaper than the original's, so the speed-up "
                  "flatters us; the floor, with the same segmenter, is the fair measure.", ""]


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
