"""Tests of the report writer: unit strips, SVG charts, the HTML page and its browser check."""

import html.parser
import json
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from jaxdissect.report import (browser, check_report, concept_bargraph, embedded_doc, layer_chart,
                               report_html, save_jpeg, unit_strip, write_report)

SVG = "{http://www.w3.org/2000/svg}"
YELLOW = (200, 200, 0)


def _ring(mask, radius=2):
  """Pixels not in `mask` within chessboard distance `radius` of it (the expected border)."""
  near = np.zeros_like(mask)
  for y, x in zip(*np.nonzero(mask)):
    near[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1] = True
  return near & ~mask


# ------------------------------------------------------------------------------------ strips


def test_strip_shape_and_white_gaps():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 200, (3, 16, 16, 3), dtype=np.uint8)
  maps = rng.normal(size=(3, 4, 4)).astype(np.float32)
  strip = unit_strip(images, maps, 0.5, tile=32, gap=5)
  assert strip.shape == (32, 3 * 32 + 2 * 5, 3) and strip.dtype == np.uint8
  assert (strip[:, 32:37] == 255).all() and (strip[:, 69:74] == 255).all()
  assert unit_strip(images[:2], maps[:2], 0.5, tile=32, gap=5).shape == (32, 69, 3)


def test_strip_planted_mask():
  rng = np.random.default_rng(1)
  images = rng.integers(20, 230, (2, 16, 16, 3), dtype=np.uint8)
  maps = np.zeros((2, 4, 4), np.float32)
  maps[0, 1, 1] = 10.0   # one hot cell in the first image, nothing in the second
  strip = unit_strip(images, maps, 5.0, tile=32, gap=4)
  # Independent bilinear (half-pixel centres): cell 1 of 4 spread over 32 pixels, weight
  # 1 - |s - 1| at source coordinate s = (p + 0.5) / 8 - 0.5; on where 10 * wy * wx > 5.
  s = (np.arange(32) + 0.5) / 8 - 0.5
  w = np.clip(1 - np.abs(s - 1), 0, None)
  mask = 10 * w[:, None] * w[None, :] > 5
  assert mask.sum() > 20 and mask[12, 12] and not mask[:6].any() and not mask[:, 18:].any()
  resized = np.asarray(Image.fromarray(images[0]).resize((32, 32), Image.BILINEAR))
  ring = _ring(mask)
  tile = strip[:, :32]
  np.testing.assert_array_equal(tile[mask], resized[mask])            # inside: the image
  far = ~mask & ~ring
  np.testing.assert_array_equal(tile[far], resized[far] // 2)         # outside: half
  assert (tile[ring] == YELLOW).all() and ring.sum() > 0              # border: yellow
  assert not (tile[mask] == YELLOW).all(axis=-1).any()
  assert (tile[0, 0] == resized[0, 0] // 2).all() and (tile[31, 31] == resized[31, 31] // 2).all()
  # No activation anywhere: the whole second tile is dimmed, no border.
  resized2 = np.asarray(Image.fromarray(images[1]).resize((32, 32), Image.BILINEAR))
  np.testing.assert_array_equal(strip[:, 36:], resized2 // 2)


def test_strip_rejects_empty():
  with pytest.raises(ValueError, match="k=0"):
    unit_strip(np.zeros((0, 8, 8, 3), np.uint8), np.zeros((0, 2, 2)), 0.0)


def test_save_jpeg_creates_dirs(tmp_path):
  path = save_jpeg(str(tmp_path / "a" / "b" / "x.jpg"), np.full((8, 20, 3), 128, np.uint8))
  with Image.open(path) as im:
    assert im.format == "JPEG" and im.size == (20, 8)


# ------------------------------------------------------------------------------------ svg


def test_bargraph_bars_counts_and_escaping():
  counts = {"tree": 5, "a<b&c": 2, "sky": 3, "-": 4, "unused": 0}
  cats = {"tree": "object", "sky": "object", "a<b&c": "part", "unused": "part"}
  text = concept_bargraph(counts, cats)
  assert "a<b&c" not in text and "a&lt;b&amp;c" in text
  root = ET.fromstring(text)
  assert root.tag == SVG + "svg" and root.get("viewBox") and root.get("width")
  bars = [r for r in root.iter(SVG + "rect") if r.get("class") == "bar"]
  assert [(b.get("data-concept"), int(b.get("data-units"))) for b in bars] == [
      ("tree", 5), ("sky", 3), ("a<b&c", 2)]   # objects first, by count; none label left out
  heights = [float(b.get("height")) for b in bars]
  assert heights[0] == pytest.approx(100) and heights[1] == pytest.approx(60)
  texts = [t.text for t in root.iter(SVG + "text")]
  assert "2 objects" in texts and "1 part" in texts and "a<b&c" in texts
  assert {"5", "3", "2"} <= set(texts)
  assert len([r for r in root.iter(SVG + "rect") if r.get("class") == "band"]) == 2


def test_bargraph_empty():
  root = ET.fromstring(concept_bargraph({"-": 3}, {}))
  assert "no interpretable units" in "".join(root.itertext())


def test_layer_chart():
  rows = [("layer1", {"object": 2, "color": 1}), ("layer2", {"object": 7, "part": 3}),
          ("layer3", {})]
  root = ET.fromstring(layer_chart(rows))
  bars = [(r.get("data-layer"), r.get("data-category")) for r in root.iter(SVG + "rect")
          if r.get("class") == "bar"]
  assert sorted(bars) == sorted([("layer1", "object"), ("layer1", "color"),
                                 ("layer2", "object"), ("layer2", "part")])
  texts = [t.text for t in root.iter(SVG + "text")]
  assert {"layer1", "layer2", "layer3", "objects", "parts", "colors"} <= set(texts)
  ticks = [int(t.text) for t in root.iter(SVG + "text") if t.get("class") == "tick"]
  assert ticks[0] == 0 and ticks[-1] >= 10 and len(ticks) >= 3
  totals = [t.text for t in root.iter(SVG + "text") if t.get("class") == "total"]
  assert totals == ["3", "10", "0"]


# ------------------------------------------------------------------------------------ html


def _fake_doc(layers=(("layer1", 6), ("layer2", 4)), concepts=("tree", "sky", "red")):
  cats = {"tree": "object", "sky": "object", "red": "color"}
  doc = {"model": "fake", "segmenter": "oracle",
         "settings": {"n": 100, "quantile": 0.01, "iou_threshold": 0.04},
         "concepts": [{"index": 0, "name": "-", "category": ""}] + [
             {"index": i + 1, "name": c, "category": cats.get(c, "object")}
             for i, c in enumerate(concepts)],
         "layers": []}
  for li, (name, n) in enumerate(layers):
    units = []
    for u in range(n):
      label = concepts[(u + li) % len(concepts)]
      iou = 0.02 + 0.03 * ((u * 7 + li) % 5)
      units.append({"unit": u, "threshold": 1.0, "label": label,
                    "category": cats.get(label, "object"), "iou": iou, "interpretable": iou > 0.04,
                    "top": [{"image": i, "max": 2.0} for i in range(3)],
                    "image": f"{name}/units/unit{u:04d}.jpg"})
    counts = {}
    for unit in units:
      if unit["interpretable"]:
        counts[unit["label"]] = counts.get(unit["label"], 0) + 1
    by_cat = {}
    for c, k in counts.items():
      by_cat[cats.get(c, "object")] = by_cat.get(cats.get(c, "object"), 0) + k
    doc["layers"].append({"layer": name, "dirname": name, "shape": [8, 8, n],
                          "interpretable": sum(u["interpretable"] for u in units),
                          "concept_counts": counts, "category_counts": by_cat, "units": units})
  return doc


class _ScriptElements(html.parser.HTMLParser):
  """Collects `(attrs, text)` of every <script> element, as an HTML tokenizer splits them."""

  def __init__(self):
    super().__init__()
    self.found, self._open = [], None

  def handle_starttag(self, tag, attrs):
    if tag == "script":
      self._open = (dict(attrs), [])

  def handle_data(self, data):
    if self._open is not None:
      self._open[1].append(data)

  def handle_endtag(self, tag):
    if tag == "script" and self._open is not None:
      self.found.append((self._open[0], "".join(self._open[1])))
      self._open = None


def _script(page, element_id):
  match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', page,
                    re.S)
  assert match, element_id
  return match.group(1)


def test_html_embeds_doc_safely():
  doc = _fake_doc(concepts=("tree", "</script><script>alert(1)</script>", "<!--<script>"))
  doc["layers"][0]["units"][0]["iou"] = float("nan")
  page = report_html(doc)
  raw = _script(page, "dissection")
  assert "</" not in raw and "<!--" not in raw
  back = json.loads(raw.replace("<\\/", "</"))
  assert back["layers"][0]["units"][0]["iou"] is None   # NaN is not JSON: embedded as null
  doc["layers"][0]["units"][0]["iou"] = None
  assert back == doc and embedded_doc(page) == doc
  scripts = _ScriptElements()
  scripts.feed(page)
  assert [attrs.get("id") for attrs, _ in scripts.found] == ["dissection", "jd-colours", None]
  assert json.loads(scripts.found[0][1]) == doc   # the browser's view of the element's text
  assert "alert(1)</script>" not in page


def test_html_is_self_contained():
  page = report_html(_fake_doc())
  assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page
  assert "@import" not in page and "url(" not in page
  others = set(re.findall(r"https?://[^\s\"'<>)]+", page)) - {"http://www.w3.org/2000/svg"}
  assert not others
  assert page.count("<svg") == 3   # the layer chart and one concept graph per layer
  for layer in ("layer1", "layer2"):
    assert f'href="#{layer}"' in page
  assert 'loading="lazy"' not in page


def test_write_report_files(tmp_path):
  doc = _fake_doc()
  path = write_report(str(tmp_path), doc)
  assert path == str(tmp_path / "report.html") and os.path.exists(path)
  for name in ("layers.svg", "layer1/concepts.svg", "layer2/concepts.svg"):
    ET.parse(tmp_path / name)


# ------------------------------------------------------------------------------------ browser

needs_chromium = pytest.mark.skipif(not os.access(browser.DEFAULT_CHROMIUM, os.X_OK),
                                    reason=f"{browser.DEFAULT_CHROMIUM} is not installed")


def _write_fake_report(outdir):
  doc = _fake_doc()
  rng = np.random.default_rng(0)
  for layer in doc["layers"]:
    for unit in layer["units"]:
      images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
      maps = rng.normal(size=(3, 8, 8))
      save_jpeg(os.path.join(outdir, unit["image"]), unit_strip(images, maps, 1.0, tile=32))
  with open(os.path.join(outdir, "dissect.json"), "w") as f:
    json.dump(doc, f)
  write_report(outdir, doc)
  return doc


@pytest.fixture(scope="module")
def fake_report(tmp_path_factory):
  outdir = str(tmp_path_factory.mktemp("report"))
  return outdir, _write_fake_report(outdir)


@needs_chromium
def test_browser_renders_every_layer(fake_report):
  outdir, doc = fake_report
  for layer in doc["layers"]:
    status = check_report(outdir, layer["layer"], timeout=60)
    n = len(layer["units"])
    assert status["layer"] == layer["layer"]
    assert status["units"] == n and status["images_loaded"] == n
    assert status["images_failed"] == 0


@needs_chromium
def test_browser_counts_missing_strip(tmp_path):
  outdir = str(tmp_path)
  doc = _write_fake_report(outdir)
  os.remove(os.path.join(outdir, doc["layers"][1]["units"][2]["image"]))
  status = check_report(outdir, "layer2", timeout=60)
  assert status["units"] == 4 and status["images_failed"] >= 1 and status["images_loaded"] == 3


def test_browser_missing_chromium_raises(fake_report):
  with pytest.raises(RuntimeError, match="chromium not found"):
    check_report(fake_report[0], "layer1", chromium="/nonexistent/chromium")
