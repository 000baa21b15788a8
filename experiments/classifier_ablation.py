"""Class ablation: which units of a classifier's layer each class needs (PNAS, classifier half).

Command (30-45 s on 2 shared CPU cores for the scene classifier's conv5_3, 128 units, 2000
training and 5000 held-out images; most of it rendering, loading and compiling):

  python -m experiments.classifier_ablation --dissection DIR/dissect.json --outdir OUT

zeroes every unit of `--layer` (default: the classifier's last layer with more than one pixel,
conv5_3) alone on `--train_n` images of the training split (`--train_seed`; 1000 is the sample
the scene classifier was trained on) in one vmapped pass per batch, ranks the units of each
class by the balanced accuracy the class loses (ties by the drop of its mean logit margin,
`--tiebreak`; see `jaxdissect.class_margins`), then on `--test_n` held-out images
(`--test_seed`) zeroes each class's top N units together, and separately all units but those,
for N in `--sizes`, and scores every class (balanced accuracy with 99% intervals). Writes
`OUT/class-ablation.json` (settings, the training sweeps, the ranking, every curve, the table
of each class's top units with their labels from `--dissection` when it exists, and the
acceptance check of `experiments.class_summary`) and `OUT/class-ablation.svg` (the curves).
Nothing here runs long enough to need a checkpoint.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
import numpy as np

from experiments import class_sets, class_summary, cli
from experiments.cli import UsageError
from experiments.progress import progress_hook
from jaxdissect import class_ablation
from jaxdissect.report import class_charts

_TEST_N = flags.DEFINE_integer("test_n", 5000, "Held-out images the curves are measured on.")
_TEST_SEED = flags.DEFINE_integer("test_seed", 2000, "Sample of the held-out images.")
_SIZES = flags.DEFINE_list("sizes", [str(s) for s in class_ablation.SIZES],
                           "Numbers of top units ablated (and kept).")
_DISSECTION = flags.DEFINE_string("dissection", None, "dissect.json (or its folder) of the same "
                                  "classifier's layer, for the units' labels (optional).")


def _sizes() -> list[int]:
  try:
    sizes = sorted({int(s) for s in _SIZES.value})
  except ValueError:
    raise UsageError(f"--sizes={','.join(_SIZES.value)}; expected whole numbers") from None
  if not sizes or sizes[0] < 1:
    raise UsageError(f"--sizes={','.join(_SIZES.value)}; expected positive unit counts")
  if class_sets.TOP.value not in sizes:
    raise UsageError(f"--top={class_sets.TOP.value} is not among --sizes "
                     f"({', '.join(map(str, sizes))})")
  return sizes


def _curve_record(curves: class_ablation.Curves) -> dict:
  out = {"sizes": curves.sizes.tolist(), "n": curves.n, "baseline": curves.baseline.tolist(),
         "baseline_ci99": curves.baseline_ci99.tolist()}
  for kind in ("removed", "kept"):
    scores, ci = getattr(curves, kind), getattr(curves, f"{kind}_ci99")
    own, others = class_ablation.own_and_others(scores)
    out[kind] = {"all": scores.tolist(), "ci99": ci.tolist(), "own": own.tolist(),
                 "own_ci99": np.einsum("csc->cs", ci).tolist(), "others_mean": others.tolist()}
  return out


def run_ablation() -> str:
  """Everything `main` does; returns the JSON's path. Raises UsageError for bad flags."""
  sizes = _sizes()
  s = class_sets.setup()
  out = class_sets.outdir()
  classes = s.classifier.classes
  units = class_ablation.num_units(s.classifier, s.layer)
  if sizes[-1] > units:
    raise UsageError(f"--sizes reach {sizes[-1]} but {s.layer} has {units} units")
  ranking = class_sets.rank(s)
  x, y = class_sets.images(s.classifier, _TEST_N.value, _TEST_SEED.value)
  curves = class_ablation.ablation_curves(
      s.classifier, s.layer, x, y, ranking.order, sizes, batch_size=class_sets.BATCH.value,
      chunk=class_sets.CHUNK.value, progress=progress_hook(class_sets.QUIET.value, "curves"))
  check = class_summary.acceptance(curves.removed, curves.baseline, sizes, class_sets.TOP.value)
  labels, note = class_summary.unit_labels(_DISSECTION.value, s.layer)
  margin_drop = None if ranking.margins is None else ranking.margins.drop
  table = class_summary.top_units(ranking.order, ranking.sweep.drop, margin_drop, labels,
                                  classes, class_sets.TOP.value)
  sweep = ranking.sweep
  train = {"n": sweep.n, "baseline": sweep.baseline.tolist(),
           "accuracy_drop": sweep.drop.tolist(), "ablated_ci99": sweep.ci99.tolist()}
  if ranking.margins is not None:
    train.update(margin_baseline=ranking.margins.baseline.tolist(),
                 margin_drop=margin_drop.tolist())
  doc = {"model": s.model, "model_args": s.model_args, "layer": s.layer, "units": units,
         "classes": list(classes),
         "settings": {**class_sets.settings(), "test_n": _TEST_N.value,
                      "test_seed": _TEST_SEED.value, "sizes": sizes,
                      "dissection": _DISSECTION.value},
         "train": train, "ranking": ranking.order.tolist(), "curves": _curve_record(curves),
         "top_units": table, "dissection_note": note,
         "top_units_markdown": class_summary.markdown_table(table, note),
         "acceptance": {**check, "statement": class_summary.statement(check, classes)}}
  path = os.path.join(out, "class-ablation.json")
  cli.write_json(path, doc)
  _write_chart(os.path.join(out, "class-ablation.svg"), curves, classes, s)
  _log(doc)
  return path


def _write_chart(path: str, curves: class_ablation.Curves, classes, s) -> None:
  panels = []
  for kind, title in (("removed", "ablate the top N"), ("kept", "keep only the top N")):
    own, others = class_ablation.own_and_others(getattr(curves, kind))
    ci = np.einsum("csc->cs", getattr(curves, f"{kind}_ci99"))
    panels.append({"title": title, "own": own, "own_ci": ci, "others": others})
  title = (f"Class ablation of {s.layer} ({s.model}), {curves.n} held-out images")
  with open(path, "w") as f:
    f.write(class_charts.curves_chart(panels, curves.sizes.tolist(), classes,
                                      float(np.nanmean(curves.baseline)), title))


def _log(doc: dict) -> None:
  curves = doc["curves"]
  for k, name in enumerate(doc["classes"]):
    logging.info("%-14s unedited %.3f | ablate top %s: %s | keep only: %s", name,
                 curves["baseline"][k], curves["sizes"],
                 " ".join(f"{v:.2f}" for v in curves["removed"]["own"][k]),
                 " ".join(f"{v:.2f}" for v in curves["kept"]["own"][k]))
  logging.info("top units:\n%s", doc["top_units_markdown"])
  logging.info("acceptance: %s", doc["acceptance"]["statement"])


def main(argv):
  cli.run_main("classifier_ablation", run_ablation, argv)


if __name__ == "__main__":
  app.run(main)
