"""Learns a small set of units that controls a concept, then checks it by discrete ablation.

Command (about 5 minutes on 2 CPU cores for the scene GAN's layer4):

  python -m experiments.optimize_units --dissection results/dissect-sceneworld --concept tree \
      --layer layer4

learns one coefficient alpha in [0, 1] per unit of `--layer` (`jaxdissect.unitsets`: Adam on
erase - insert + l2 |alpha|^2 [+ l1 |alpha|_1], through the soft segmenter, `--steps` batches of
z seed `--seed`, alpha initialised from the dissection's IoU with the concept), checkpointing
every `--checkpoint_every` steps (rerun to resume; `--fresh` restarts). Then, on `--eval_n`
held-out images (z seed `--eval_seed`), it ablates the top k units by alpha for k = 0..
`--max_units` and reports the share of concept pixels removed with 99% confidence intervals and
the smallest k that removes `--target` of them. Writes `units-<concept>.json` (alpha, ranking,
loss history, verification) into the dissection folder; `experiments.ablate --rankings alpha`
plots it against the other rankings.
"""

from __future__ import annotations

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from experiments.cli import UsageError
from experiments.dissection_io import (INSERT_VALUES, concept_index, header, insertion_values,
                                       open_dissection, pick_layer, result_stem)
from experiments.progress import progress, progress_hook
from jaxdissect import causal, checkpoint, latents, unitsets
from jaxdissect.model import probabilities_of

_DISSECTION = flags.DEFINE_string("dissection", "results/dissect-sceneworld",
                                  "Output folder of experiments.dissect.")
_CONCEPT = flags.DEFINE_string("concept", "tree", "Concept the unit set should control.")
_LAYER = flags.DEFINE_string("layer", None, "Layer (default: the one with the concept's best "
                             "unit).")
_STEPS = flags.DEFINE_integer("steps", 300, "Optimizer steps (one batch each).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per step.")
_LR = flags.DEFINE_float("learning_rate", 0.02, "Adam learning rate.")
_L2 = flags.DEFINE_float("l2", 0.005, "L2 penalty on alpha (as the original).")
_L1 = flags.DEFINE_float("l1", 0.0, "L1 penalty on alpha, for sparser (minimal) sets.")
_RELAXATION = flags.DEFINE_enum("relaxation", "clip", list(unitsets.RELAXATIONS),
                                "clip: alpha projected to [0, 1] (the original); hard_concrete: "
                                "stochastic 0/1 gates with an expected-L0 penalty (--l0).")
_L0 = flags.DEFINE_float("l0", 0.0, "Penalty per expected open gate (hard_concrete only).")
_INSERT_VALUE = flags.DEFINE_enum("insert_value", "quantile", list(INSERT_VALUES),
                                  "Insertion level per unit: quantile (its dissection threshold, "
                                  "the 0.99 quantile at q=0.01) or concept_mean (its mean on the "
                                  "concept's pixels).")
_KEY = flags.DEFINE_integer("key", 0, "PRNG seed of the hard-concrete gate draws.")
_SEED = flags.DEFINE_integer("seed", 10, "z seed of the training images.")
_EVAL_N = flags.DEFINE_integer("eval_n", 200, "Held-out images for the discrete check.")
_EVAL_SEED = flags.DEFINE_integer("eval_seed", 3, "z seed of the held-out images.")
_MAX_UNITS = flags.DEFINE_integer("max_units", 30, "Largest unit set checked.")
_TARGET = flags.DEFINE_float("target", 0.5, "Share of concept pixels a set must remove.")
_EVERY = flags.DEFINE_integer("checkpoint_every", 50, "Steps between checkpoints.")
_FRESH = flags.DEFINE_bool("fresh", False, "Ignore an existing checkpoint.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")


def _settings() -> dict:
  return {"steps": _STEPS.value, "batch_size": _BATCH.value, "learning_rate": _LR.value,
          "l2": _L2.value, "l1": _L1.value, "relaxation": _RELAXATION.value, "l0": _L0.value,
          "key": _KEY.value, "seed": _SEED.value, "insert_value": _INSERT_VALUE.value}


def _save(root: str, state: unitsets.TrainState, history: list, meta: dict) -> None:
  leaves = {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(state))}
  checkpoint.save_latest(root, {"leaves": leaves}, {**meta, "history": history})


def _restore(root: str, like: unitsets.TrainState, meta: dict):
  saved = checkpoint.latest_meta(root)
  if saved is None or _FRESH.value:
    return None
  if {k: saved.get(k) for k in meta} != meta:
    raise UsageError(f"{root} holds a run with other settings; pass --fresh to restart")
  leaves = {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(like))}
  tree, saved = checkpoint.load_latest(root, {"leaves": leaves})
  values = [tree["leaves"][str(i)] for i in range(len(leaves))]
  return jax.tree.unflatten(jax.tree.structure(like), values), saved["history"]


def run_optimization() -> str:
  dissection, models = open_dissection(_DISSECTION.value)
  concept = _CONCEPT.value
  c = concept_index(dissection, concept)
  layer = pick_layer(dissection, concept, _LAYER.value)
  for name, value in (("steps", _STEPS.value), ("batch_size", _BATCH.value),
                      ("eval_n", _EVAL_N.value), ("checkpoint_every", _EVERY.value)):
    if value < 1:
      raise UsageError(f"--{name}={value}; expected a positive integer")
  gen, seg = models.generator, models.segmenter
  cli.checked(probabilities_of, seg, "optimize_units")
  num_units = layer.shape[2]
  iou = dissection.iou(layer)[:, c]
  if _L0.value and _RELAXATION.value != "hard_concrete":
    raise UsageError("--l0 needs --relaxation hard_concrete")
  values = insertion_values(layer, _INSERT_VALUE.value, gen, seg, c)
  objective = unitsets.Objective(l2=_L2.value, l1=_L1.value, l0=_L0.value)
  relaxation = _RELAXATION.value
  loss = unitsets.loss_fn(gen, seg, layer.layer, c, jnp.asarray(values), objective, relaxation)
  optimizer = unitsets.make_optimizer(_LR.value)
  state = unitsets.init_state(jnp.asarray(iou / max(float(iou.max()), 1e-12)), optimizer,
                              relaxation)
  stem = result_stem(_DISSECTION.value, "units", concept)
  root = stem + ".checkpoint"
  meta = {"layer": layer.layer, "concept": concept, "settings": _settings()}
  history: list = []
  restored = _restore(root, state, meta)
  if restored is not None:
    state, history = restored
    logging.info("resuming from step %d of %d", int(state.step), _STEPS.value)
  step = unitsets.step_fn(loss, optimizer, jax.random.key(_KEY.value), relaxation)
  done = int(state.step)
  batches = latents.seeded(_SEED.value).batches(_STEPS.value * _BATCH.value, _BATCH.value,
                                                gen.latent_shape, start=done * _BATCH.value)
  for _, z in progress(batches, _STEPS.value - done, desc="optimize", unit="step",
                       quiet=_QUIET.value):
    state, (value, erase, insert) = step(state, jnp.asarray(z))
    history.append({"loss": float(value), "erase": float(erase), "insert": float(insert)})
    if int(state.step) % _EVERY.value == 0:
      _save(root, state, history, meta)
  _save(root, state, history, meta)
  alpha = np.asarray(unitsets.coefficients(state.params, relaxation))
  order = unitsets.ranking(alpha, iou)
  max_units = min(_MAX_UNITS.value, num_units)
  curve = causal.ablation_curve(gen, seg, layer.layer, order, num_units, max_units=max_units,
                                n=_EVAL_N.value, batch_size=50, seed=_EVAL_SEED.value,
                                progress=progress_hook(_QUIET.value, "check"))
  removed, ci = causal.removed_fraction(curve, c)
  smallest = unitsets.smallest_set(removed, _TARGET.value)
  out = {**header(dissection, layer),
         "concept": concept,
         "settings": {**_settings(), "eval_n": _EVAL_N.value, "eval_seed": _EVAL_SEED.value,
                      "target": _TARGET.value},
         "alpha": alpha.tolist(), "insert_values": [float(v) for v in values], "ranking": [int(u) for u in order],
         "history": history,
         "verification": {"units": [int(u) for u in order[:max_units]],
                          "removed": removed.tolist(), "ci99": ci.tolist(),
                          "baseline": float(curve.baseline[0, c]),
                          "smallest_set": smallest, "target": _TARGET.value}}
  cli.write_json(stem + ".json", out)
  top = ", ".join(f"{u}:{alpha[u]:.2f}" for u in order[:10])
  logging.info("top units by alpha: %s", top)
  logging.info("ablating the top %d removes %.1f%% +- %.1f%% of %s; smallest set reaching "
               "%.0f%%: %s", max_units, 100 * removed[-1], 100 * ci[-1], concept,
               100 * _TARGET.value, smallest if smallest is not None else "none")
  logging.info("wrote %s.json", stem)
  return stem


def main(argv):
  cli.run_main("optimize_units", run_optimization, argv)


if __name__ == "__main__":
  app.run(main)
