"""The scaling dissection part: does dissecting on more devices give the same answer, and how fast?

`python -m experiments.dissect` on layer4 with `--devices` 1, 2, 4... (forced CPU devices on a
CPU host, real ones elsewhere): wall time, peak RSS, and whether every `dissect.json` is
byte-identical to the 1-device one. Not run by default.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import app, logging
import jax

from experiments.benchmarks.common import ROOT, peak_rss


def bench_scaling(counts: list[int], n: int, batch: int) -> dict:
  """`python -m experiments.dissect` of the scene world on each of `counts` devices, each in a
  fresh process: wall time, peak RSS and whether `dissect.json` is byte-identical to the first.

  On a CPU host the devices are forced (`--xla_force_host_platform_device_count`): they share
  the same cores, so this shows correctness and overhead, not speed-up; on a GPU/TPU host the
  real local devices are used. `batch` must be a multiple of every count.
  """
  env = dict(os.environ)
  if jax.default_backend() == "cpu":
    env.update(JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={max(counts)}".strip())
  elif max(counts) > jax.local_device_count():
    raise app.UsageError(f"--scaling_devices {counts}: this host has "
                         f"{jax.local_device_count()} devices")
  out = {"n": n, "batch": batch, "forced_cpu": jax.default_backend() == "cpu",
         "devices": [], "wall_s": [], "peak_rss_bytes": [], "identical_to_first": []}
  args = ["--quiet", "--images=false", "--layers", "layer4", "--n", str(n),
          "--batch_size", str(batch), "--forward_chunk", str(batch // max(counts)), "--fresh"]
  out["command"] = " ".join(["python -m experiments.dissect --outdir TMP", *args])
  with tempfile.TemporaryDirectory() as tmp:
    first = None
    for count in counts:
      outdir = os.path.join(tmp, str(count))
      cmd = [sys.executable, "-m", "experiments.dissect", "--outdir", outdir, *args,
             "--devices", str(count)]
      rss, seconds = peak_rss(cmd, ROOT, env)
      with open(os.path.join(outdir, "dissect.json"), "rb") as f:
        written = f.read()
      first = written if first is None else first
      logging.info("scaling: %d device(s) %.1f s, peak RSS %.0f MiB, identical: %s", count,
                   seconds, rss / 2**20, written == first)
      for key, value in (("devices", count), ("wall_s", seconds), ("peak_rss_bytes", rss),
                         ("identical_to_first", written == first)):
        out[key].append(value)
  return out
