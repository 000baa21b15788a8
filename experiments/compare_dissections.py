"""Compares finished dissections side by side (e.g. the scene ProgGAN and the scene StyleGAN2).

Command (seconds; the dissections and ablations are made first, see README "Two architectures
on the same world"):

  python -m experiments.compare_dissections \
      --dissections results/dissect-sceneworld,results/dissect-sceneworld-stylegan2 \
      --names ProgGAN,StyleGAN2 --concepts tree,door,window --out results/compare

reads each folder's `dissect.json` and its `ablation-<concept>.json` for every `--concepts`
(written by `experiments.ablate`; a missing one is reported as not measured) and writes into
`--out`:
  * `compare.html`: one self-contained page: a summary table, each model's interpretable units
    per layer and category side by side, the share of interpretable units against relative depth,
    the concepts covered, the ablation curves of every concept with all models on one chart;
  * `compare.json`: every number shown;
  * `compare.md`: the tables in Markdown (what README and BENCHMARKS quote);
  * `depth.svg` and `ablation-<concept>.svg`: the charts on their own.
The ablation curve shown is each model's `--ranking` curve, the first of the list that it has.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from experiments import cli
from experiments.cli import UsageError
from jaxdissect.report import compare, document
from jaxdissect.report.reader import DissectionReadError, read_ablation, read_dissection

_DISSECTIONS = flags.DEFINE_list("dissections", None, "Dissection folders to compare.")
_NAMES = flags.DEFINE_list("names", None, "A short name per dissection (default: its model "
                           "spec).")
_CONCEPTS = flags.DEFINE_list("concepts", ["tree", "door", "window"], "Concepts whose ablation "
                              "curves are compared.")
_RANKING = flags.DEFINE_list("ranking", ["ace", "iou"], "Which ablation curve to show: the first "
                             "of these rankings a result has.")
_OUT = flags.DEFINE_string("out", "results/compare", "Output folder.")
_TITLE = flags.DEFINE_string("title", "Dissections compared", "Page title.")


def load_summaries(folders, names, concepts) -> list[compare.ModelSummary]:
  """Each folder's summary with the ablation results it has for `concepts`."""
  if names is not None and len(names) != len(folders):
    raise UsageError(f"--names: {len(names)} names for {len(folders)} dissections")
  summaries = []
  for i, folder in enumerate(folders):
    try:
      dissection = read_dissection(folder)
      ablations = []
      for c in concepts:
        path = os.path.join(folder, f"ablation-{document.layer_dirname(c)}.json")
        if os.path.exists(path):
          ablations.append(read_ablation(path))
        else:
          logging.warning("%s: no %s (run experiments.ablate --concept %s)", folder,
                          os.path.basename(path), c)
    except DissectionReadError as e:
      raise UsageError(f"--dissections: {e}") from None
    summaries.append(compare.summarize(dissection, names[i] if names else None, ablations))
  return summaries


def run() -> None:
  if not _DISSECTIONS.value:
    raise UsageError("--dissections: name at least one dissection folder")
  summaries = load_summaries(_DISSECTIONS.value, _NAMES.value, _CONCEPTS.value)
  doc = compare.comparison_doc(summaries, _CONCEPTS.value, _RANKING.value)
  out = _OUT.value
  os.makedirs(out, exist_ok=True)
  cli.write_json(os.path.join(out, "compare.json"), doc)
  files = {"compare.html": compare.comparison_html(doc, _TITLE.value),
           "compare.md": compare.markdown(doc), "depth.svg": compare.depth_chart(doc)}
  for c in _CONCEPTS.value:
    files[f"ablation-{document.layer_dirname(c)}.svg"] = compare.ablation_chart(doc, c)
  for name, text in files.items():
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
      f.write(text)
  logging.info("compared %d dissections:\n%s\nwrote %s", len(summaries), files["compare.md"],
               os.path.join(out, "compare.html"))


def main(argv):
  cli.run_main("compare_dissections", run, argv)


if __name__ == "__main__":
  app.run(main)
