"""The dissection report: one self-contained HTML page over `dissect.json` and the unit strips.

A dissection is only useful if people can browse it: which layers hold which concepts, and what
each unit actually draws. The page written here needs nothing but a browser opened on the output
folder (`file://` works): styles and script are inline, the dissection document is embedded as
JSON, and the unit strips are referenced by their paths relative to the output folder. The script
renders the cards of one layer at a time (hundreds of units stay fast) and records on
`<body>` how many cards it rendered and how many images loaded or failed, so a headless browser
can check a report without a human (`jaxdissect.report.browser`).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import urllib.parse
from typing import Any, Mapping

from jaxdissect.report.svg import (NONE_LABEL, category_colours, concept_bargraph, layer_chart,
                                   order_categories)

REPORT_NAME = "report.html"
LAYERS_SVG = "layers.svg"
CONCEPTS_SVG = "concepts.svg"
_HEADLINE_SETTINGS = ("n", "threshold", "quantile", "iou_threshold", "topk", "seed")


def _finite(obj: Any) -> Any:
  """`obj` with NaN and infinities replaced by None (browsers reject them in JSON)."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, Mapping):
    return {str(k): _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  if hasattr(obj, "item") and hasattr(obj, "dtype"):   # numpy scalars
    return _finite(obj.item())
  return obj


def script_json(obj: Any) -> str:
  """JSON that is safe inside a `<script>` element: `</` and `<!--` cannot end or confuse it."""
  text = json.dumps(_finite(obj), allow_nan=False)
  return text.replace("<!--", "\\u003c!--").replace("</", "<\\/")


def embedded_doc(page: str) -> dict:
  """The dissection document embedded in a report page by `report_html`."""
  match = re.search(r'<script type="application/json" id="dissection">(.*?)</script>', page,
                    re.S)
  if match is None:
    raise ValueError("no <script id=\"dissection\"> element in the page")
  return json.loads(match.group(1))


def concept_categories(doc: Mapping[str, Any]) -> dict[str, str]:
  """`{concept name: category}` from `doc["concepts"]`, leaving out the none label (index 0)."""
  return {c["name"]: c.get("category", "other") for c in doc.get("concepts", [])
          if c.get("index", 1) != 0 and c["name"] != NONE_LABEL}


def layer_rows(doc: Mapping[str, Any]) -> list[tuple[str, dict[str, int]]]:
  """`(layer, {category: interpretable units})` rows for `layer_chart`."""
  return [(layer["layer"], dict(layer.get("category_counts", {}))) for layer in doc["layers"]]


def layers_svg(doc: Mapping[str, Any], links: bool = False) -> str:
  """The layer comparison chart of a dissection document."""
  rows = layer_rows(doc)
  cats = {c for _, counts in rows for c, n in counts.items() if n > 0}
  return layer_chart(rows, order_categories(cats), links=links)


def concepts_svg(doc: Mapping[str, Any], layer: Mapping[str, Any]) -> str:
  """The concept bar graph of one layer of a dissection document."""
  return concept_bargraph(layer.get("concept_counts", {}), concept_categories(doc))


def _e(text: Any) -> str:
  return html.escape(str(text), quote=True)


def _header(doc: Mapping[str, Any]) -> str:
  settings = doc.get("settings", {})
  chips = [f"<span class=\"chip\">segmenter <b>{_e(doc.get('segmenter', '?'))}</b></span>"]
  latents, rule = doc.get("latents", {}), doc.get("interpretable", {})
  given = isinstance(latents, Mapping) and latents.get("source") == "array"
  ruled = isinstance(rule, Mapping) and isinstance(rule.get("rule"), str)
  hidden = {"seed"} if given else set()  # said by the latents chip
  hidden |= {"iou_threshold"} if ruled else set()  # said by the rule chip
  chips += [f"<span class=\"chip\">{_e(k)} <b>{_e(settings[k])}</b></span>"
            for k in _HEADLINE_SETTINGS if k in settings and k not in hidden]
  if ruled:
    chips.append(f"<span class=\"chip\">interpretable <b>{_e(rule['rule'])}</b></span>")
  if given:  # the images' latents were given, not drawn from the seed
    name = os.path.basename(str(latents.get("origin", "array")))
    chips.append(f"<span class=\"chip\">latents <b>{_e(name)}</b> "
                 f"({_e(str(latents.get('sha256', ''))[:12])})</span>")
  rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in settings.items())
  details = (f"<details><summary>all settings</summary><table class=\"settings\">{rows}</table>"
             f"</details>") if settings else ""
  return (f"<header><h1>Dissection of <span class=\"model\">{_e(doc.get('model', '?'))}</span>"
          f"</h1><div class=\"meta\">{''.join(chips)}</div>{details}</header>")


def _href(layer: str) -> str:
  """`href` value of the link that selects `layer` (the page reads it back from the hash)."""
  return _e("#" + urllib.parse.quote(layer, safe=""))


def _interpretable(layer: Mapping[str, Any]) -> int:
  if "interpretable" in layer:
    return int(layer["interpretable"])
  return sum(bool(u.get("interpretable")) for u in layer["units"])


def _layer_table(doc: Mapping[str, Any]) -> str:
  rows = []
  for layer in doc["layers"]:
    name, units = layer["layer"], len(layer["units"])
    n = _interpretable(layer)
    counts = {k: v for k, v in layer.get("concept_counts", {}).items()
              if k != NONE_LABEL and v > 0}
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
    shape = " \u00d7 ".join(str(d) for d in layer.get("shape", []))
    pct = f"{100 * n / units:.0f}%" if units else "\u2013"
    most = " \u00b7 ".join(f"{_e(k)} <small>{v}</small>" for k, v in top)
    rows.append(f"<tr data-layer=\"{_e(name)}\"><td><a href=\"{_href(name)}\">{_e(name)}</a></td>"
                f"<td>{_e(shape)}</td>"
                f"<td class=\"num\">{units}</td><td class=\"num\">{n}</td>"
                f"<td class=\"num\">{pct}</td><td class=\"num\">{len(counts)}</td>"
                f"<td>{most}</td></tr>")
  head = ("<tr><th>layer</th><th>featuremap</th><th class=\"num\">units</th>"
          "<th class=\"num\" colspan=\"2\">interpretable</th><th class=\"num\">concepts</th>"
          "<th>most units</th></tr>")
  return f"<table class=\"layers\"><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _tabs(doc: Mapping[str, Any]) -> str:
  tabs = []
  for layer in doc["layers"]:
    name = layer["layer"]
    n = _interpretable(layer)
    tabs.append(f"<a class=\"tab\" role=\"tab\" href=\"{_href(name)}\" data-layer=\"{_e(name)}\">"
                f"{_e(name)} <small>{n}</small></a>")
  return f"<nav class=\"tabs\" role=\"tablist\">{''.join(tabs)}</nav>"


def _concept_panels(doc: Mapping[str, Any]) -> str:
  return "".join(f"<div class=\"concepts\" data-layer=\"{_e(layer['layer'])}\" hidden>"
                 f"{concepts_svg(doc, layer)}</div>" for layer in doc["layers"])


def report_html(doc: Mapping[str, Any]) -> str:
  """The whole report page for a dissection document (see `experiments/dissect.py`)."""
  cats = set(concept_categories(doc).values())
  for layer in doc["layers"]:
    cats |= {u.get("category", "") for u in layer["units"]}
  colours = category_colours(c for c in cats if c)
  values = {"TITLE": _e(f"Dissection of {doc.get('model', '?')}"), "STYLE": _STYLE,
            "HEADER": _header(doc), "LAYERS_SVG": layers_svg(doc, links=True),
            "LAYER_TABLE": _layer_table(doc), "TABS": _tabs(doc),
            "CONCEPTS": _concept_panels(doc), "DOC_JSON": script_json(doc),
            "COLOURS_JSON": script_json(colours), "SCRIPT": _SCRIPT}
  # One pass over the template, so text from the document is never substituted again.
  return re.sub(r"%%([A-Z_]+)%%", lambda m: values[m.group(1)], _PAGE)


def _write(path: str, text: str) -> None:
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_report(outdir: str, doc: Mapping[str, Any], layer_svgs: bool = True) -> str:
  """Writes `report.html`, `layers.svg` and (if `layer_svgs`) each `<dirname>/concepts.svg`.

  The unit strips named by `doc` (`units[i]["image"]`) are written by the caller (`save_jpeg`).
  Returns the path of `report.html`.
  """
  if layer_svgs:
    for layer in doc["layers"]:
      _write(os.path.join(outdir, layer["dirname"], CONCEPTS_SVG), concepts_svg(doc, layer))
  _write(os.path.join(outdir, LAYERS_SVG), layers_svg(doc))
  path = os.path.join(outdir, REPORT_NAME)
  _write(path, report_html(doc))
  return path


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%%TITLE%%</title>
<style>%%STYLE%%</style>
</head>
<body>
<main>
%%HEADER%%
<section class="panel overview">
<div><h2>Interpretable units per layer</h2><div class="scroll">%%LAYERS_SVG%%</div></div>
<div class="scroll">%%LAYER_TABLE%%</div>
</section>
%%TABS%%
<section class="panel layer">
<div class="layerhead"><h2 id="jd-layer-title"></h2><span id="jd-layer-shape"></span></div>
<p id="jd-summary"></p>
<div class="scroll">%%CONCEPTS%%</div>
<div class="toolbar">
<label>sort <select id="jd-sort">
<option value="iou">by IoU</option>
<option value="label">by label</option>
<option value="unit">by unit number</option>
</select></label>
<label><input type="checkbox" id="jd-only"> interpretable only</label>
<span class="hint">top images per unit; dimmed outside, outlined where the unit exceeds its
threshold</span>
<span id="jd-shown"></span>
</div>
<div id="jd-cards"></div>
</section>
</main>
<script type="application/json" id="dissection">%%DOC_JSON%%</script>
<script type="application/json" id="jd-colours">%%COLOURS_JSON%%</script>
<script>%%SCRIPT%%</script>
</body>
</html>
"""

_STYLE = """
:root { --fg: #1d2430; --muted: #667085; --line: #e3e7ee; --bg: #f5f6f8; --accent: #2f5fa7; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1440px; margin: 0 auto; padding: 18px 28px 40px; }
h1 { font-size: 22px; margin: 0 0 8px; font-weight: 650; }
h2 { font-size: 15px; margin: 0 0 10px; font-weight: 650; }
.meta { display: flex; flex-wrap: wrap; gap: 6px; }
.chip { background: #fff; border: 1px solid var(--line); border-radius: 999px; padding: 2px 10px;
  font-size: 12.5px; color: var(--muted); }
.chip b { color: var(--fg); font-weight: 600; }
details { margin-top: 6px; font-size: 12.5px; color: var(--muted); }
summary { cursor: pointer; }
table.settings { border-collapse: collapse; margin-top: 4px; }
table.settings th, table.settings td { text-align: left; padding: 1px 12px 1px 0;
  font-weight: normal; }
table.settings td { color: var(--fg); font-family: ui-monospace, monospace; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 14px 18px; margin-top: 14px; }
.scroll { overflow-x: auto; }
.overview { display: flex; flex-wrap: wrap; gap: 18px 40px; align-items: flex-start; }
table.layers { border-collapse: collapse; font-size: 13px; margin-top: 30px; }
table.layers th { font-weight: 600; color: var(--muted); text-align: left; font-size: 12px;
  border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; }
table.layers td { padding: 4px 12px 4px 0; border-bottom: 1px solid #f0f2f5; }
table.layers .num { text-align: right; font-variant-numeric: tabular-nums; }
table.layers a { color: var(--accent); font-weight: 600; text-decoration: none; }
table.layers small { color: var(--muted); }
table.layers tr.on td { background: #eef3fb; }
.scroll svg { display: block; }
.tabs { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 16px; }
.tab { border: 1px solid var(--line); background: #fff; border-radius: 999px; padding: 4px 12px;
  color: var(--fg); text-decoration: none; font-weight: 500; }
.tab small { color: var(--muted); margin-left: 2px; }
.tab:hover { border-color: var(--accent); }
.tab.on { background: var(--accent); border-color: var(--accent); color: #fff; }
.tab.on small { color: #dce6f7; }
.layerhead { display: flex; align-items: baseline; gap: 10px; }
.layerhead h2 { font-size: 18px; margin: 0; }
#jd-layer-shape { color: var(--muted); font-size: 13px; }
#jd-summary { margin: 4px 0 10px; }
.toolbar { display: flex; flex-wrap: wrap; align-items: center; gap: 16px; margin: 14px 0 12px;
  padding-top: 12px; border-top: 1px solid var(--line); font-size: 13px; }
.toolbar select { font: inherit; padding: 2px 4px; }
.hint { color: var(--muted); font-size: 12px; }
#jd-shown { margin-left: auto; color: var(--muted); }
#jd-cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr));
  gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px 10px;
  background: #fff; }
.cap { display: flex; align-items: baseline; gap: 10px; margin-bottom: 6px; white-space: nowrap; }
.label { font-weight: 650; font-size: 15px; border-left: 4px solid #999; padding-left: 6px;
  overflow: hidden; text-overflow: ellipsis; }
.cat { font-size: 12px; font-weight: 600; }
.iou, .unit { font-size: 12.5px; color: var(--muted); font-variant-numeric: tabular-nums; }
.unit { margin-left: auto; }
.weak .label { color: var(--muted); font-weight: 500; border-left-color: var(--line) !important; }
.weak .cat { color: var(--muted) !important; font-weight: 400; }
.card img { display: block; width: 100%; height: auto; border-radius: 3px; background: #eef0f3; }
.missing { color: #b42318; font-size: 12px; }
"""

_SCRIPT = r"""
(() => {
  'use strict';
  const doc = JSON.parse(document.getElementById('dissection').textContent);
  const colours = JSON.parse(document.getElementById('jd-colours').textContent);
  const settings = doc.settings || {};
  const iouT = typeof settings.iou_threshold === 'number' ? settings.iou_threshold : null;
  const rule = doc.interpretable && typeof doc.interpretable.rule === 'string' ?
      doc.interpretable.rule : (iouT === null ? null : `IoU > ${iouT}`);
  const layers = doc.layers || [];
  const body = document.body;
  const cards = document.getElementById('jd-cards');
  const sortSel = document.getElementById('jd-sort');
  const onlyBox = document.getElementById('jd-only');
  let generation = 0;

  const ESC = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
  const esc = s => String(s == null ? '' : s).replace(/[&<>"']/g, c => ESC[c]);
  const num = v => typeof v === 'number' && isFinite(v);
  const iouOf = u => num(u.iou) ? u.iou : -1;
  const fmtIou = v => num(v) ? v.toFixed(3) : '\u2013';

  function currentLayer() {
    let want = '';
    try { want = decodeURIComponent(location.hash.slice(1)); } catch (e) { want = ''; }
    return layers.find(l => l.layer === want) || layers[0] || null;
  }

  function sorter(kind, counts) {
    if (kind === 'unit') return (a, b) => a.unit - b.unit;
    if (kind === 'label') {
      return (a, b) => (b.interpretable ? 1 : 0) - (a.interpretable ? 1 : 0) ||
          (counts[b.label] || 0) - (counts[a.label] || 0) ||
          String(a.label).localeCompare(String(b.label)) ||
          iouOf(b) - iouOf(a) || a.unit - b.unit;
    }
    return (a, b) => iouOf(b) - iouOf(a) || a.unit - b.unit;
  }

  function card(u) {
    const col = colours[u.category] || '#999';
    const tip = u.interpretable ? '' : ' title="not interpretable: best IoU below threshold"';
    let img = '<div class="missing">no image</div>';
    if (u.image) {
      const src = esc(String(u.image).split('/').map(encodeURIComponent).join('/'));
      img = `<a href="${src}" target="_blank"><img src="${src}" loading="eager" ` +
            `alt="top images of unit ${esc(u.unit)}"></a>`;
    }
    return `<div class="card${u.interpretable ? '' : ' weak'}" data-unit="${esc(u.unit)}"${tip}>` +
        `<div class="cap"><span class="label" style="border-left-color:${esc(col)}">` +
        `${esc(u.label)}</span><span class="cat" style="color:${esc(col)}">` +
        `${esc(u.category)}</span><span class="iou">IoU ${fmtIou(u.iou)}</span>` +
        `<span class="unit">unit ${esc(u.unit)}</span></div>${img}</div>`;
  }

  function watchImages(gen) {
    delete body.dataset.imagesLoaded;
    delete body.dataset.imagesFailed;
    const imgs = Array.from(document.images);
    let loaded = 0, failed = 0, pending = imgs.length;
    const settle = () => {
      if (gen !== generation || pending > 0) return;
      body.dataset.images = imgs.length;
      body.dataset.imagesLoaded = loaded;
      body.dataset.imagesFailed = failed;
    };
    for (const img of imgs) {
      if (img.complete) {
        if (img.naturalWidth > 0) loaded++; else failed++;
        pending--;
        continue;
      }
      img.addEventListener('load', () => { loaded++; pending--; settle(); }, {once: true});
      img.addEventListener('error', () => { failed++; pending--; settle(); }, {once: true});
    }
    settle();
  }

  function render() {
    const gen = ++generation;
    const layer = currentLayer();
    const name = layer ? layer.layer : '';
    for (const t of document.querySelectorAll('.tab')) {
      const on = t.dataset.layer === name;
      t.classList.toggle('on', on);
      t.setAttribute('aria-selected', on ? 'true' : 'false');
    }
    for (const r of document.querySelectorAll('table.layers tbody tr')) {
      r.classList.toggle('on', r.dataset.layer === name);
    }
    for (const d of document.querySelectorAll('.concepts')) d.hidden = d.dataset.layer !== name;
    const units = layer ? (layer.units || []) : [];
    const counts = layer ? (layer.concept_counts || {}) : {};
    const interp = layer && num(layer.interpretable) ? layer.interpretable
                                                     : units.filter(u => u.interpretable).length;
    const concepts = Object.keys(counts).filter(k => k !== '-' && counts[k] > 0).length;
    document.getElementById('jd-layer-title').textContent = name || 'no layers';
    const shape = layer && layer.shape ? layer.shape.join(' \u00d7 ') : '';
    document.getElementById('jd-layer-shape').textContent = shape ? `featuremap ${shape}` : '';
    document.getElementById('jd-summary').textContent = layer ?
        `${interp}/${units.length} units interpretable, covering ${concepts} concept` +
        `${concepts === 1 ? '' : 's'}` + (rule === null ? '' : ` (${rule})`) : '';
    const shown = onlyBox.checked ? units.filter(u => u.interpretable) : units.slice();
    shown.sort(sorter(sortSel.value, counts));
    cards.innerHTML = shown.map(card).join('');
    document.getElementById('jd-shown').textContent =
        `${shown.length} unit${shown.length === 1 ? '' : 's'} shown`;
    body.dataset.layer = name;
    body.dataset.units = shown.length;
    watchImages(gen);
  }

  window.addEventListener('hashchange', render);
  sortSel.addEventListener('change', render);
  onlyBox.addEventListener('change', render);
  render();
})();
"""
