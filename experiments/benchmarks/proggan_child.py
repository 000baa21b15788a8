"""One ProgGAN-256 dissection in a fresh process, as a new user would run it, and its launcher.

The child (`python -m experiments.benchmarks.proggan_child --n 500 --outdir DIR --record
FILE.json`) builds the `proggan_world` models and a config (the library's defaults but for
the flags given) and runs what `python -m experiments.dissect` runs: the driver's loop with
checkpoints under DIR/checkpoint (`driver.run_prepared(dissect.prepare(...))`, the body of
`driver.run`, called directly for its stage timings), then `driver.write`, with the unit strips
(which regenerate every top image) under `--images`. It writes its timings to the record file;
`run_child` launches it and adds its peak RSS and the process's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from experiments import cli, host_memory
from experiments.benchmarks import proggan_world
from experiments.benchmarks.common import ROOT, peak_rss
from jaxdissect import dissect, driver


def run_child(n: int, threshold: str, segmenter: str, *, batch_size: int = 0, warmup: int = 0,
              images: bool = False, checkpoints: bool = True) -> dict:
  """The child's record plus `peak_rss_bytes`, `wall_s` (the whole process) and `command`."""
  with tempfile.TemporaryDirectory() as tmp:
    record = os.path.join(tmp, "record.json")
    args = ["--n", str(n), "--threshold", threshold, "--segmenter", segmenter,
            "--batch_size", str(batch_size), "--warmup", str(warmup),
            "--images" if images else "--no-images",
            "--checkpoints" if checkpoints else "--no-checkpoints"]
    cmd = [sys.executable, "-m", __name__, *args, "--outdir", os.path.join(tmp, "out"),
           "--record", record]
    rss, seconds = peak_rss(cmd, ROOT)
    with open(record) as f:
      out = json.load(f)
  out.update(peak_rss_bytes=rss, wall_s=seconds,
             command=" ".join(["python -m", __name__, *args, "--outdir TMP --record TMP.json"]))
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, required=True)
  parser.add_argument("--threshold", default="0.01", help="q, or iqr")
  parser.add_argument("--segmenter", default="pooled_scene")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the library's default")
  parser.add_argument("--warmup", type=int, default=0, help="0: the library's default")
  parser.add_argument("--images", action=argparse.BooleanOptionalAction, default=False)
  parser.add_argument("--checkpoints", action=argparse.BooleanOptionalAction, default=True,
                      help="checkpoint under OUTDIR/checkpoint, as the CLI does")
  parser.add_argument("--outdir", required=True)
  parser.add_argument("--record", required=True)
  a = parser.parse_args(argv)
  host_memory.tune_malloc()  # as every script's `cli.run_main` does

  start = time.perf_counter()
  gen, seg = proggan_world.generator(), proggan_world.segmenter(a.segmenter)
  config = proggan_world.config(a.n, cli.threshold(a.threshold), a.batch_size, a.warmup)
  models_s = time.perf_counter() - start
  times: dict = {}
  checkpoint_dir = os.path.join(a.outdir, "checkpoint") if a.checkpoints else None
  results = driver.run_prepared(dissect.prepare(gen, seg, config), checkpoint_dir=checkpoint_dir,
                                fresh=True, timings=times)
  dissect_s = time.perf_counter() - start - models_s
  start = time.perf_counter()
  doc = driver.write(a.outdir, results, gen, seg, config, model="proggan-256 (random weights)",
                     segmenter=proggan_world.describe(a.segmenter), images=a.images)
  write_s = time.perf_counter() - start
  tops = np.concatenate([r.top_indices.ravel() for r in results.values()])
  record = {"n": config.n, "batch_size": config.batch_size, "warmup": config.warmup,
            "threshold": config.threshold, "layer": proggan_world.LAYER,
            "segmenter": proggan_world.describe(a.segmenter), "images": a.images,
            "checkpoints": a.checkpoints,
            "models_s": models_s, "dissect_s": dissect_s, "write_s": write_s,
            **{k: times[k] for k in ("warmup_s", "tally_s", "finish_s", "passes")},
            "top_images": int(np.unique(tops[tops >= 0]).size),
            "interpretable": [layer["interpretable"] for layer in doc["layers"]]}
  with open(a.record, "w") as f:
    json.dump(record, f, indent=2)


if __name__ == "__main__":
  main()
