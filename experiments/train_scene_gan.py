"""Trains the scene world's 64x64 generators: the ProgGAN (the embedded default that jaxdissect
dissects) and the StyleGAN2 it is compared with.

Commands (the shipped weights; the defaults are the shipped runs):

  python -m experiments.train_scene_gan
  python -m experiments.train_scene_gan --arch stylegan2

Runtime on 2 CPU cores: about 0.44 s/step alone (0.7-1.1 s/step while another training job
shares the cores), so the 9900 steps take about 75 minutes plus a minute of compilation.
Figures reached (`python -m experiments.eval_sceneworld`, n=2000, segmenter view): the shipped
weights are the EMA at step 9900 (a run meant for 11000 stopped there; 9900 is now the default):
total-variation distance 0.035 (gate 0.05); every concept at >= 0.66 of its real image frequency
(trunk; gate 0.5); Frechet distance of segmenter features 6.1e-5 vs 1.4e-5 real-vs-real. At step
4200 these were 0.040, 0.85 and 2.1e-4 (n=1000): the gates are already met after ~30 minutes.

Training is non-progressive at 64x64: the ProgGAN generator of `ports.proggan` with the channels
of `jaxdissect.sceneworld.gan.SIZES` against the ProgGAN-style discriminator of the same module,
non-saturating logistic loss with lazy R1 on reals, Adam(b1=0, b2=0.99) and an exponential moving
average (EMA) of the generator weights. Every step sees a freshly rendered batch of real scenes
(`sceneworld.render(batch, seed, start=step * batch)`), so the data is deterministic per step.

`--arch stylegan2` trains `jaxdissect.sceneworld.stylegan` (the `ports.stylegan2` generator with
the same channels per resolution) with the same discriminator, loss, R1, EMA, batches and
learning rate; defaults then go to `results/train_stylegan2` and
`jaxdissect/sceneworld/weights/stylegan2`. A step costs 1.96x the ProgGAN's (0.45 against 0.23
s/step in one `python -m experiments.benchmark --what=train` run on 2 CPU cores): its up-sampling
convs run on zero-inserted maps, as the original's. The shipped 7,000 steps took 69 minutes
(R1 steps, saves and other jobs included) and miss the TV gate of `eval_sceneworld` (0.067 > 0.05;
README "Two architectures on one world").

Every `--save_every` steps it writes
  * `WORKDIR/state`: everything needed to resume (G, D, EMA, optimizer states, step, seed key);
    rerunning the same command continues from there;
  * `--out` (default `jaxdissect/sceneworld/weights/generator`): the EMA generator params only,
    float32 (what `gan.load_generator()` loads);
  * `WORKDIR/samples_<step>.png`: an 8x8 grid of EMA samples of a fixed z.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from typing import Any, Callable, NamedTuple

from absl import app, flags, logging
import jax
import numpy as np
from PIL import Image

from experiments.progress import progress
from jaxdissect import checkpoint
from jaxdissect.model import Generator
from jaxdissect.sceneworld import gan, render, stylegan
from jaxdissect.zsample import standard_z

_ARCH = flags.DEFINE_enum("arch", "proggan", ["proggan", "stylegan2"], "Generator architecture.")
_STEPS = flags.DEFINE_integer("steps", None, "Total training steps (resume continues to this); "
                              "default 9900 (proggan), 7000 (stylegan2).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per step (real and fake each).")
_LR = flags.DEFINE_float("lr", 2e-3, "Adam learning rate of G and D.")
_R1 = flags.DEFINE_float("r1", 1.0, "R1 penalty weight gamma on real images.")
_R1_EVERY = flags.DEFINE_integer("r1_every", 8, "Apply the (lazy) R1 penalty every N steps.")
_EMA = flags.DEFINE_float("ema", 0.999, "EMA decay of generator weights (ramped up early).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of initialisation, latents and real scenes.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Resumable state and samples (default "
                               "results/train_gan, results/train_stylegan2).")
_OUT = flags.DEFINE_string("out", None, "Where the EMA generator params go (default the "
                           "package's weights/generator, weights/stylegan2).")
_SAVE_EVERY = flags.DEFINE_integer("save_every", 300, "Checkpoint every N steps.")
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bar.")

_SAMPLE_SEED = 7   # standard_z seed of the sample grid


def real_batch(step: int, batch_size: int, seed: int) -> np.ndarray:
  """The rendered real images of `step` (deterministic, never repeated across steps)."""
  return render(batch_size, seed=seed + 1000, start=step * batch_size)[0]


class Arch(NamedTuple):
  """What differs between the architectures: the rest of the loop is shared."""

  init_g: Callable[[jax.Array], Any]  # key -> fresh generator params
  make_step: Callable[..., Any]  # (d_sizes, lr, r1, r1_every, ema) -> jitted train_step
  generator: Callable[[Any], Generator]  # params -> protocol Generator
  steps: int
  workdir: str
  out: str


ARCHS = {
    "proggan": Arch(gan.init_generator_params,
                    functools.partial(gan.make_train_step, gan.SIZES), gan.make_generator,
                    9900, "results/train_gan", gan.DEFAULT_PATH),
    "stylegan2": Arch(stylegan.init_generator_params, stylegan.make_train_step,
                      stylegan.make_generator, 7000, "results/train_stylegan2",
                      stylegan.DEFAULT_PATH),
}


def make_drawer(arch: Arch, like: Any) -> Callable[[Any], jax.Array]:
  """`draw(params) -> images` of the fixed z `standard_z(64, _SAMPLE_SEED)` for generators of
  `arch` with params like `like`, jitted once (every save reuses the compiled function)."""
  generator = arch.generator(like)
  apply = jax.jit(generator.apply_fn)
  z = standard_z(64, _SAMPLE_SEED, generator.zdim)
  return lambda params: apply(params, z)[0]


def save_samples(path: str, draw: Callable[[Any], jax.Array], params: Any) -> None:
  """Writes an 8x8 grid of `draw(params)` (a `make_drawer` function)."""
  Image.fromarray(gan.image_grid(np.asarray(draw(params)))).save(path)


def save_all(state: gan.TrainState, workdir: str, out: str,
             draw: Callable[[Any], jax.Array]) -> None:
  """Checkpoints the resumable state, the EMA generator and a sample grid."""
  host = checkpoint.to_numpy(state)
  _swap_in(os.path.join(workdir, "state"), lambda tmp: checkpoint.save(tmp, host._asdict()))
  _swap_in(out, lambda tmp: gan.save_generator(tmp, host.ema))
  step = int(host.step)
  save_samples(os.path.join(workdir, f"samples_{step:06d}.png"), draw, host.ema)


def _swap_in(path: str, write) -> None:
  """Runs `write(tmp)` then renames `tmp` to `path`, so a kill mid-save leaves a usable `path`
  (the previous one, or at worst `path.old` for the instant between the two renames)."""
  path = os.path.abspath(path)
  tmp, old = path + ".tmp", path + ".old"
  for stale in (tmp, old):
    shutil.rmtree(stale, ignore_errors=True)
  write(tmp)
  if os.path.exists(path):
    os.rename(path, old)
  os.rename(tmp, path)
  shutil.rmtree(old, ignore_errors=True)


def restore_or_init(workdir: str, seed: int, lr: float, arch: Arch = ARCHS["proggan"]
                    ) -> gan.TrainState:
  """The state saved in `workdir/state`, or a fresh one if there is none."""
  fresh = gan.init_train_state(seed, lr, init_g=arch.init_g)
  path = os.path.join(workdir, "state")
  if not os.path.isdir(path):
    return fresh
  loaded = checkpoint.load(path, fresh._asdict(), remake=f"rm -r {path} and train from scratch")
  return gan.TrainState(**loaded)


def main(argv):
  del argv
  arch = ARCHS[_ARCH.value]
  workdir, out = _WORKDIR.value or arch.workdir, _OUT.value or arch.out
  steps = _STEPS.value or arch.steps
  os.makedirs(workdir, exist_ok=True)
  state = restore_or_init(workdir, _SEED.value, _LR.value, arch)
  start = int(state.step)
  logging.info("%s, D sizes %s, batch %d; starting at step %d of %d", _ARCH.value, gan.D_SIZES,
               _BATCH.value, start, steps)
  train_step = arch.make_step(gan.D_SIZES, _LR.value, _R1.value, _R1_EVERY.value, _EMA.value)
  draw = make_drawer(arch, state.ema)
  t0 = time.perf_counter()
  metrics = {}
  for step in progress(range(start, steps), total=steps - start, desc=f"train {_ARCH.value}",
                       unit="step", quiet=_QUIET.value):
    reals = real_batch(step, _BATCH.value, _SEED.value)
    state, metrics = train_step(state, reals, with_r1=step % _R1_EVERY.value == 0)
    done = step + 1
    if done % _SAVE_EVERY.value == 0 or done == steps:
      m = {k: float(v) for k, v in metrics.items()}
      save_all(state, workdir, out, draw)
      logging.info("step %d (%.2f s/step): %s; saved %s", done,
                   (time.perf_counter() - t0) / (done - start), m, out)
  if start >= steps:
    logging.info("already at step %d; nothing to do", start)


if __name__ == "__main__":
  app.run(main)
