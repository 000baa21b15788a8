"""Dissects a generator: which concept each unit of each layer draws, with a browsable report.

Command (the project's main job; about 1-2 minutes on 2 CPU cores with the defaults):

  python -m experiments.dissect

dissects layer1..layer10 of the embedded scene-world GAN with the scene segmenter over 1,000
images (z seed 1) and writes, under `--outdir` (default results/dissect-MODEL): `dissect.json`,
per layer `iou.npy`, `thresholds.npy`, `units/unit####.jpg` strips and `concepts.svg`, then
`layers.svg` and `report.html` (open it from disk). See README "What the dissection writes".

`--model` / `--segmenter` take any spec of `jaxdissect.zoo` (README "Bring your own model");
`--z FILE.npy` dissects given latents. The run checkpoints under OUTDIR/checkpoint and the same
command resumes (also after SIGKILL; `--fresh` discards it). Devices and hosts: README "Many
devices and hosts". Bad flags end in one error line naming the value and the valid choices.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import cli, device_flags, dissect_flags, model_flags, models as model_specs
from jaxdissect import checkpoint, latents

_N = flags.DEFINE_integer("n", 1000, "Number of images.")
_SEED = flags.DEFINE_integer("seed", 1, "z sample seed.")
_Z = flags.DEFINE_string("z", None, "An .npy file of latents [N, ...] to dissect instead of the "
                         "seeded sample (the first --n rows).")
_IMAGES = flags.DEFINE_bool("images", True, "Write unit strips (regenerates the top images).")

# Settings of this command that change the running state (besides `dissect_flags`' own).
_STATE = ("model_args", "segmenter_args", "seed", "z", "dtype")


def run_dissection() -> str:
  """Everything `main` does; returns the output folder. Raises UsageError for bad flags."""
  device_flags.join_processes()
  models = model_flags.from_flags()
  gen = models.generator
  source = cli.checked(latents.load_npy, _Z.value) if _Z.value else latents.seeded(_SEED.value)
  settings = {"seed": _SEED.value, "dtype": models.dtype, "model_args": models.model_args,
              "segmenter_args": models.segmenter_args,
              "z": source.record() if _Z.value else None}
  return dissect_flags.run(dissect_flags.Job(
      generator=gen, segmenter=models.segmenter, source=source, n=_N.value,
      model=models.model, segmenter_spec=models.segmenter_spec,
      default_layers=tuple(gen.layers[:-1]),
      default_outdir=os.path.join("results", f"dissect-{model_specs.slug(models.model)}"),
      settings=settings, identity=_STATE, seed=_SEED.value, strips=_IMAGES.value))


def main(argv):
  cli.run_main("dissect", run_dissection, argv,
               failures=(checkpoint.CheckpointError, FloatingPointError, ValueError))


if __name__ == "__main__":
  app.run(main)
