"""Interpretable units per layer of a classifier dissected with several label sources, by category.

PNAS reports how many units of each layer of a scene classifier detect an object, a part, a
material or a colour, and finds objects and parts a larger share in the last conv stage than in
the first. This script puts finished dissections of one classifier over one image set side by
side, one per label source (the renderer's exact labels, a segmenter's), and answers that
question in numbers.

Commands (the shipped scene classifier over the 2000 held-out scenes, every conv layer; each
dissection takes about 2 minutes on 2 CPU cores, the summary a few seconds):

  L=conv1_1,conv2_1,conv2_2,conv3_1,conv3_2,conv4_1,conv4_2,conv5_1,conv5_2,conv5_3
  python -m experiments.dissect_classifier --model sceneworld --images sceneworld_scenes \
      --layers $L --outdir results/dissect-classifier-exact
  python -m experiments.dissect_classifier --model sceneworld --images sceneworld_scenes \
      --layers $L --segmenter sceneworld --outdir results/dissect-classifier-sceneworld
  python -m experiments.dissect_classifier --model sceneworld --images sceneworld_scenes \
      --layers $L --segmenter color --outdir results/dissect-classifier-color
  python -m experiments.classifier_dissection_summary --colour results/dissect-classifier-color

The summary reads `--dissections` (NAME=FOLDER; by default `exact=` and `segmenter=` the first
two folders above) and writes `OUT.json` (`--out`, default `docs/classifier-dissection`; per
source and layer: units, interpretable units, their counts by category, the category shares of
all units, the mean IoU of the interpretable ones; the same per stage, `conv5` for `conv5_1 ..
conv5_3`; and the first-versus-last-stage comparison) and `OUT.svg` (stacked bars of
interpretable units per layer and category, one panel per source).

The scene world labels objects and parts only, so among the units a dissection calls
interpretable every one is an object or a part. `--colour` names a dissection of the same
classifier, images and layers with `--segmenter color`. Its thresholds estimate the same
quantiles of the same activations (they are equal unless a refining pass, which depends on the
labels, narrowed one), so its IoU columns and a source's together are the dissection with both
label sets, each unit labelled by its best concept of either, up to the IoU bounds recorded.
That adds a "+ colour" panel per source, and the share question becomes the paper's: objects
and parts against colours.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from absl import app, flags, logging
import numpy as np

from experiments import cli
from experiments.cli import UsageError
from jaxdissect.report import svg
from jaxdissect.report.reader import Dissection, DissectionReadError, read_dissection

_DISSECTIONS = flags.DEFINE_list(
    "dissections", ["exact=results/dissect-classifier-exact",
                    "segmenter=results/dissect-classifier-sceneworld"],
    "NAME=FOLDER of each dissection to compare (one classifier, one image set, same layers).")
_COLOUR = flags.DEFINE_string("colour", None, "Folder of a `--segmenter color` dissection of the "
                              "same classifier, images and layers: also label units by colour.")
_OUT = flags.DEFINE_string("out", "docs/classifier-dissection", "Output path without extension: "
                           "writes OUT.json and OUT.svg.")

CLAIM = "object/part concepts a larger share in the last stage than in the first"
OBJECT_PART = ("object", "part")
COLOUR_CATEGORY = "color"


def stage_of(layer: str) -> str:
  """The stage a VGG-style layer belongs to (`conv5_3` -> `conv5`); other names are their own."""
  head, _, tail = layer.rpartition("_")
  return head if head and tail.isdigit() else layer


def _open(name: str, folder: str) -> Dissection:
  try:
    return read_dissection(folder)
  except DissectionReadError as e:
    raise UsageError(f"{name}: {e}") from None


def _same_run(first: Dissection, other: Dissection, name: str) -> None:
  """UsageError unless `other` dissects the model, images and layers `first` does."""
  for what, a, b in (("model", first.model, other.model),
                     ("images", first.latents, other.latents),
                     ("layers", first.layer_names, other.layer_names),
                     ("n", first.settings.get("n"), other.settings.get("n")),
                     ("threshold", first.settings.get("threshold"),
                      other.settings.get("threshold"))):
    if a != b:
      raise UsageError(f"{name} ({other.folder}) has {what} {b!r}, but {first.folder} has "
                       f"{a!r}; compare dissections of one classifier, image set and layers")


def _counts(names: Sequence[str], categories: Mapping[str, str], best: np.ndarray,
            labels: np.ndarray, rule: float, units: int) -> dict[str, Any]:
  """A layer's (or stage's) interpretable units by category, from each unit's best IoU, its
  label's index into `names` and the IoU rule."""
  keep = (labels > 0) & (best > rule)
  by = {}
  for label in labels[keep]:
    cat = categories[names[int(label)]]
    by[cat] = by.get(cat, 0) + 1
  order = svg.order_categories(by)
  return {"units": units, "interpretable": int(keep.sum()),
          "categories": {c: by[c] for c in order},
          "share_of_units": {c: by[c] / units for c in order},
          "mean_iou": float(best[keep].mean()) if keep.any() else 0.0}


def _labelling(d: Dissection, colour: Dissection | None, layer: str
               ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Concept names and each unit's best IoU and label index: `d`'s own, or with `colour`'s
  concepts as more columns of the table. Both estimate each unit's threshold as the same
  quantile of the same activations (equal unless a refining pass, which depends on the labels,
  narrowed one of them), so the joined table is exact up to the two dissections' IoU bounds."""
  iou, names = d.iou(layer), [n for n, _ in d.concepts]
  if colour is not None:
    iou = np.concatenate([iou, colour.iou(layer)[:, 1:]], axis=1)
    names += [n for n, _ in colour.concepts[1:]]
  iou = iou.copy()
  iou[:, 0] = -1.0  # the none label is never a unit's label
  return names, iou.max(axis=1), iou.argmax(axis=1)


def summarize(d: Dissection, colour: Dissection | None = None) -> dict[str, Any]:
  """Per layer and per stage counts of one source (with `colour`'s concepts if given)."""
  rule = d.doc["interpretable"]
  if rule.get("iqr_above") is not None:
    raise UsageError(f"{d.folder} uses the rule {rule['rule']}; this summary recounts units by "
                     "IoU alone, so dissect with a quantile threshold (the PNAS rule)")
  categories = {n: c for n, c in d.concepts}
  if colour is not None:
    categories.update(colour.concepts)
  layers, stages = [], {}
  for record in d.layers:
    names, best, labels = _labelling(d, colour, record.layer)
    records = [record] if colour is None else [record, colour.layer(record.layer)]
    bound = max(u.iou_bound for r in records for u in r.units)
    layers.append({"layer": record.layer, "stage": stage_of(record.layer),
                   **_counts(names, categories, best, labels, rule["iou_above"], len(best)),
                   "iou_bound": bound})
    if colour is not None:
      layers[-1]["same_thresholds"] = bool(np.array_equal(record.thresholds(),
                                                          records[1].thresholds()))
    stage = stages.setdefault(stage_of(record.layer), ([], [], []))
    stage[0].append(record.layer)
    stage[1].append(best)
    stage[2].append(labels)
  per_stage = [{"stage": s, "layers": ls, **_counts(names, categories, np.concatenate(b),
                                                    np.concatenate(lab), rule["iou_above"],
                                                    sum(map(len, b)))}
               for s, (ls, b, lab) in stages.items()]
  labelled = svg.order_categories(c for n, c in categories.items() if n != svg.NONE_LABEL)
  return {"concept_categories": labelled, "layers": layers, "stages": per_stage}


def _share(counts: Mapping[str, Any], of: str) -> float:
  total = counts["units"] if of == "units" else counts["interpretable"]
  return sum(counts["categories"].get(c, 0) for c in OBJECT_PART) / max(total, 1)


def claim_check(summary: Mapping[str, Any]) -> dict[str, Any]:
  """Object/part share of all units and of interpretable units, first stage against last."""
  first, last = summary["stages"][0], summary["stages"][-1]
  out = {}
  for of in ("units", "interpretable"):
    a, b = _share(first, of), _share(last, of)
    out[f"share_of_{of}"] = {"first": {"stage": first["stage"], "share": a},
                             "last": {"stage": last["stage"], "share": b}, "holds": b > a}
  return out


def chart(panels: Sequence[Sequence[tuple[str, str]]], title: str, subtitle: str = "") -> str:
  """SVG of panels `(caption, svg document)` in rows, each panel under its caption."""
  caption_h, gap, top = 22, 16, 46
  placed, y, width = [], top, 0
  for row in panels:
    x, height = 0, 0
    for caption, doc in row:
      w, h = (int(doc.split(f'{k}="', 1)[1].split('"', 1)[0]) for k in ("width", "height"))
      placed.append((x, y, caption, doc.replace("<svg ", f'<svg x="{x}" y="{y + caption_h}" ', 1)))
      x, height = x + w + gap, max(height, h)
    width, y = max(width, x - gap), y + caption_h + height + gap
  body = [f'<text x="8" y="20" font-size="14" font-weight="bold">{_escape(title)}</text>',
          f'<text x="8" y="38" font-size="11" fill="#555">{_escape(subtitle)}</text>']
  for x, y0, caption, doc in placed:
    body.append(f'<text x="{x + 54}" y="{y0 + 15}" font-size="12" fill="#333">'
                f"{_escape(caption)}</text>")
    body.append(doc)
  return "\n".join([f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
                    f'viewBox="0 0 {width} {y}" {svg.FONT} role="img">',
                    f"<title>{_escape(title)}</title>", *body, "</svg>"])


def _escape(text: str) -> str:
  return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _sources() -> dict[str, str]:
  out = {}
  for item in _DISSECTIONS.value or []:
    name, eq, folder = item.partition("=")
    if not eq or not name or not folder or name in out:
      raise UsageError(f"--dissections item {item!r} is not a new NAME=FOLDER")
    out[name] = folder
  if not out:
    raise UsageError("--dissections is empty; give NAME=FOLDER of at least one dissection")
  return out


def run() -> dict[str, Any]:
  """Everything `main` does; returns the JSON document written. Raises UsageError."""
  dissections = {name: _open(f"--dissections {name}", folder)
                 for name, folder in _sources().items()}
  first = next(iter(dissections.values()))
  for name, d in dissections.items():
    _same_run(first, d, f"--dissections {name}")
  colour = None
  if _COLOUR.value:
    colour = _open("--colour", _COLOUR.value)
    _same_run(first, colour, "--colour")
  doc = {"model": first.model, "images": first.latents, "layers": list(first.layer_names),
         "rule": first.doc["interpretable"]["rule"], "claim": CLAIM, "sources": {}}
  panels = [[], []]
  order = list(OBJECT_PART)
  for name, d in dissections.items():
    plain = summarize(d)
    entry = {"folder": d.folder, "segmenter": d.segmenter, **plain,
             "claim": claim_check(plain)}
    source = "exact labels" if d.segmenter == "exact" else f"{d.segmenter} segmenter"
    panels[0].append((f"{name}: {source}", _layer_chart(plain, order)))
    if colour is not None:
      joint = summarize(d, colour)
      entry["with_colour"] = {**joint, "claim": claim_check(joint)}
      panels[1].append((f"{name}: {source} + {colour.segmenter} segmenter", _layer_chart(
          joint, order + [COLOUR_CATEGORY])))
    doc["sources"][name] = entry
    _log(name, entry)
  stem = _OUT.value
  os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
  cli.write_json(stem + ".json", doc)
  widths = ", ".join(f"{r.layer} {r.shape[2]}" for r in first.layers)
  title = (f"Interpretable units ({doc['rule']}) per layer of classifier {first.model}, "
           f"{first.settings.get('n', '?')} images")
  with open(stem + ".svg", "w", encoding="utf-8") as f:
    f.write(chart([row for row in panels if row], title, f"units per layer: {widths}"))
  logging.info("wrote %s.json and %s.svg", stem, stem)
  return doc


def _layer_chart(summary: Mapping[str, Any], order: list[str]) -> str:
  return svg.layer_chart([(r["layer"], r["categories"]) for r in summary["layers"]], order)


def _log(name: str, entry: Mapping[str, Any]) -> None:
  parts = [("", entry)] + ([(" + colour", entry["with_colour"])] if "with_colour" in entry else [])
  for label, summary in parts:
    for r in summary["layers"]:
      logging.info("%s%s %s: %d/%d interpretable %s", name, label, r["layer"],
                   r["interpretable"], r["units"], r["categories"])
    for of, c in summary["claim"].items():
      logging.info("%s%s object/part %s: %s %.3f -> %s %.3f (claim %s)", name, label, of,
                   c["first"]["stage"], c["first"]["share"], c["last"]["stage"],
                   c["last"]["share"], "holds" if c["holds"] else "does not hold")


def main(argv):
  cli.run_main("classifier_dissection_summary", run, argv)


if __name__ == "__main__":
  app.run(main)
