"""One training step of each scene GAN: the ProgGAN against the StyleGAN2 of the same channels.

Both use the same discriminator, loss, batch and optimizer (`sceneworld.gan`), so the ratio is the
generators' (forward and backward, twice per step). Rounds alternate the two architectures so
that both see the same machine load; R1 steps are left out (one step in eight in training).
"""

from __future__ import annotations

import time

from absl import logging
import jax
import numpy as np

from jaxdissect.sceneworld import gan, render, stylegan

_LR, _R1, _R1_EVERY, _EMA = 2e-3, 1.0, 8, 0.999  # experiments/train_scene_gan.py's defaults


def _steppers(batch: int):
  """`{arch: (state, train_step)}` compiled and warmed on one batch."""
  out = {"proggan": (gan.init_train_state(0, _LR),
                     gan.make_train_step(gan.SIZES, gan.D_SIZES, _LR, _R1, _R1_EVERY, _EMA)),
         "stylegan2": (gan.init_train_state(0, _LR, init_g=stylegan.init_generator_params),
                       stylegan.make_train_step(gan.D_SIZES, _LR, _R1, _R1_EVERY, _EMA))}
  reals = render(batch, seed=1000)[0]
  for arch, (state, step) in out.items():
    state, _ = step(state, reals)
    out[arch] = (jax.block_until_ready(state), step)
  return out, reals


def bench_train_step(repeats: int, steps: int, batch: int) -> dict:
  """Seconds per training step of each architecture: `repeats` alternating rounds of `steps`."""
  steppers, reals = _steppers(batch)
  rounds = {arch: [] for arch in steppers}
  for _ in range(repeats):
    for arch, (state, step) in steppers.items():
      start = time.perf_counter()
      for _ in range(steps):
        state, _ = step(state, reals)
      jax.block_until_ready(state)
      rounds[arch].append((time.perf_counter() - start) / steps)
      steppers[arch] = (state, step)
  med = {arch: float(np.median(v)) for arch, v in rounds.items()}
  result = {"batch": batch, "steps": steps, "rounds": rounds, "median_s_per_step": med,
            "ratio": med["stylegan2"] / med["proggan"]}
  return {"train_step": result}


def log_summary(result: dict) -> None:
  med = result["median_s_per_step"]
  logging.info("train step, batch %d: proggan %.3f s, stylegan2 %.3f s (%.2fx)", result["batch"],
               med["proggan"], med["stylegan2"], result["ratio"])
