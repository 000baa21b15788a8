"""Ablation curves: how much of a concept disappears as its top units are removed.

Command (about 4 minutes on 2 CPU cores for the scene GAN's layer4 and 200 images):

  python -m experiments.ablate --dissection results/dissect-sceneworld --concept tree

reads the dissection in `--dissection` (its model, segmenter and IoU table), ranks the units of
`--layer` (default: the layer holding the concept's best unit) for the concept by each of
`--rankings`: `iou` (the dissection's IoU with the concept) and `ace` (each unit's single-unit
ablation effect on the concept, all units measured in one vmapped sweep), and `alpha` when
`units-<concept>.json` from optimize_units exists. For k = 0..`--max_units` it ablates the top-k
units everywhere on `--n` held-out images (z seed `--seed`, 2 by default, not the dissection's
sample) and measures the share of the concept's pixels removed, with 99% confidence intervals.
Writes `ablation-<concept>.json` (inputs, unit lists, every measured number) and
`ablation-<concept>.svg` (the curves) into the dissection folder.

`--mask stroke.png` (opaque pixels of a PNG with alpha, as the paint page saves strokes, else
white ones; drawn at the generated image's size) confines every ablation to the stroke (pooled to
the layer's grid by `--mask_pooling`) and measures the concept inside it only.

`--units 12,40,7` instead measures one unit set: the average causal effect on every concept of
ablating it and of inserting it (at `--insert_value` levels times `--value_scale`), with 99%
confidence intervals, written to `ace-<concept>.json` (`ace-<concept>-<name>.json` with `--name`).
"""

from __future__ import annotations

import re

from absl import app, flags, logging
import numpy as np

from experiments import cli
from experiments.cli import UsageError
from experiments.dissection_io import (INSERT_VALUES, concept_index, header, insertion_values,
                                       learned_alpha, open_dissection, pick_layer, result_stem)
from experiments.mask_io import grids, load_mask
from experiments.progress import progress_hook
from jaxdissect import causal, unitsets
from jaxdissect.report import svg

_DISSECTION = flags.DEFINE_string("dissection", "results/dissect-sceneworld",
                                  "Output folder of experiments.dissect.")
_CONCEPT = flags.DEFINE_string("concept", "tree", "Concept to remove.")
_LAYER = flags.DEFINE_string("layer", None, "Layer (default: the one with the concept's best "
                             "unit).")
_RANKINGS = flags.DEFINE_list("rankings", ["iou", "ace"], "Unit rankings: iou, ace, alpha.")
_MAX_UNITS = flags.DEFINE_integer("max_units", 30, "Largest number of units removed.")
_N = flags.DEFINE_integer("n", 200, "Held-out images.")
_SEED = flags.DEFINE_integer("seed", 2, "z seed of the held-out images.")
_BATCH = flags.DEFINE_integer("batch_size", 50, "Images per batch.")
_CHUNK = flags.DEFINE_integer("chunk", 8, "Edits vmapped per generator call.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")
_MASK = flags.DEFINE_string("mask", None, "PNG at the image's size: ablate (and measure) only "
                            "inside it (opaque pixels where it has alpha, else white ones).")
_POOLING = flags.DEFINE_enum("mask_pooling", "max", ["max", "mean"], "How the mask is pooled to "
                             "the layer's grid: max edits every cell it touches, mean scales.")
_UNITS = flags.DEFINE_list("units", None, "Measure this unit set's ablation and insertion ACE "
                           "instead of ranking curves.")
_NAME = flags.DEFINE_string("name", None, "--units: a name for this unit set's result, written to "
                            "ace-<concept>-<name>.json (default ace-<concept>.json), so the "
                            "results of several sets sit side by side.")
_INSERT_VALUE = flags.DEFINE_enum("insert_value", "quantile", list(INSERT_VALUES),
                                  "Insertion level of --units: quantile or concept_mean.")
_VALUE_SCALE = flags.DEFINE_float("value_scale", 1.0, "Insertion level multiplier (--units).")


def run_ablation() -> str:
  dissection, models = open_dissection(_DISSECTION.value)
  concept = _CONCEPT.value
  c = concept_index(dissection, concept)
  for name in _RANKINGS.value:
    if name not in ("iou", "ace", "alpha"):
      raise UsageError(f"--rankings: unknown ranking {name!r}; valid rankings are: iou, ace, alpha")
  layer = pick_layer(dissection, concept, _LAYER.value)
  gen, seg = models.generator, models.segmenter
  num_units = layer.shape[2]
  common = dict(n=_N.value, batch_size=_BATCH.value, seed=_SEED.value)
  if _MASK.value:
    mask = load_mask(_MASK.value, grids(gen, seg, layer.layer), _POOLING.value)
    common.update(mask=mask.layer, region=mask.region)
  if _UNITS.value is not None:
    return _unit_set_effect(dissection, layer, concept, c, gen, seg, common)
  iou = dissection.iou(layer)[:, c]
  orders, alphas, extra = {}, {}, {}
  if "iou" in _RANKINGS.value:
    orders["iou"] = np.argsort(-iou, kind="stable")
  if "ace" in _RANKINGS.value:
    sweep = causal.single_unit_effects(gen, seg, layer.layer, num_units, chunk=_CHUNK.value,
                                       progress=progress_hook(_QUIET.value, "single-unit ACE"),
                                       **common)
    ace = sweep.delta[:, c]
    orders["ace"] = np.lexsort((-iou, ace))  # most negative effect first, then IoU
    extra["single_unit_ace"] = {"delta": ace.tolist(), "ci99": sweep.ci99[:, c].tolist()}
  if "alpha" in _RANKINGS.value:
    alpha = learned_alpha(_DISSECTION.value, concept, layer, "--rankings alpha")
    orders["alpha"] = unitsets.ranking(alpha, iou)
    alphas["alpha"] = alpha
  max_units = min(_MAX_UNITS.value, num_units)
  curves = {}
  for name, order in orders.items():
    effect = causal.ablation_curve(gen, seg, layer.layer, order, num_units,
                                   max_units=max_units, chunk=_CHUNK.value,
                                   alpha=alphas.get(name),
                                   progress=progress_hook(_QUIET.value, f"ablate by {name}"),
                                   **common)
    removed, ci = causal.removed_fraction(effect, c)
    curves[name] = {"units": [int(u) for u in order[:max_units]],
                    "removed": removed.tolist(), "ci99": ci.tolist(),
                    "concept_fraction": effect.edited[:, c].tolist(),
                    "baseline": float(effect.baseline[0, c])}
    logging.info("%s ranking: top %d units remove %.1f%% +- %.1f%% of %s pixels", name,
                 max_units, 100 * removed[-1], 100 * ci[-1], concept)
  out = {**header(dissection, layer),
         "concept": concept, "settings": {**_settings(), "max_units": max_units,
                                          "rankings": list(orders)},
         "rankings": curves, **extra}
  stem = result_stem(_DISSECTION.value, "ablation", concept)
  cli.write_json(stem + ".json", out)
  series = {name: (list(range(max_units + 1)), v["removed"], v["ci99"])
            for name, v in curves.items()}
  with open(stem + ".svg", "w") as f:
    f.write(svg.line_chart(series, "units ablated", f"share of {concept} pixels removed",
                           f"Removing {concept} units of {layer.layer} ({dissection.model})",
                           ymax=1.0))
  logging.info("wrote %s.json and .svg", stem)
  return stem


def _settings() -> dict:
  return {"n": _N.value, "seed": _SEED.value, "batch_size": _BATCH.value, "mask": _MASK.value,
          "mask_pooling": _POOLING.value if _MASK.value else None}


def parse_units(spec: list[str], num_units: int, layer: str) -> list[int]:
  """`--units` as distinct ints in range; raises UsageError naming the bad entry."""
  units = []
  for item in spec:
    try:
      unit = int(item)
    except ValueError:
      raise UsageError(f"--units: {item!r} is not a unit number") from None
    if not 0 <= unit < num_units:
      raise UsageError(f"--units: unit {unit} is out of range; {layer} has units "
                       f"0..{num_units - 1}")
    units.append(unit)
  if not units:
    raise UsageError("--units is an empty unit set; name at least one unit, e.g. --units 3,17")
  return sorted(set(units))


def _unit_set_effect(dissection, layer, concept, c, gen, seg, common) -> str:
  """ACE of ablating and of inserting `--units` on every concept; writes ace-<concept>.json."""
  num_units = layer.shape[2]
  units = parse_units(_UNITS.value, num_units, layer.layer)
  if _NAME.value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", _NAME.value):
    raise UsageError(f"--name={_NAME.value!r}; expected up to 64 letters, digits, '_', '.' or '-'")
  values = insertion_values(layer, _INSERT_VALUE.value, gen, seg, c) * _VALUE_SCALE.value
  alpha = np.zeros((1, num_units), np.float32)
  alpha[0, units] = 1.0
  names = [name for name, _ in dissection.concepts]
  out = {**header(dissection, layer), "concept": concept, "units": units,
         "settings": {**_settings(), "insert_value": _INSERT_VALUE.value,
                      "value_scale": _VALUE_SCALE.value},
         "insert_values": [float(values[u]) for u in units]}
  for kind, level in (("ablation", None), ("insertion", values)):
    effect = causal.edit_effects(gen, seg, layer.layer, alpha, values=level,
                                 progress=progress_hook(_QUIET.value, kind), **common)
    out[kind] = {names[k]: {"baseline": float(effect.baseline[0, k]),
                            "edited": float(effect.edited[0, k]),
                            "delta": float(effect.delta[0, k]), "ci99": float(effect.ci99[0, k])}
                 for k in range(1, len(names))}
    logging.info("%s of %d units: %s fraction %.4f -> %.4f (ACE %+.4f +- %.4f)", kind,
                 len(units), concept, effect.baseline[0, c], effect.edited[0, c],
                 effect.delta[0, c], effect.ci99[0, c])
  stem = result_stem(_DISSECTION.value, "ace", concept)
  stem += f"-{_NAME.value}" if _NAME.value else ""
  cli.write_json(stem + ".json", out)
  logging.info("wrote %s.json", stem)
  return stem


def main(argv):
  cli.run_main("ablate", run_ablation, argv)


if __name__ == "__main__":
  app.run(main)
