"""Where can a concept be drawn? Inserting its units at every spot, by what is already there.

Command (about 3 minutes on 2 CPU cores for the scene GAN's layer4):

  python -m experiments.insert --dissection results/dissect-sceneworld --concept door \
      --layer layer4

takes the top `--units` units of `--layer` for the concept (by the dissection's IoU, or by the
learned alpha of `units-<concept>.json` with `--ranking alpha`), and on `--n` images (z seed
`--seed`) inserts them, at their dissection thresholds times `--value_scale`, at one featuremap
cell at a time, every cell. The change of the concept's pixel fraction is tabulated by the
label at the cell's centre in the unedited image: the paper's finding is that doors appear on
buildings, not in the sky. Writes `insertion-<concept>.json` (inputs, units, every number) and
`insertion-<concept>.svg` into the dissection folder.
"""

from __future__ import annotations

from absl import app, flags, logging
import jax.numpy as jnp
import numpy as np

from experiments import cli
from experiments.cli import UsageError
from experiments.dissection_io import (INSERT_VALUES, concept_index, header, insertion_values,
                                       learned_alpha, open_dissection, pick_layer, result_stem)
from experiments.progress import progress_hook
from jaxdissect import causal, unitsets
from jaxdissect.report import svg

_DISSECTION = flags.DEFINE_string("dissection", "results/dissect-sceneworld",
                                  "Output folder of experiments.dissect.")
_CONCEPT = flags.DEFINE_string("concept", "door", "Concept to insert.")
_LAYER = flags.DEFINE_string("layer", None, "Layer (default: the one with the concept's best "
                             "unit).")
_UNITS = flags.DEFINE_integer("units", 20, "How many of the concept's top units to insert.")
_RANKING = flags.DEFINE_enum("ranking", "iou", ["iou", "alpha"], "Which units: by IoU or by "
                             "the learned alpha of optimize_units.")
_INSERT_VALUE = flags.DEFINE_enum("insert_value", "quantile", list(INSERT_VALUES),
                                  "Insertion level per unit: quantile (its dissection threshold, "
                                  "the 0.99 quantile at q=0.01) or concept_mean (its mean on the "
                                  "concept's pixels).")
_VALUE_SCALE = flags.DEFINE_float("value_scale", 1.0, "Multiplier of the insertion level.")
_N = flags.DEFINE_integer("n", 100, "Images.")
_SEED = flags.DEFINE_integer("seed", 4, "z seed of the images.")
_BATCH = flags.DEFINE_integer("batch_size", 20, "Images per batch.")
_CHUNK = flags.DEFINE_integer("chunk", 16, "Cells vmapped per generator call.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")


def run_insertion() -> str:
  dissection, models = open_dissection(_DISSECTION.value)
  concept = _CONCEPT.value
  c = concept_index(dissection, concept)
  layer = pick_layer(dissection, concept, _LAYER.value)
  h, w, num_units = layer.shape
  if not 1 <= _UNITS.value <= num_units:
    raise UsageError(f"--units={_UNITS.value}; {layer.layer} has {num_units} units")
  iou = dissection.iou(layer)[:, c]
  if _RANKING.value == "alpha":
    alpha = learned_alpha(_DISSECTION.value, concept, layer, "--ranking alpha")
    order = unitsets.ranking(alpha, iou)
  else:
    order = np.argsort(-iou, kind="stable")
  units = order[: _UNITS.value]
  alpha = np.zeros(num_units, np.float32)
  alpha[units] = 1.0
  gen, seg = models.generator, models.segmenter
  values = insertion_values(layer, _INSERT_VALUE.value, gen, seg, c) * _VALUE_SCALE.value
  ctx = causal.insertion_context(
      gen, seg, layer.layer, jnp.asarray(alpha), jnp.asarray(values), c, (h, w), n=_N.value,
      batch_size=_BATCH.value, seed=_SEED.value, chunk=_CHUNK.value,
      progress=progress_hook(_QUIET.value, "insert"))
  names = [name for name, _ in dissection.concepts]
  table = {names[k]: {"added": float(ctx.mean[k]), "ci99": float(ctx.ci99[k]),
                      "count": int(ctx.count[k])}
           for k in range(1, len(names)) if ctx.count[k] > 0}
  ranked = dict(sorted(table.items(), key=lambda kv: -kv[1]["added"]))
  out = {**header(dissection, layer),
         "concept": concept, "units": [int(u) for u in units],
         "values": [float(values[u]) for u in units],
         "settings": {"n": _N.value, "seed": _SEED.value, "ranking": _RANKING.value,
                      "insert_value": _INSERT_VALUE.value, "value_scale": _VALUE_SCALE.value,
                      "units": _UNITS.value},
         "context": ranked}
  stem = result_stem(_DISSECTION.value, "insertion", concept)
  cli.write_json(stem + ".json", out)
  with open(stem + ".svg", "w") as f:
    f.write(svg.bar_chart({k: (v["added"], v["ci99"]) for k, v in ranked.items()},
                          f"{concept} fraction added",
                          f"Inserting {concept} units of {layer.layer}, by context"))
  for name, v in ranked.items():
    logging.info("on %-10s +%.4f +- %.4f of the image becomes %s (%d spots)", name, v["added"],
                 v["ci99"], concept, v["count"])
  logging.info("wrote %s.json and .svg", stem)
  return stem


def main(argv):
  cli.run_main("insert", run_insertion, argv)


if __name__ == "__main__":
  app.run(main)
