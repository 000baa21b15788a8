"""Dissects a generator: which concept each unit of each layer draws, with a browsable report.

Command (the project's main job; about 1-2 minutes on 2 CPU cores with the defaults):

  python -m experiments.dissect

dissects layer1..layer10 of the embedded scene-world GAN with the scene segmenter over 1,000
images (z seed 1) and writes, under `--outdir` (default results/dissect-MODEL): `dissect.json`,
per layer `iou.npy`, `thresholds.npy`, `units/unit####.jpg` strips and `concepts.svg`, then
`layers.svg` and `report.html` (open it from disk). See README "What the dissection writes".

`--model` / `--segmenter` take any spec of `jaxdissect.zoo` (README "Bring your own model");
`--z FILE.npy` dissects given latents. Style layers of a generator that has them (StyleGAN2's
`b16.conv0.style` ...) may be named in `--layers` beside its feature maps: their channels are
dissected by StyleSpace gradient maps (`jaxdissect.stylespace`; `--style_map_size`,
`--style_chunk`). `--model stylegan2:PATH.pkl --model_arg latent_space=w` takes w latents: the
seeded sample is then the seed's z sample mapped to w, and `--z` may give w vectors. The run
checkpoints under OUTDIR/checkpoint and the same command resumes (also after SIGKILL; `--fresh`
discards it). Devices and hosts: README "Many devices and hosts". Bad flags end in one error
line naming the value and the valid choices.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import cli, device_flags, dissect_flags, model_flags, models as model_specs
from experiments.cli import UsageError
from jaxdissect import checkpoint, latents, stylespace, zoo

_N = flags.DEFINE_integer("n", 1000, "Number of images.")
_SEED = flags.DEFINE_integer("seed", 1, "z sample seed.")
_Z = flags.DEFINE_string("z", None, "An .npy file of latents [N, ...] to dissect instead of the "
                         "seeded sample (the first --n rows).")
_IMAGES = flags.DEFINE_bool("images", True, "Write unit strips (regenerates the top images).")
_STYLE_SIZE = flags.DEFINE_integer("style_map_size", 0, "Style layers in --layers: pixel size "
                                   "of their gradient maps (average-pooled; must divide the "
                                   "image size), 0 for the image's own.")
_STYLE_CHUNK = flags.DEFINE_integer("style_chunk", 16, "Style layers in --layers: channels "
                                    "whose gradient maps are computed at once (memory vs speed).")

# Settings of this command that change the running state (besides `dissect_flags`' own).
_STATE = ("model_args", "segmenter_args", "seed", "z", "dtype")


def run_dissection() -> str:
  """Everything `main` does; returns the output folder. Raises UsageError for bad flags."""
  device_flags.join_processes()
  models = model_flags.from_flags()
  gen = models.generator
  default_layers = tuple(gen.layers[:-1])
  w_space = _w_space(models)
  if _Z.value:
    source = cli.checked(latents.load_npy, _Z.value)
  elif w_space:
    source = _seeded_w(models)
  else:
    source = latents.seeded(_SEED.value)
  settings = {"seed": _SEED.value, "dtype": models.dtype, "model_args": models.model_args,
              "segmenter_args": models.segmenter_args,
              "z": source.record() if _Z.value or w_space else None}
  identity = _STATE
  styles = cli.checked(stylespace.split_layers, flags.FLAGS.layers or (), gen)
  if styles:
    if _STYLE_SIZE.value < 0 or _STYLE_CHUNK.value < 1:
      raise UsageError(f"--style_map_size={_STYLE_SIZE.value} --style_chunk="
                       f"{_STYLE_CHUNK.value}; expected a size >= 0 and a chunk >= 1")
    gen = cli.checked(stylespace.with_style_maps, gen, styles, chunk=_STYLE_CHUNK.value,
                      size=_STYLE_SIZE.value or None)
    settings.update(style_map_size=_STYLE_SIZE.value, style_chunk=_STYLE_CHUNK.value,
                    style_maps=stylespace.DESCRIPTION)
    identity += ("style_map_size",)
  return dissect_flags.run(dissect_flags.Job(
      generator=gen, segmenter=models.segmenter, source=source, n=_N.value,
      model=models.model, segmenter_spec=models.segmenter_spec,
      default_layers=default_layers,
      default_outdir=os.path.join("results", f"dissect-{model_specs.slug(models.model)}"),
      settings=settings, identity=identity, seed=_SEED.value, strips=_IMAGES.value))


def _w_space(models: model_specs.Models) -> bool:
  """Whether the model is a StyleGAN2 taking w latents (`--model_arg latent_space=w`)."""
  return (models.model.partition(":")[0] == "stylegan2"
          and models.model_args.get("latent_space") == "w")


def _seeded_w(models: model_specs.Models) -> latents.Latents:
  """The seeded sample of a w-space StyleGAN2: the seed's z sample mapped to w."""
  from ports import stylegan2  # pylint: disable=g-import-not-at-top
  if flags.FLAGS.threshold_seed is not None or flags.FLAGS.compat == "gandissect":
    raise UsageError("--threshold_seed and --compat=gandissect draw a second z sample, which a "
                     "latent_space=w generator does not take; give its latents with --z W.npy")
  try:
    z_gen = zoo.load_generator(models.model, {**models.model_args, "latent_space": "z"})
  except zoo.SpecError as e:
    raise UsageError(str(e)) from None
  w = stylegan2.seeded_w(z_gen, _N.value, _SEED.value)
  return latents.from_array(w, origin=f"seed {_SEED.value} z sample mapped to w")


def main(argv):
  cli.run_main("dissect", run_dissection, argv,
               failures=(checkpoint.CheckpointError, FloatingPointError, ValueError))


if __name__ == "__main__":
  app.run(main)
