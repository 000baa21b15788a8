"""The flags and the run that every dissection command shares, whatever it dissects.

`experiments.dissect` (a generator over latents) and `experiments.dissect_classifier` (a
classifier over a dataset) differ only in how they load the models and where the rows come
from; both then hand the engine a `Job` and get the same output folder (design §4): the same
settings recorded, the same checkpoint identity, resume, progress, log and report.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, NamedTuple

from absl import flags, logging
import jax

from experiments import cli, device_flags
from experiments.cli import UsageError
from experiments.progress import progress_hook
from jaxdissect import dissect, driver, fit, latents, stages, thresholds
from jaxdissect.model import Generator, Segmenter

_LAYERS = flags.DEFINE_list("layers", None, "Layers to dissect (default: a generator's all but "
                            "the output; a classifier's last with more than one pixel).")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
_THRESHOLD = flags.DEFINE_string(
    "threshold", "0.01", "Top fraction q of each unit's upsampled activations that counts as "
    "'on' (0 < q < 1), or 'iqr' for GAN Dissection's IQR-maximising threshold.")
_IOU_THRESHOLD = flags.DEFINE_float("iou_threshold", None, "IoU above which a unit counts as "
                                    "interpretable (default 0.04; 0.05 in the gandissect rule).")
_INTERPRETABLE = flags.DEFINE_enum("interpretable", "auto", list(thresholds.INTERPRETABLE_RULES),
                                   "iou: IoU above --iou_threshold; gandissect: also the label's "
                                   "IQR > 0.01 (IQR thresholds only); auto: gandissect with "
                                   "--threshold iqr, else iou.")
_IQR_THRESHOLD = flags.DEFINE_float("iqr_threshold", None, "IQR above which a unit's label "
                                    "counts in the gandissect rule (default 0.01).")
_COMPAT = flags.DEFINE_enum("compat", "pnas", ["pnas", "gandissect"],
                            "Definitions preset: pnas (the PNAS paper's: top 1% of the upsampled "
                            "activations, plain IoU, IoU > 0.04) or gandissect (the original GAN "
                            "Dissection code's: IQR thresholds chosen on the seed-2 sample, raw-"
                            "featuremap quantiles for a numeric --threshold, category-restricted "
                            "IoU, IQR > 0.01 and IoU > 0.05). Flags given explicitly win.")
_QUANTILE_OF = flags.DEFINE_enum("quantile_of", None, list(stages.QUANTILE_OF),
                                 "Whose quantile a numeric --threshold is: the activations "
                                 "upsampled to the labels, or the raw featuremap (preset's).")
_IOU = flags.DEFINE_enum("iou", None, list(stages.IOU_DENOMINATORS),
                         "IoU denominator: plain, or category (on-pixels only in images where "
                         "the label's category occurs, as the original) (preset's).")
_THRESHOLD_SEED = flags.DEFINE_integer("threshold_seed", None, "Choose thresholds on the z "
                                       "sample of this seed instead of the dissected one "
                                       "(gandissect with iqr: 2).")
_THRESHOLD_N = flags.DEFINE_integer("threshold_n", None, "Images of the threshold sample "
                                    "(default --n).")
_THRESHOLDS = flags.DEFINE_string("thresholds", None, "Per-unit levels to count at exactly: "
                                  ".npy (one layer), .npz or .json keyed by layer, or a "
                                  "dissect.json.")
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
_WARMUP_ON = flags.DEFINE_enum("warmup_on", "auto", ["auto", "host", "device"],
                               "Where the quantile warmup ranks activations: host (numpy), "
                               "device (top-k) or auto (devices unless CPUs); same brackets.")
_FORWARD_CHUNK = flags.DEFINE_integer("forward_chunk", -1, "Images per generator/segmenter "
                                      "call on a device (0: its whole share of a batch; -1: the "
                                      "largest split of that share whose step fits the device's "
                                      "memory by XLA's analysis, or on a CPU whose forward plans "
                                      "at most 128 MiB; logged).")

# These flags, recorded as they are in dissect.json's settings (after model, segmenter, layers, n).
_RECORDED = ("batch_size", "threshold", "iou_threshold", "topk", "bins", "warmup",
             "iou_tolerance", "max_passes", "tile", "forward_chunk", "compat", "quantile_of",
             "iou", "threshold_seed", "threshold_n", "thresholds", "iqr_threshold")
# Settings of every run that change the running state; a checkpoint is reused only if they match
# (and the job's own `identity` settings).
_STATE = ("model", "segmenter", "layers", "batch_size", "threshold", "topk", "bins", "warmup",
          "iou_tolerance", "max_passes", "forward_chunk", "quantile_of", "iou", "threshold_seed",
          "threshold_n", "thresholds")

# State settings added after checkpoints were first written: left out of the identity while they
# hold these (the only behaviour there was), so those checkpoints still resume.
_ADDED_DEFAULTS = {"quantile_of": "upsampled", "iou": "plain", "threshold_seed": None,
                   "threshold_n": None, "thresholds": None}

# What each --compat preset sets, for the flags not given explicitly.
PRESETS = {
    "pnas": {"threshold": "0.01", "quantile_of": "upsampled", "iou": "plain",
             "interpretable": "auto"},
    "gandissect": {"threshold": "iqr", "quantile_of": "raw", "iou": "category",
                   "interpretable": "gandissect"},
}


def apply_preset() -> None:
  """Sets the flags of the --compat preset that were not given on the command line."""
  preset = PRESETS[_COMPAT.value]
  for name, value in preset.items():
    if not flags.FLAGS[name].present:
      flags.FLAGS[name].parse(value)
  if (_COMPAT.value == "gandissect" and not _THRESHOLD_SEED.present
      and _THRESHOLD.value.strip().lower() == "iqr"):
    flags.FLAGS["threshold_seed"].parse("2")  # the original picks IQR levels on seed 2


class Job(NamedTuple):
  """What a command dissects: models, rows and n; how it is named and recorded.

  `settings`: the command's own settings, recorded after the shared ones; `identity`: which of
  them change the running state (with the shared ones, what a checkpoint must match); `seed`:
  `Config.seed` (the seeded sample, and IQR's warmup subsample); `strips`: write unit strips.
  """

  generator: Generator
  segmenter: Segmenter
  source: latents.Latents
  n: int
  model: str
  segmenter_spec: str
  default_layers: tuple[str, ...]
  default_outdir: str
  settings: dict[str, Any]
  identity: tuple[str, ...]
  seed: int = 1
  strips: bool = True


def run(job: Job) -> str:
  """Dissects `job` as the flags say and writes the output folder; returns it. Raises
  UsageError for bad flags (before anything is written)."""
  apply_preset()
  layers = tuple(_LAYERS.value or job.default_layers)
  given = (cli.checked(stages.load_thresholds, _THRESHOLDS.value, layers,
                       errors=(ValueError, OSError))
           if _THRESHOLDS.value else None)
  config = dissect.Config(
      layers=layers, n=job.n, batch_size=_BATCH.value, seed=job.seed,
      threshold=cli.threshold(_THRESHOLD.value),
      topk=_TOPK.value, num_bins=_BINS.value, warmup=_WARMUP.value,
      iou_tolerance=_TOLERANCE.value, max_passes=_MAX_PASSES.value,
      forward_chunk=_FORWARD_CHUNK.value, warmup_on=_WARMUP_ON.value, latents=job.source,
      quantile_of=_QUANTILE_OF.value, iou=_IOU.value,
      threshold_latents=(None if _THRESHOLD_SEED.value is None
                         else latents.seeded(_THRESHOLD_SEED.value)),
      threshold_n=_THRESHOLD_N.value, given_thresholds=given)
  if _TILE.value < 8:
    raise UsageError(f"--tile={_TILE.value}; expected at least 8 pixels")
  mesh = device_flags.mesh_for(config.batch_size)
  cli.checked(dissect.check_config, config, job.generator)
  rule = cli.checked(thresholds.interpretable_for, config.threshold, _INTERPRETABLE.value,
                     _IOU_THRESHOLD.value, iqr=_IQR_THRESHOLD.value, has_iqr=config.staged or None)
  outdir = cli.writable_dir("outdir", job.default_outdir if _OUTDIR.value is None
                            else _OUTDIR.value)
  settings = {"model": job.model, "segmenter": job.segmenter_spec, "layers": list(layers),
              "n": config.n, **{name: flags.FLAGS[name].value for name in _RECORDED},
              "interpretable": _INTERPRETABLE.value, **job.settings}
  settings["iou_threshold"] = rule.iou  # the rule's default when the flag is not given
  settings["iqr_threshold"] = rule.iqr
  logging.info("dissecting %s of %s with the %s segmenter: %d images, threshold %s, %d "
               "device(s) in %d process(es) -> %s", ",".join(layers), job.model,
               job.segmenter_spec, config.n, _THRESHOLD.value, mesh.devices.size,
               jax.process_count(), outdir)
  start = time.perf_counter()
  hook = progress_hook(_QUIET.value)
  prepared = dissect.prepare(job.generator, job.segmenter, config, mesh)
  _log_chunk(prepared)
  identity = {k: settings[k] for k in (*_STATE, *job.identity)
              if not (k in _ADDED_DEFAULTS and settings[k] == _ADDED_DEFAULTS[k])}
  results = cli.checked(driver.run_prepared, prepared,
                        checkpoint_dir=os.path.join(outdir, "checkpoint"),
                        checkpoint_every=_EVERY.value, fresh=_FRESH.value,
                        identity=identity, progress=hook,
                        note=logging.info, errors=(driver.ResumeError,))
  logging.info("tallies done in %.1f s", time.perf_counter() - start)
  doc = driver.write(outdir, results, job.generator, job.segmenter, config, model=job.model,
                     segmenter=job.segmenter_spec, settings=settings,
                     interpretable=rule, images=job.strips, tile=_TILE.value,
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
