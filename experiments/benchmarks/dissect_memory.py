"""The memory dissection part: does a dissection's peak memory stay flat as n grows?

Peak RSS of `python -m experiments.dissect` on layer4,layer6 for each image count, each in a
fresh subprocess.
"""

from __future__ import annotations

import sys
import tempfile

from absl import logging

from experiments.benchmarks.common import ROOT, peak_rss


def bench_memory(counts: list[int]) -> dict:
  """Peak RSS of a two-layer scene-world dissection for each n in `counts`, each in a fresh
  process."""
  out = {"commands": [], "peak_rss_bytes": [], "wall_s": [], "n": []}
  for n in counts:
    with tempfile.TemporaryDirectory() as outdir:
      cmd = [sys.executable, "-m", "experiments.dissect", "--quiet", "--images=false",
             "--outdir", outdir, "--layers", "layer4,layer6", "--n", str(n), "--fresh"]
      rss, seconds = peak_rss(cmd, ROOT)
    logging.info("memory n=%d: peak RSS %.0f MiB, %.0f s", n, rss / 2**20, seconds)
    out["commands"].append(" ".join(["python"] + cmd[1:6] + ["TMP"] + cmd[7:]))
    for key, value in (("n", n), ("peak_rss_bytes", rss), ("wall_s", seconds)):
      out[key].append(value)
  out["ratio"] = out["peak_rss_bytes"][-1] / out["peak_rss_bytes"][0]
  return out
