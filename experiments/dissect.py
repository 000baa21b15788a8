"""Dissects a generator: which concept each unit of each layer draws, with a browsable report.

Command (the project's main job; about 1-2 minutes on 2 CPU cores with the defaults):

  python -m experiments.dissect

dissects layers layer1..layer10 of the embedded scene-world GAN with the scene segmenter over
1,000 images (seed 1) and writes, under `--outdir` (default results/dissect-sceneworld):

  dissect.json                 every unit: threshold, label, IoU, interpretable, top images
  <layer>/iou.npy              [units, concepts] IoU of each unit with each concept
  <layer>/thresholds.npy       [units] activation threshold of each unit
  <layer>/units/unit####.jpg   the unit's top images, its region highlighted
  <layer>/concepts.svg         interpretable units per concept
  layers.svg, report.html      the layer comparison and the report (open it from disk)

The run is one pass over the images (see `jaxdissect.dissect`); its state is checkpointed under
OUTDIR/checkpoint every `--checkpoint_every` batches, and running the same command again resumes
where it stopped (also after SIGKILL). A finished run asked for a larger `--n` continues from
its images instead of starting over. `--fresh` discards a checkpoint.

Other worlds: `--model planted` dissects the planted-truth world (its colour units must come out
with IoU 1). Bad flags exit with a one-line error naming the value and the valid choices.

Devices and hosts: every batch is split over all local devices (`--devices N`: the first N;
`--batch_size` must be a multiple of the device count). Several processes (hosts) join one run
with `--coordinator_address HOST:PORT --num_processes P --process_id I` on each (or
`--distributed` on TPU pods and SLURM, where jax finds them); each generates only its share of
every batch, and only process 0 writes files. A process that dies makes the others exit with an
error after `--heartbeat_timeout` seconds; the same commands then resume from the checkpoint.
`--forward_chunk M` (M dividing each device's share) makes runs on any device count
bit-identical.
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from experiments.cli import UsageError
from experiments.progress import progress
from jaxdissect import checkpoint, dissect, examples, precision, sharding, zoo
from jaxdissect.report import document, html, strips

_MODEL = flags.DEFINE_string("model", "sceneworld", f"Generator: one of {list(zoo.GENERATORS)}.")
_SEGMENTER = flags.DEFINE_string("segmenter", None, "Segmenter (default: the model's usual one, "
                                 "zoo.default_segmenter).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(precision.DTYPES),
                           "Precision of the generator and segmenter (bfloat16 for GPUs and "
                           "TPUs); the statistics are float32 either way.")
_LAYERS = flags.DEFINE_list("layers", None, "Layers to dissect (default: all but the output).")
_N = flags.DEFINE_integer("n", 1000, "Number of images.")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
_SEED = flags.DEFINE_integer("seed", 1, "z sample seed.")
_THRESHOLD = flags.DEFINE_string(
    "threshold", "0.01", "Top fraction q of each unit's upsampled activations that counts as "
    "'on' (0 < q < 1), or 'iqr' for GAN Dissection's IQR-maximising threshold.")
_IOU_THRESHOLD = flags.DEFINE_float("iou_threshold", 0.04, "IoU above which a unit counts as "
                                    "interpretable.")
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
_DEVICES = flags.DEFINE_integer("devices", None, "Local devices to split batches over (default: "
                                "all); the first N of each process.")
_WARMUP_ON = flags.DEFINE_enum("warmup_on", "auto", ["auto", "host", "device"],
                               "Where the quantile warmup ranks activations: on the host "
                               "(numpy), on the devices (top-k; only the tail leaves them) or "
                               "auto (devices unless they are CPUs). Same brackets either way.")
_FORWARD_CHUNK = flags.DEFINE_integer("forward_chunk", 0, "Images per generator/segmenter call "
                                      "on a device (0: its whole share of a batch).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 in a "
                                   "multi-process run (with --num_processes, --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process run that jax "
                                 "detects (TPU pods, SLURM, JAX_COORDINATOR_ADDRESS).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds after which the processes "
                                  "of a multi-process run give up on one that stopped answering.")

# Flags whose values change the running state; a checkpoint is reused only if they match.
_STATE_FLAGS = ("model", "segmenter", "layers", "batch_size", "seed", "threshold", "topk",
                "bins", "warmup", "iou_tolerance", "max_passes", "forward_chunk", "dtype")


def _threshold(text: str) -> float | str:
  if text.strip().lower() == "iqr":
    return "iqr"
  try:
    q = float(text)
  except ValueError:
    raise UsageError(f"--threshold={text!r} is neither a number in (0, 1) nor 'iqr'") from None
  if not 0.0 < q < 1.0:
    raise UsageError(f"--threshold={text} is out of range; give a top fraction q with "
                     "0 < q < 1 (e.g. 0.01) or 'iqr'")
  return q


def _check_outdir(outdir: str) -> str:
  if not outdir or not outdir.strip():
    raise UsageError("--outdir is empty; give a folder to write the dissection to")
  outdir = os.path.abspath(outdir)
  if not sharding.is_primary():
    return outdir  # only process 0 writes
  if os.path.exists(outdir) and not os.path.isdir(outdir):
    raise UsageError(f"--outdir={outdir} exists and is not a folder")
  try:
    os.makedirs(outdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=outdir):
      pass
  except OSError as e:
    raise UsageError(f"--outdir={outdir} is not writable ({e.strerror})") from None
  return outdir


def _settings(model: str, segmenter: str, layers: list[str]) -> dict:
  """The flags that shape the results (not where they go or how verbose the run is)."""
  return {"model": model, "segmenter": segmenter, "layers": layers, "n": _N.value,
          "batch_size": _BATCH.value, "seed": _SEED.value, "threshold": _THRESHOLD.value,
          "iou_threshold": _IOU_THRESHOLD.value, "topk": _TOPK.value, "bins": _BINS.value,
          "warmup": _WARMUP.value, "iou_tolerance": _TOLERANCE.value,
          "max_passes": _MAX_PASSES.value, "tile": _TILE.value,
          "forward_chunk": _FORWARD_CHUNK.value, "dtype": _DTYPE.value}


def _resume(root: str, run: dissect.Run, settings: dict) -> dissect.State | None:
  """The checkpointed state to continue from, or None to start over."""
  meta = checkpoint.latest_meta(root)
  if meta is None:
    return None
  if _FRESH.value:
    logging.info("--fresh: discarding the checkpoint in %s", root)
    return None
  wanted = {k: settings[k] for k in _STATE_FLAGS}
  if meta.get("settings") != wanted:
    diff = {k: (meta.get("settings", {}).get(k), v) for k, v in wanted.items()
            if meta.get("settings", {}).get(k) != v}
    raise UsageError(f"{root} holds a checkpoint of a run with other settings "
                     f"(checkpoint, now): {diff}; pass --fresh to discard it or choose another "
                     "--outdir")
  like = dissect.template_state(run)
  tree, meta = checkpoint.load_latest(root, dissect.state_to_tree(like))
  state = dissect.state_from_tree(tree, like)
  if int(state.images) > run.config.n:
    logging.info("checkpoint has %d images, more than --n=%d: starting over", int(state.images),
                 run.config.n)
    return None
  # Another n continues the run only if its brackets are the ones a fresh run would use: the
  # same warmup images, and no refined brackets (those depend on the old n's first pass).
  old_n, config = meta.get("n"), run.config
  if old_n != config.n and (int(state.passes) > 0 or old_n is None
                            or min(old_n, config.warmup) != min(config.n, config.warmup)):
    logging.info("checkpoint of --n=%s cannot be extended to --n=%d (its brackets depend on "
                 "its n): starting over", old_n, config.n)
    return None
  logging.info("resuming from %s: pass %d, %d images tallied", root, int(state.passes) + 1,
               int(state.images))
  return state


def _resume_everywhere(root: str, run: dissect.Run, settings: dict) -> dissect.State | None:
  """`_resume` on process 0, its outcome sent to every process (only process 0 reads files)."""
  if jax.process_count() == 1:
    return _resume(root, run, settings)
  like = dissect.template_state(run)
  tree, status, error = checkpoint.to_numpy(dissect.state_to_tree(like)), 0, None
  if sharding.is_primary():
    try:
      state = _resume(root, run, settings)
    except (UsageError, checkpoint.CheckpointError) as e:
      status, error = 2, e
    else:
      if state is not None:
        status, tree = 1, checkpoint.to_numpy(dissect.state_to_tree(state))
  status = int(sharding.broadcast_from_primary(np.int32(status)))
  if status == 2:
    if error is not None:
      raise error
    raise UsageError("process 0 cannot resume from its checkpoint (its log says why)")
  if status == 0:
    return None
  return dissect.state_from_tree(sharding.broadcast_from_primary(tree), like)


def _run_passes(run: dissect.Run, state: dissect.State | None, root: str,
                meta: dict) -> dict[str, dissect.LayerResult]:
  """Tallies (resuming `state`), checkpointing as it goes; returns the per-layer results.

  States are per device while tallying; a checkpoint merges them (every process takes part) and
  process 0 saves the merged state.
  """
  config = run.config

  def save(s):
    merged = dissect.gather_state(run, s)
    if sharding.is_primary():
      checkpoint.save_latest(root, dissect.state_to_tree(merged), meta)

  if state is None:
    logging.info("warmup: %d images predict each unit's threshold bracket",
                 min(config.n, config.warmup))
    state = dissect.start(run)
    save(state)
  else:
    state = dissect.place_state(run, state)
  while True:
    done = dissect.images_tallied(state)
    batches = dissect.remaining(run, state)
    desc = f"pass {dissect.passes_done(state) + 1}"
    count = 0
    for first, z in progress(batches, config.n - done, desc=desc, unit="img",
                             scale=config.batch_size, quiet=_QUIET.value):
      state = run.step(state, z, jnp.int32(first))
      count += 1
      if count % _EVERY.value == 0:
        save(state)
    save(state)
    results, next_state = dissect.finish(run, state)
    if results is not None:
      return results
    logging.info("some units' thresholds need a narrower bracket: pass %d",
                 dissect.passes_done(next_state) + 1)
    state = next_state
    save(state)


def _write_outputs(outdir: str, doc: dict, results: dict[str, dissect.LayerResult], gen,
                   config: dissect.Config) -> None:
  for layer, result in results.items():
    folder = os.path.join(outdir, document.layer_dirname(layer))
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "iou.npy"), result.iou.astype(np.float32))
    np.save(os.path.join(folder, "thresholds.npy"), result.thresholds.astype(np.float32))
  if _IMAGES.value:
    tops = {layer: r.top_indices for layer, r in results.items()}
    bar = lambda it, total: progress(it, total, desc="top images", unit="img",
                                     scale=config.batch_size, quiet=_QUIET.value)
    found = examples.top_examples(gen, tops, config.seed, config.zdim, config.batch_size, bar)
    for layer, result in results.items():
      ex = found[layer]
      for u in range(len(result.label)):
        k = examples.example_count(result.top_indices[u])
        if k:
          strip = strips.unit_strip(ex.images[u, :k], ex.maps[u, :k],
                                    float(result.thresholds[u]), tile=_TILE.value)
          strips.save_jpeg(os.path.join(outdir, document.unit_image_path(layer, u)), strip)
  cli.write_json(os.path.join(outdir, "dissect.json"), doc)
  html.write_report(outdir, doc)


def _join_processes() -> None:
  """Joins a multi-process run when the flags ask for one (before any device is touched)."""
  try:
    sharding.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                        heartbeat_timeout_s=_HEARTBEAT.value, auto=_DISTRIBUTED.value)
  except ValueError as e:
    raise UsageError(str(e)) from None


def _mesh(batch_size: int):
  try:
    devices = _DEVICES.value
    if devices is None:
      devices = sharding.devices_for_batch(batch_size)
      if devices < jax.local_device_count():
        logging.info("Using %d of %d local devices: --batch_size %d splits evenly over %d; pass "
                     "--devices to insist on more.", devices, jax.local_device_count(),
                     batch_size, devices)
    mesh = sharding.data_mesh(devices)
    sharding.check_batch(batch_size, mesh)
  except ValueError as e:
    raise UsageError(f"--devices/--batch_size: {e}") from None
  return mesh


def run_dissection() -> str:
  """Everything `main` does; returns the output folder. Raises UsageError for bad flags."""
  _join_processes()
  model = _MODEL.value
  if model not in zoo.GENERATORS:
    raise UsageError(f"--model={model!r} is unknown; valid models are: "
                     f"{', '.join(zoo.GENERATORS)}")
  segmenter = _SEGMENTER.value or zoo.default_segmenter(model)
  if segmenter not in zoo.SEGMENTERS:
    raise UsageError(f"--segmenter={segmenter!r} is unknown; valid segmenters are: "
                     f"{', '.join(zoo.SEGMENTERS)}")
  threshold = _threshold(_THRESHOLD.value)
  gen = precision.generator_in(zoo.load_generator(model), _DTYPE.value)
  seg = precision.segmenter_in(zoo.load_segmenter(segmenter), _DTYPE.value)
  layers = list(_LAYERS.value) if _LAYERS.value else list(gen.layers[:-1])
  for layer in layers:
    if layer not in gen.layers:
      raise UsageError(f"--layers: unknown layer {layer!r}; valid layers of {model} are: "
                       f"{', '.join(gen.layers)}")
  config = dissect.Config(
      layers=tuple(layers), n=_N.value, zdim=zoo.latent_dim(model), batch_size=_BATCH.value,
      seed=_SEED.value, threshold=threshold, topk=_TOPK.value, num_bins=_BINS.value,
      warmup=_WARMUP.value, iou_tolerance=_TOLERANCE.value, max_passes=_MAX_PASSES.value,
      forward_chunk=_FORWARD_CHUNK.value, warmup_on=_WARMUP_ON.value)
  if _EVERY.value < 1:
    raise UsageError(f"--checkpoint_every={_EVERY.value}; expected a positive number of batches")
  if _TILE.value < 8:
    raise UsageError(f"--tile={_TILE.value}; expected at least 8 pixels")
  mesh = _mesh(config.batch_size)
  try:
    run = dissect.prepare(gen, seg, config, mesh)
  except ValueError as e:
    raise UsageError(str(e)) from None
  outdir = _OUTDIR.value
  outdir = _check_outdir(os.path.join("results", f"dissect-{model}") if outdir is None else outdir)
  settings = _settings(model, segmenter, layers)
  root = os.path.join(outdir, "checkpoint")
  meta = {"settings": {k: settings[k] for k in _STATE_FLAGS}, "n": config.n}
  state = _resume_everywhere(root, run, settings)
  logging.info("dissecting %s of %s with the %s segmenter: %d images, threshold %s, %d "
               "device(s) in %d process(es) -> %s", ",".join(layers), model, segmenter,
               config.n, _THRESHOLD.value, mesh.devices.size, jax.process_count(), outdir)
  start = time.perf_counter()
  results = _run_passes(run, state, root, meta)
  logging.info("tallies done in %.1f s", time.perf_counter() - start)
  doc = document.dissection_doc(results, seg.concepts, model=model, segmenter=segmenter,
                                settings=settings, iou_threshold=_IOU_THRESHOLD.value,
                                iqr=threshold == "iqr")
  if not sharding.is_primary():
    return outdir  # process 0 writes the results
  _write_outputs(outdir, doc, results, gen, config)
  for record in doc["layers"]:
    counts = ", ".join(f"{c} {k}" for c, k in record["concept_counts"].items())
    logging.info("%s: %d/%d units interpretable (%s)", record["layer"], record["interpretable"],
                 len(record["units"]), counts or "none")
  logging.info("wrote %s (open report.html in a browser)", outdir)
  return outdir


def main(argv):
  cli.run_main("dissect", run_dissection, argv,
               failures=(checkpoint.CheckpointError, FloatingPointError, ValueError))


if __name__ == "__main__":
  app.run(main)
