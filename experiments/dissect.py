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

import math
import os
import time

from absl import app, flags, logging
import jax

from experiments import cli, device_flags, model_flags, models as model_specs
from experiments.cli import UsageError
from experiments.progress import progress_hook
from jaxdissect import checkpoint, dissect, driver, fit, latents, thresholds

_LAYERS = flags.DEFINE_list("layers", None, "Layers to dissect (default: all but the output).")
_N = flags.DEFINE_integer("n", 1000, "Number of images.")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
_SEED = flags.DEFINE_integer("seed", 1, "z sample seed.")
_Z = flags.DEFINE_string("z", None, "An .npy file of latents [N, ...] to dissect instead of the "
                         "seeded sample (the first --n rows).")
_THRESHOLD = flags.DEFINE_string(
    "threshold", "0.01", "Top fraction q of each unit's upsampled activations that counts as "
    "'on' (0 < q < 1), or 'iqr' for GAN Dissection's IQR-maximising threshold.")
_IOU_THRESHOLD = flags.DEFINE_float("iou_threshold", None, "IoU above which a unit counts as "
                                    "interpretable (default 0.04; 0.05 in the gandissect rule).")
_INTERPRETABLE = flags.DEFINE_enum("interpretable", "auto", list(thresholds.INTERPRETABLE_RULES),
                                   "iou: IoU above --iou_threshold; gandissect: also the label's "
                                   "IQR > 0.01 (IQR thresholds only); auto: gandissect with "
                                   "--threshold iqr, else iou.")
_TOPK = flags.DEFINE_integer("topk", 10, "Top images kept and shown per unit.")
_OUTDIR = flags.DEFINE_string("outdir", None, "Output folder (default results/dissect-MODEL).")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")
_BINS = flags.DEFINE_integer("bins", 2048, "Fine bins per unit in the threshold bracket.")
_WARMUP = flags.DEFINE_integer("warmup", 100, "Images whose activations predict the brackets.")
_TOLERANCE = flags.DEFINE_float("iou_tolerance", 1e-3, "Largest IoU error accepted before a "
                                "unit's bracket is refined by another pass.")
_MAX_PASSES = flags.DEFINE_integer("max_passes", 3, "Most passes over the images.")
_EVERY = flags.DEFINE_integer("checkpoint_every", 5, "Batches between checkpoints.")
_FRESH = flags.DEFINE_bool("fresh", False, "Ignore and replace an existing checkpoint.")
_TILE = flags.DEFINE_integer("tile", 128, "Pixel size of each image in the unit strips.")
_IMAGES = flags.DEFINE_bool("images", True, "Write unit strips (regenerates the top images).")
_WARMUP_ON = flags.DEFINE_enum("warmup_on", "auto", ["auto", "host", "device"],
                               "Where the quantile warmup ranks activations: host (numpy), "
                               "device (top-k) or auto (devices unless CPUs); same brackets.")
_FORWARD_CHUNK = flags.DEFINE_integer("forward_chunk", -1, "Images per generator/segmenter "
                                      "call on a device (0: its whole share of a batch; -1: the "
                                      "largest split of that share whose step fits the device's "
                                      "memory by XLA's analysis, or on a CPU whose forward plans "
                                      "at most 128 MiB; logged).")

# Flags recorded as they are in dissect.json's settings (after model, segmenter and layers).
_RECORDED = ("n", "batch_size", "seed", "threshold", "iou_threshold", "topk", "bins", "warmup",
             "iou_tolerance", "max_passes", "tile", "forward_chunk")
# Settings that change the running state; a checkpoint is reused only if they match.
_STATE = ("model", "model_args", "segmenter", "segmenter_args", "layers", "batch_size", "seed",
          "z", "threshold", "topk", "bins", "warmup", "iou_tolerance", "max_passes",
          "forward_chunk", "dtype")


def run_dissection() -> str:
  """Everything `main` does; returns the output folder. Raises UsageError for bad flags."""
  device_flags.join_processes()
  models = model_flags.from_flags()
  gen = models.generator
  layers = tuple(_LAYERS.value or gen.layers[:-1])
  source = cli.checked(latents.load_npy, _Z.value) if _Z.value else latents.seeded(_SEED.value)
  config = dissect.Config(
      layers=layers, n=_N.value, batch_size=_BATCH.value, seed=_SEED.value,
      threshold=cli.threshold(_THRESHOLD.value),
      topk=_TOPK.value, num_bins=_BINS.value, warmup=_WARMUP.value,
      iou_tolerance=_TOLERANCE.value, max_passes=_MAX_PASSES.value,
      forward_chunk=_FORWARD_CHUNK.value, warmup_on=_WARMUP_ON.value, latents=source)
  if _TILE.value < 8:
    raise UsageError(f"--tile={_TILE.value}; expected at least 8 pixels")
  mesh = device_flags.mesh_for(config.batch_size)
  cli.checked(dissect.check_config, config, gen)
  rule = cli.checked(thresholds.interpretable_for, config.threshold, _INTERPRETABLE.value,
                     _IOU_THRESHOLD.value)
  default = os.path.join("results", f"dissect-{model_specs.slug(models.model)}")
  outdir = cli.writable_dir("outdir", default if _OUTDIR.value is None else _OUTDIR.value)
  settings = {"model": models.model, "segmenter": models.segmenter_spec, "layers": list(layers),
              **{name: flags.FLAGS[name].value for name in _RECORDED}, "dtype": models.dtype,
              "interpretable": _INTERPRETABLE.value,
              "model_args": models.model_args, "segmenter_args": models.segmenter_args,
              "z": source.record() if _Z.value else None}
  settings["iou_threshold"] = rule.iou  # the rule's default when the flag is not given
  logging.info("dissecting %s of %s with the %s segmenter: %d images, threshold %s, %d "
               "device(s) in %d process(es) -> %s", ",".join(layers), models.model,
               models.segmenter_spec, config.n, _THRESHOLD.value, mesh.devices.size,
               jax.process_count(), outdir)
  start = time.perf_counter()
  hook = progress_hook(_QUIET.value)
  prepared = dissect.prepare(gen, models.segmenter, config, mesh)
  _log_chunk(prepared)
  results = cli.checked(driver.run_prepared, prepared,
                        checkpoint_dir=os.path.join(outdir, "checkpoint"),
                        checkpoint_every=_EVERY.value, fresh=_FRESH.value,
                        identity={k: settings[k] for k in _STATE}, progress=hook,
                        note=logging.info, errors=(driver.ResumeError,))
  logging.info("tallies done in %.1f s", time.perf_counter() - start)
  doc = driver.write(outdir, results, gen, models.segmenter, config, model=models.model,
                     segmenter=models.segmenter_spec, settings=settings,
                     interpretable=rule, images=_IMAGES.value, tile=_TILE.value,
                     progress=hook)
  cli.log_summary(doc)
  logging.info("wrote %s (open report.html in a browser)", outdir)
  return outdir


def _log_chunk(run: dissect.Run) -> None:
  """Says how many images each model call takes, and for --forward_chunk=-1 why."""
  share = run.config.batch_size // run.mesh.devices.size
  chunk = math.gcd(share, run.forward_chunk) if run.forward_chunk else share  # as steps.in_chunks
  if run.config.forward_chunk != dissect.AUTO_CHUNK:
    logging.info("forward chunk: %d of each device's %d images per model call", chunk, share)
  elif run.fitted is None:
    logging.info("forward chunk: auto, no device memory limit known: %d of each device's %d "
                 "images per model call (a call may plan %d MiB of temporaries)", chunk, share,
                 fit.HOST_CALL_BYTES >> 20)
  else:
    gib = lambda b: "unknown" if b is None else "too large" if b < 0 else f"{b / 2**30:.2f} GiB"
    tried = ", ".join(f"{c}: {gib(b)}" for c, b in run.fitted.tried.items())
    logging.info("forward chunk: auto, %d of each device's %d images per model call (XLA plans "
                 "%s of a %s budget; tried %s)", chunk, share, gib(run.fitted.bytes),
                 gib(run.fitted.budget), tried)


def main(argv):
  cli.run_main("dissect", run_dissection, argv,
               failures=(checkpoint.CheckpointError, FloatingPointError, ValueError))


if __name__ == "__main__":
  app.run(main)
