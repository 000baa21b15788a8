"""The one run loop of a dissection: passes, checkpoints, resume and progress, then the files.

`dissect.dissect` computes results in memory; a real run also needs to survive being killed,
to continue a finished run to a larger n, to say how far it is, and to leave the output folder
of design §4. That loop lives here once, for the CLI, the benchmarks and library users alike:

    results = driver.run(gen, seg, config, checkpoint_dir="out/checkpoint")
    driver.write(outdir, results, gen, seg, config, model="mine", segmenter="color")

Progress hooks follow one convention everywhere in jaxdissect: `progress(stage, done, total)`,
called after each batch with images done and images in the stage. `note(text)` receives the
run's few narrative lines (resuming, another pass); the library itself never prints.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from jaxdissect import checkpoint, dissect, sharding, thresholds
from jaxdissect.model import Generator, Segmenter
from jaxdissect.report import output

Progress = Callable[[str, int, int], None]
Note = Callable[[str], None]


def no_progress(stage: str, done: int, total: int) -> None:  # pylint: disable=unused-argument
  """The default progress hook: silent."""


def no_note(text: str) -> None:  # pylint: disable=unused-argument
  """The default note hook: silent."""


class ResumeError(ValueError):
  """A checkpoint that belongs to a run with other settings (one line; `fresh` discards it)."""


def run(gen: Generator, seg: Segmenter, config: dissect.Config, *, mesh: Mesh | None = None,
        checkpoint_dir: str | None = None, checkpoint_every: int = 5, fresh: bool = False,
        identity: Mapping[str, Any] | None = None, progress: Progress = no_progress,
        note: Note = no_note) -> dict[str, dissect.LayerResult]:
  """Dissects as `dissect.dissect` does, checkpointing to `checkpoint_dir` and resuming from it.

  `identity`: what must match for a checkpoint to be resumed (the settings that shape the
  tallies, e.g. model and segmenter names); a mismatch raises ResumeError unless `fresh`. A
  finished run asked for a larger n continues from its images when its brackets would be the
  same (same warmup images, no refined pass). In a multi-process run every process calls this;
  process 0 reads and writes the checkpoints.
  """
  return run_prepared(dissect.prepare(gen, seg, config, mesh), checkpoint_dir=checkpoint_dir,
                      checkpoint_every=checkpoint_every, fresh=fresh, identity=identity,
                      progress=progress, note=note)


def run_prepared(prepared: dissect.Run, *, checkpoint_dir: str | None = None,
                 checkpoint_every: int = 5, fresh: bool = False,
                 identity: Mapping[str, Any] | None = None, progress: Progress = no_progress,
                 note: Note = no_note, timings: dict[str, float] | None = None
                 ) -> dict[str, dissect.LayerResult]:
  """`run` on an already prepared (compiled) run. `timings`, when given, is filled with wall
  seconds of the warmup, the tallying and the finishing of all passes, the pass count and the
  total; the tally is then waited for before each finish so the stages are timed apart."""
  if checkpoint_every < 1:
    raise ValueError(f"checkpoint_every is {checkpoint_every}; expected a positive number of "
                     "batches")
  config = prepared.config
  meta = {"settings": dict(identity or {}), "n": config.n}
  clock = _Clock(timings)
  state = None
  if checkpoint_dir is not None:
    state = _resume_everywhere(checkpoint_dir, prepared, meta, fresh, note)

  def save(s):
    if checkpoint_dir is None:
      return
    merged = dissect.gather_state(prepared, s)
    if sharding.is_primary():
      checkpoint.save_latest(checkpoint_dir, dissect.state_to_tree(merged), meta)

  if state is None:
    note(f"warmup: {min(config.n, config.warmup)} images predict each unit's threshold bracket")
    state = dissect.start(prepared)
    clock.lap("warmup_s")
    tallied = dissect.images_tallied(state)  # the warmup's own images, when it kept them
    if tallied:
      progress("pass 1", tallied, config.n)
    if timings is not None:
      timings["warmup_images"] = tallied
    save(state)
  else:
    state = dissect.place_state(prepared, state)
  while True:
    stage = f"pass {dissect.passes_done(state) + 1}"
    for count, (first, z) in enumerate(dissect.remaining(prepared, state), 1):
      state = prepared.step(state, z, first)
      progress(stage, first + len(z), config.n)
      if count % checkpoint_every == 0:
        save(state)
    clock.lap("tally_s", state)
    save(state)
    results, state = dissect.finish(prepared, state)
    clock.lap("finish_s")
    clock.count("passes")
    if results is not None:
      clock.total()
      return results
    note(f"some units' thresholds need a narrower bracket: pass {dissect.passes_done(state) + 1}")
    save(state)


class _Clock:
  """Stage timings for `run_prepared` (does nothing, and waits for nothing, without a dict)."""

  def __init__(self, timings: dict[str, float] | None):
    self.timings = timings
    self.start = self.last = time.perf_counter()
    if timings is not None:
      timings.update(warmup_s=0.0, tally_s=0.0, finish_s=0.0, passes=0)

  def lap(self, key: str, wait_for: Any = None) -> None:
    if self.timings is None:
      return
    if wait_for is not None:
      jax.block_until_ready(wait_for)
    now = time.perf_counter()
    self.timings[key] += now - self.last
    self.last = now

  def count(self, key: str) -> None:
    if self.timings is not None:
      self.timings[key] += 1

  def total(self) -> None:
    if self.timings is not None:
      self.timings["total_s"] = time.perf_counter() - self.start


def _resume(root: str, run: dissect.Run, meta: dict, fresh: bool,
            note: Note) -> dissect.State | None:
  """The checkpointed state to continue from, or None to start over."""
  saved = checkpoint.latest_meta(root)
  if saved is None:
    return None
  if fresh:
    note(f"fresh: discarding the checkpoint in {root}")
    return None
  wanted, had = meta["settings"], saved.get("settings", {})
  if had != wanted:
    diff = {k: (had.get(k), wanted.get(k)) for k in sorted(set(had) | set(wanted))
            if had.get(k) != wanted.get(k)}
    raise ResumeError(f"{root} holds a checkpoint of a run with other settings (checkpoint, "
                      f"now): {diff}; pass --fresh to discard it or choose another --outdir")
  like = dissect.template_state(run)
  tree, saved = checkpoint.load_latest(root, dissect.state_to_tree(like))
  state = dissect.state_from_tree(tree, like)
  config = run.config
  if int(state.images) > config.n:
    note(f"checkpoint has {int(state.images)} images, more than n={config.n}: starting over")
    return None
  # Another n continues the run only if its brackets are the ones a fresh run would use: the
  # same warmup images, and no refined brackets (those depend on the old n's first pass).
  old_n = saved.get("n")
  if old_n != config.n and (int(state.passes) > 0 or old_n is None
                            or min(old_n, config.warmup) != min(config.n, config.warmup)
                            or _levels_depend_on_n(config)):
    note(f"checkpoint of n={old_n} cannot be extended to n={config.n} (its brackets depend "
         "on its n): starting over")
    return None
  note(f"resuming from {root}: pass {int(state.passes) + 1}, {int(state.images)} images tallied")
  return state


def _levels_depend_on_n(config: dissect.Config) -> bool:
  """Whether a staged run's levels were chosen on its own first n images (or n of another
  sample): then another n means other levels."""
  return (config.staged and config.given_thresholds is None and config.threshold_n is None)


def _resume_everywhere(root: str, run: dissect.Run, meta: dict, fresh: bool,
                       note: Note) -> dissect.State | None:
  """`_resume` on process 0, its outcome sent to every process (only process 0 reads files)."""
  if jax.process_count() == 1:
    return _resume(root, run, meta, fresh, note)
  like = dissect.template_state(run)
  tree, status, error = checkpoint.to_numpy(dissect.state_to_tree(like)), 0, None
  if sharding.is_primary():
    try:
      state = _resume(root, run, meta, fresh, note)
    except (ResumeError, checkpoint.CheckpointError) as e:
      status, error = 2, e
    else:
      if state is not None:
        status, tree = 1, checkpoint.to_numpy(dissect.state_to_tree(state))
  status = int(sharding.broadcast_from_primary(np.int32(status)))
  if status == 2:
    if error is not None:
      raise error
    raise ResumeError("process 0 cannot resume from its checkpoint (its log says why)")
  if status == 0:
    return None
  return dissect.state_from_tree(sharding.broadcast_from_primary(tree), like)


def write(outdir: str, results: Mapping[str, dissect.LayerResult], gen: Generator,
          seg: Segmenter, config: dissect.Config, *, model: str, segmenter: str,
          settings: Mapping[str, Any] | None = None,
          interpretable: thresholds.Interpretable | None = None, images: bool = True,
          tile: int = 128, progress: Progress = no_progress) -> dict:
  """Writes the output folder of design §4 (process 0 only); returns the `dissect.json` doc.

  `settings` are recorded as given (the CLI records every flag); `interpretable` is the rule
  (default: `thresholds.interpretable_for(config.threshold)`, IoU > 0.04, or for IQR
  thresholds the original's IQR > 0.01 and IoU > 0.05); `images=False` skips the unit strips
  (which regenerate every unit's top images).
  """
  if interpretable is None:
    interpretable = thresholds.interpretable_for(config.threshold, has_iqr=config.staged or None)
  doc = output.document_of(results, seg.concepts, config, model=model, segmenter=segmenter,
                           settings=settings, interpretable=interpretable)
  if sharding.is_primary():
    os.makedirs(outdir, exist_ok=True)
    output.write_folder(outdir, doc, results, gen, config, images=images, tile=tile,
                        progress=progress)
  return doc
