"""The ProgGAN memory part: peak RSS of a ProgGAN-256 layer4 dissection, and is it flat in n?

Each image count runs `proggan_child` (fresh process, library defaults but for n: batch size,
warmup, quantile threshold 0.01; checkpoints as the CLI; no unit strips) and reports its peak
RSS against the issue-15 target of 1.5 GB.
"""

from __future__ import annotations

from absl import logging

from experiments.benchmarks import proggan_child

TARGET_BYTES = 1.5e9  # issue 15: a ProgGAN-256 layer dissection in at most 1.5 GB


def bench_proggan_memory(counts: list[int], segmenter: str, batch_size: int = 0,
                         warmup: int = 0) -> dict:
  """`proggan_child` for each n in `counts`; `batch_size`, `warmup` 0 = the library's."""
  out = {"target_bytes": TARGET_BYTES, "runs": []}
  for n in counts:
    run = proggan_child.run_child(n, "0.01", segmenter, batch_size=batch_size, warmup=warmup)
    logging.info("proggan memory n=%d: peak RSS %.0f MiB, %.0f s (%d pass(es))", n,
                 run["peak_rss_bytes"] / 2**20, run["wall_s"], run["passes"])
    out["runs"].append(run)
  rss = [r["peak_rss_bytes"] for r in out["runs"]]
  out["ratio"] = rss[-1] / rss[0]
  out["meets_target"] = max(rss) <= TARGET_BYTES
  return out
