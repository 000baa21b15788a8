"""Several dissections side by side: how generators compare on the same data.

The paper compared models (ProgGAN on different scenes, layers, training stages) by the number of
interpretable units per layer, the concepts those units cover, and how much of a concept goes
away when its units are ablated. This module turns finished dissection folders (`reader`) and
their `ablation-<concept>.json` results into one document with exactly those figures, and renders
it as Markdown (for a README) and as one self-contained HTML page with SVG charts.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, NamedTuple, Sequence

from jaxdissect.report import svg
from jaxdissect.report.reader import AblationRecord, Dissection

# The curve points quoted in tables: removed share after ablating this many units.
TABLE_UNITS = (1, 5, 10, 20, 30)


class LayerSummary(NamedTuple):
  """One layer: its units, how many are interpretable, and their labels' categories/concepts."""

  layer: str
  units: int
  interpretable: int
  categories: dict[str, int]  # interpretable units per category
  concepts: tuple[str, ...]  # distinct labels of interpretable units, sorted


class ModelSummary(NamedTuple):
  """One dissection folder summarised (`name` is how tables and charts call it)."""

  name: str
  model: str
  segmenter: str
  layers: tuple[LayerSummary, ...]
  concept_units: dict[str, int]  # interpretable units per concept, over all layers
  ablations: dict[str, AblationRecord]  # concept -> its ablation result


def summarize(dissection: Dissection, name: str | None = None,
              ablations: Sequence[AblationRecord] = ()) -> ModelSummary:
  """The figures of `dissection` (and its `ablations`) that the comparison shows."""
  category_of = dict(dissection.concepts)
  layers, concept_units = [], {}
  for record in dissection.layers:  # the document's own counts, as its report shows them
    categories: dict[str, int] = {}
    for label, n in record.concept_counts.items():
      cat = category_of.get(label, "other")
      categories[cat] = categories.get(cat, 0) + n
      concept_units[label] = concept_units.get(label, 0) + n
    layers.append(LayerSummary(record.layer, len(record.units), record.interpretable,
                               dict(sorted(categories.items())),
                               tuple(sorted(record.concept_counts))))
  return ModelSummary(name or dissection.model, dissection.model, dissection.segmenter,
                      tuple(layers), concept_units, {a.concept: a for a in ablations})


def _curve(record: AblationRecord | None, ranking: Sequence[str]) -> dict[str, Any] | None:
  """The first of `ranking`'s curves that `record` holds, as a JSON record."""
  if record is None:
    return None
  for name in ranking:
    if name in record.rankings:
      c = record.rankings[name]
      return {"layer": record.layer, "ranking": name, "baseline": c.baseline,
              "units": list(c.units), "removed": list(c.removed), "ci99": list(c.ci99)}
  return None


def comparison_doc(summaries: Sequence[ModelSummary], concepts: Sequence[str],
                   ranking: Sequence[str] = ("ace", "iou")) -> dict[str, Any]:
  """The comparison as a JSON-ready document: per model its layers, coverage and curves of
  `concepts` (each model's first available ranking of `ranking`)."""
  models = []
  for s in summaries:
    units = sum(l.units for l in s.layers)
    interpretable = sum(l.interpretable for l in s.layers)
    models.append({
        "name": s.name, "model": s.model, "segmenter": s.segmenter,
        "units": units, "interpretable": interpretable,
        "share": interpretable / units if units else 0.0,
        "concepts_covered": sorted(s.concept_units),
        "concept_units": dict(sorted(s.concept_units.items())),
        "layers": [{"layer": l.layer, "units": l.units, "interpretable": l.interpretable,
                    "share": l.interpretable / l.units if l.units else 0.0,
                    "categories": l.categories, "concepts": list(l.concepts)} for l in s.layers],
        "ablations": {c: _curve(s.ablations.get(c), ranking) for c in concepts}})
  return {"models": models, "concepts": list(concepts), "ranking": list(ranking)}


def _at(curve: Mapping[str, Any], k: int) -> str:
  if k >= len(curve["removed"]):
    return "-"
  return f"{100 * curve['removed'][k]:.0f}% ± {100 * curve['ci99'][k]:.0f}"


Table = tuple[list[str], list[list[str]]]  # (header, rows) of cell texts


def tables(doc: Mapping[str, Any]) -> dict[str, Table]:
  """The comparison's tables: `summary`, `concepts`, `ablation`, `layers`."""
  models = doc["models"]
  summary = (["model", "layers", "units", "interpretable units", "concepts covered"],
             [[m["name"], str(len(m["layers"])), str(m["units"]),
               f"{m['interpretable']} ({100 * m['share']:.0f}%)",
               str(len(m["concepts_covered"]))] for m in models])
  names = sorted({c for m in models for c in m["concept_units"]})
  concepts = (["concept"] + [m["name"] for m in models],
              [[c] + [str(m["concept_units"].get(c, 0)) for m in models] for c in names])
  rows = []
  for c in doc["concepts"]:
    for m in models:
      curve = m["ablations"].get(c)
      if curve is None:
        rows.append([c, m["name"], "not measured", ""] + [""] * len(TABLE_UNITS))
      else:
        share = "-" if curve["baseline"] is None else f"{curve['baseline']:.4f}"
        rows.append([c, m["name"], f"{curve['layer']} ({curve['ranking']})", share]
                    + [_at(curve, k) for k in TABLE_UNITS])
  ablation = (["concept", "model", "layer (ranking)", "concept's share"]
              + [f"top {k}" for k in TABLE_UNITS], rows)
  layers = (["model", "layer", "units", "interpretable", "concepts"],
            [[m["name"], l["layer"], str(l["units"]), str(l["interpretable"]),
              str(len(l["concepts"]))] for m in models for l in m["layers"]])
  return {"summary": summary, "concepts": concepts, "ablation": ablation, "layers": layers}


def _md_cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
  """A table as Markdown."""
  head, rows = table
  lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
  return "\n".join(lines)


def markdown(doc: Mapping[str, Any]) -> str:
  """The comparison's tables in Markdown: summary, concepts, ablations, layers."""
  return "\n\n".join(markdown_table(t) for t in tables(doc).values()) + "\n"


def html_table(table: Table) -> str:
  """A table as HTML (cells escaped)."""
  head, rows = table
  th = "".join(f"<th>{html.escape(c)}</th>" for c in head)
  trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                for r in rows)
  return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def depth_chart(doc: Mapping[str, Any]) -> str:
  """SVG: share of interpretable units against relative depth (first layer 0, last 1)."""
  series = {}
  for m in doc["models"]:
    n = len(m["layers"])
    xs = [i / max(1, n - 1) for i in range(n)]
    series[m["name"]] = (xs, [l["share"] for l in m["layers"]], [0.0] * n)
  return svg.line_chart(series, "relative depth (first layer 0, last 1)",
                        "share of units interpretable", "Interpretable units by depth", ymax=1.0)


def ablation_chart(doc: Mapping[str, Any], concept: str) -> str:
  """SVG: each model's ablation curve of `concept` (share of its pixels removed, 99% bands)."""
  series = {}
  for m in doc["models"]:
    curve = m["ablations"].get(concept)
    if curve is not None:
      xs = list(range(len(curve["removed"])))
      series[f"{m['name']} {curve['layer']}"] = (xs, curve["removed"], curve["ci99"])
  return svg.line_chart(series, "units ablated", f"share of {concept} pixels removed",
                        f"Removing {concept} units", ymax=1.0)


_STYLE = ("body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}"
          "table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;"
          "padding:3px 8px;font-size:13px;text-align:left}th{background:#f2f5fa}"
          ".row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}"
          "figure{margin:0}figcaption{font-size:13px;font-weight:bold;margin-bottom:4px}")


def comparison_html(doc: Mapping[str, Any], title: str = "Dissections compared") -> str:
  """One self-contained page: tables, per-model layer charts side by side, depth and ablation
  charts."""
  t = tables(doc)
  categories = svg.order_categories({c for m in doc["models"] for l in m["layers"]
                                     for c in l["categories"]})
  peak = max((l["interpretable"] for m in doc["models"] for l in m["layers"]), default=0)
  layer_figs = "".join(
      f"<figure><figcaption>{html.escape(m['name'])} ({html.escape(m['model'])})</figcaption>"
      + svg.layer_chart([(l["layer"], l["categories"]) for l in m["layers"]], categories,
                        least_top=peak)
      + "</figure>" for m in doc["models"])
  ablations = "".join(f"<figure>{ablation_chart(doc, c)}</figure>" for c in doc["concepts"])
  parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
           f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
           "<h2>Summary</h2>", html_table(t["summary"]),
           "<h2>Interpretable units per layer</h2>", f"<div class=\"row\">{layer_figs}</div>",
           f"<div class=\"row\"><figure>{depth_chart(doc)}</figure></div>",
           "<h2>Concepts covered</h2><p>Interpretable units labelled with each concept, over all "
           "dissected layers.</p>", html_table(t["concepts"]),
           "<h2>Ablation</h2><p>Share of a concept's pixels removed by ablating its top units "
           "in the layer named in the legend and the table (<code>experiments.ablate "
           "--layer</code>), on held-out images, with 99% confidence bands.</p>",
           f"<div class=\"row\">{ablations}</div>", html_table(t["ablation"]),
           "<h2>Layers</h2>", html_table(t["layers"]), "</body></html>"]
  return "\n".join(parts)
