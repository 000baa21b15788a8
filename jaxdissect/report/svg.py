"""The two summary charts of a dissection, as standalone SVG strings.

The paper summarises a layer by how many of its units match each concept (a bar graph grouped by
concept category) and compares layers by how many interpretable units of each category they hold.
Both charts are plain SVG text built here without a plotting library, so the report stays a
dependency-free, self-contained page and the same files can be dropped into a README.
"""

from __future__ import annotations

import math
import urllib.parse
from typing import Iterable, Mapping, Sequence
from xml.sax.saxutils import escape

CATEGORY_ORDER = ("object", "scene", "part", "piece", "material", "texture", "color")
NONE_LABEL = "-"
FONT = "font-family=\"Helvetica, Arial, sans-serif\""

_KNOWN_COLOURS = {
    "object": "#4e79a7", "scene": "#59a14f", "part": "#f28e2b", "piece": "#76b7b2",
    "material": "#9c755f", "texture": "#b07aa1", "color": "#e15759",
}
_OTHER_COLOURS = ("#edc948", "#ff9da7", "#bab0ac", "#8cd17d", "#499894", "#d37295")
_BANDS = ("#f2f5fa", "#e6ebf3")

# Concept bar graph geometry (pixels).
_BAR_W, _BAR_GAP, _PLOT_H = 12, 3, 100
_GROUP_PAD, _CAPTION_H, _COUNT_H = 6, 20, 13
_CHAR_W = 6.0          # average width of a 10 px character
_LABEL_MAX = 24        # concept names longer than this are shortened in the graph


def order_categories(categories: Iterable[str]) -> list[str]:
  """Known categories in paper order (object, scene, part, ...), then the rest alphabetically."""
  cats = set(categories)
  known = [c for c in CATEGORY_ORDER if c in cats]
  return known + sorted(cats - set(CATEGORY_ORDER))


def category_colours(categories: Iterable[str]) -> dict[str, str]:
  """A fixed colour per category: the known ones always get the same colour."""
  colours, i = {}, 0
  for cat in order_categories(categories):
    if cat in _KNOWN_COLOURS:
      colours[cat] = _KNOWN_COLOURS[cat]
    else:
      colours[cat] = _OTHER_COLOURS[i % len(_OTHER_COLOURS)]
      i += 1
  return colours


def pluralize(word: str, n: int = 2) -> str:
  """English plural of a category name ("object" -> "objects", "piece" stays regular)."""
  if n == 1 or not word:
    return word
  if word.endswith(("s", "x", "z", "ch", "sh")):
    return word + "es"
  if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
    return word[:-1] + "ies"
  return word + "s"


def _attr(text: object) -> str:
  """Text escaped for an XML attribute or element."""
  return escape(str(text), {"\"": "&quot;"})


def _fmt(x: float) -> str:
  """A coordinate with at most one decimal."""
  return f"{x:.1f}".rstrip("0").rstrip(".")


def _short(name: str) -> str:
  return name if len(name) <= _LABEL_MAX else name[:_LABEL_MAX - 1] + "\u2026"


def _svg(width: float, height: float, body: Sequence[str], title: str) -> str:
  w, h = math.ceil(width), math.ceil(height)
  return "\n".join([
      f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" "
      f"viewBox=\"0 0 {w} {h}\" {FONT} role=\"img\">",
      f"<title>{_attr(title)}</title>",
      *body,
      "</svg>",
  ])


def _empty(message: str) -> str:
  body = [f"<text x=\"8\" y=\"24\" font-size=\"13\" fill=\"#666\">{_attr(message)}</text>"]
  return _svg(240, 40, body, message)


def concept_bargraph(counts: Mapping[str, int], categories: Mapping[str, str]) -> str:
  """SVG bar graph of interpretable units per concept, grouped by category.

  Args:
    counts: `{concept: units}`; concepts with no units and the none label '-' are left out.
    categories: `{concept: category}`; unknown concepts fall in category "other".

  Returns:
    A standalone SVG document as a string.
  """
  items = [(str(name), int(n)) for name, n in counts.items() if n > 0 and name != NONE_LABEL]
  if not items:
    return _empty("no interpretable units")
  groups: dict[str, list[tuple[str, int]]] = {}
  for name, n in items:
    groups.setdefault(categories.get(name, "other"), []).append((name, n))
  order = order_categories(groups)
  colours = category_colours(order)
  peak = max(n for _, n in items)

  # Lay out groups left to right (x relative to the left margin, decided afterwards).
  layout = []   # (category, caption, x0, x1, [(name, n, bar_x)])
  x = 0.0
  for cat in order:
    bars = sorted(groups[cat], key=lambda item: (-item[1], item[0]))
    caption = f"{len(bars)} {pluralize(cat, len(bars))}"
    bars_w = len(bars) * (_BAR_W + _BAR_GAP) - _BAR_GAP
    width = max(bars_w + 2 * _GROUP_PAD, len(caption) * _CHAR_W + 2 * _GROUP_PAD)
    bx = x + (width - bars_w) / 2
    placed = [(name, n, bx + i * (_BAR_W + _BAR_GAP)) for i, (name, n) in enumerate(bars)]
    layout.append((cat, caption, x, x + width, placed))
    x += width
  # Rotated names hang down-left from each bar: make room for them on the left and below.
  extent = {name: len(_short(name)) * _CHAR_W * 0.71 + 4 for name, _ in items}
  left = max([8.0] + [extent[name] - (bar_x + _BAR_W / 2) + 6
                      for *_, placed in layout for name, _, bar_x in placed])
  base = _CAPTION_H + _COUNT_H + _PLOT_H
  height = base + max(extent.values()) + 12
  width = left + x + 8

  body = []
  for i, (cat, caption, x0, x1, placed) in enumerate(layout):
    body.append(f"<rect class=\"band\" x=\"{_fmt(left + x0)}\" y=\"0\" width=\"{_fmt(x1 - x0)}\" "
                f"height=\"{base}\" fill=\"{_BANDS[i % 2]}\"/>")
    body.append(f"<text class=\"caption\" x=\"{_fmt(left + (x0 + x1) / 2)}\" y=\"14\" "
                f"font-size=\"11\" font-weight=\"bold\" fill=\"#444\" text-anchor=\"middle\">"
                f"{_attr(caption)}</text>")
    for name, n, bar_x in placed:
      h = max(1.0, n / peak * _PLOT_H)
      cx = left + bar_x + _BAR_W / 2
      body.append(f"<rect class=\"bar\" data-concept=\"{_attr(name)}\" data-units=\"{n}\" "
                  f"x=\"{_fmt(left + bar_x)}\" y=\"{_fmt(base - h)}\" width=\"{_BAR_W}\" "
                  f"height=\"{_fmt(h)}\" fill=\"{colours[cat]}\">"
                  f"<title>{_attr(name)} ({_attr(cat)}): {n} unit{'s' if n != 1 else ''}</title>"
                  f"</rect>")
      body.append(f"<text class=\"count\" x=\"{_fmt(cx)}\" y=\"{_fmt(base - h - 3)}\" "
                  f"font-size=\"9\" fill=\"#333\" text-anchor=\"middle\">{n}</text>")
      body.append(f"<text class=\"name\" transform=\"translate({_fmt(cx)},{base + 6}) "
                  f"rotate(-45)\" font-size=\"10\" fill=\"#222\" text-anchor=\"end\" "
                  f"dy=\"0.35em\">{_attr(_short(name))}</text>")
  body.append(f"<line x1=\"{_fmt(left)}\" y1=\"{base}\" x2=\"{_fmt(left + x)}\" y2=\"{base}\" "
              f"stroke=\"#888\" stroke-width=\"1\"/>")
  total = sum(n for _, n in items)
  return _svg(width, height, body, f"{total} interpretable units over {len(items)} concepts")


def _nice_step(peak: float, ticks: int = 5) -> float:
  """A 1-2-5 step giving at most about `ticks` intervals up to `peak`."""
  if peak <= 0:
    return 1.0
  raw = peak / ticks
  mag = 10 ** math.floor(math.log10(raw))
  for m in (1, 2, 5, 10):
    if m * mag >= raw:
      return max(1.0, m * mag)
  return max(1.0, 10 * mag)


def layer_chart(rows: Sequence[tuple[str, Mapping[str, int]]],
                categories_order: Sequence[str] | None = None, links: bool = False,
                least_top: int = 0) -> str:
  """SVG stacked bars: interpretable units of each category, one bar per layer.

  Args:
    rows: `(layer_name, {category: units})` in x-axis order.
    categories_order: categories to stack, bottom first; default: every category with units,
      in `order_categories` order.
    links: make the layer names links to `#layer_name` (for the HTML report).
    least_top: the y axis reaches at least this many units (charts side by side share a scale).

  Returns:
    A standalone SVG document as a string.
  """
  if not rows:
    return _empty("no layers")
  if categories_order is None:
    cats = order_categories({c for _, counts in rows for c, n in counts.items() if n > 0})
  else:
    cats = list(categories_order)
  colours = category_colours(cats)
  totals = [sum(int(counts.get(c, 0)) for c in cats) for _, counts in rows]
  peak = max(max(totals), least_top)
  step = _nice_step(peak)
  top = step * max(1, math.ceil(peak / step))

  names = [str(name) for name, _ in rows]
  longest = max(len(n) for n in names) * _CHAR_W * 1.1   # layer names are 11 px
  slot = min(64, max(44, longest + 8))
  bar_w, plot_h = 26, 180
  left, right, legend_h = 54, 16, 34
  rotate = longest > slot - 4
  label_h = (max(len(n) for n in names) * _CHAR_W * 0.71 + 14) if rotate else 20
  legend = [(c, f"{pluralize(c)}") for c in cats]
  legend_w = sum(len(text) * _CHAR_W + 30 for _, text in legend)
  width = max(left + len(rows) * slot + right, left + legend_w + right)
  y0 = legend_h + 8              # top of the plot
  base = y0 + plot_h
  height = base + label_h + 8

  def y_of(v: float) -> float:
    return base - v / top * plot_h

  body = []
  # Legend.
  lx = left
  for cat, text in legend:
    body.append(f"<rect class=\"legend\" x=\"{_fmt(lx)}\" y=\"10\" width=\"12\" height=\"12\" "
                f"fill=\"{colours[cat]}\"/>")
    body.append(f"<text x=\"{_fmt(lx + 17)}\" y=\"20\" font-size=\"11\" fill=\"#333\">"
                f"{_attr(text)}</text>")
    lx += len(text) * _CHAR_W + 30
  # Y axis, ticks and grid.
  v = 0.0
  while v <= top + 1e-9:
    y = y_of(v)
    body.append(f"<line x1=\"{left}\" y1=\"{_fmt(y)}\" x2=\"{_fmt(left + len(rows) * slot)}\" "
                f"y2=\"{_fmt(y)}\" stroke=\"{'#888' if v == 0 else '#e3e3e3'}\"/>")
    body.append(f"<text class=\"tick\" x=\"{left - 6}\" y=\"{_fmt(y)}\" dy=\"0.35em\" "
                f"font-size=\"10\" fill=\"#555\" text-anchor=\"end\">{int(v)}</text>")
    v += step
  body.append(f"<text x=\"14\" y=\"{_fmt(y0 + plot_h / 2)}\" font-size=\"11\" fill=\"#555\" "
              f"text-anchor=\"middle\" transform=\"rotate(-90 14 {_fmt(y0 + plot_h / 2)})\">"
              f"interpretable units</text>")
  # Stacked bars, totals and layer names.
  for i, ((name, counts), total) in enumerate(zip(rows, totals)):
    x = left + i * slot + (slot - bar_w) / 2
    acc = 0
    for cat in cats:
      n = int(counts.get(cat, 0))
      if n <= 0:
        continue
      body.append(f"<rect class=\"bar\" data-layer=\"{_attr(name)}\" "
                  f"data-category=\"{_attr(cat)}\" "
                  f"x=\"{_fmt(x)}\" y=\"{_fmt(y_of(acc + n))}\" width=\"{bar_w}\" "
                  f"height=\"{_fmt(y_of(acc) - y_of(acc + n))}\" fill=\"{colours[cat]}\">"
                  f"<title>{_attr(name)}: {n} {_attr(pluralize(cat, n))}</title></rect>")
      acc += n
    cx = x + bar_w / 2
    body.append(f"<text class=\"total\" x=\"{_fmt(cx)}\" y=\"{_fmt(y_of(total) - 4)}\" "
                f"font-size=\"10\" fill=\"#333\" text-anchor=\"middle\">{total}</text>")
    if rotate:
      label = (f"<text transform=\"translate({_fmt(cx)},{_fmt(base + 8)}) rotate(-45)\" "
               f"font-size=\"11\" fill=\"#222\" text-anchor=\"end\" dy=\"0.35em\">"
               f"{_attr(name)}</text>")
    else:
      label = (f"<text x=\"{_fmt(cx)}\" y=\"{_fmt(base + 15)}\" font-size=\"11\" fill=\"#222\" "
               f"text-anchor=\"middle\">{_attr(name)}</text>")
    if links:
      label = f"<a href=\"#{_attr(urllib.parse.quote(name, safe=''))}\">{label}</a>"
    body.append(label)
  return _svg(width, height, body, "interpretable units per layer and category")


def _titled_y_axis(title: str, left: float, width: float, lo: float, hi: float,
                   sy, fmt: str) -> list[str]:
  """A chart title and six labelled horizontal grid lines from lo to hi (`sy` maps y to pixels)."""
  body = [f"<text x=\"{left}\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{_attr(title)}</text>"]
  for i in range(6):
    v = lo + (hi - lo) * i / 5
    body.append(f"<line x1=\"{left}\" x2=\"{left + width}\" y1=\"{_fmt(sy(v))}\" "
                f"y2=\"{_fmt(sy(v))}\" stroke=\"#e3e3e3\"/>")
    body.append(f"<text x=\"{left - 6}\" y=\"{_fmt(sy(v) + 4)}\" font-size=\"10\" "
                f"text-anchor=\"end\">{fmt.format(v)}</text>")
  return body


_LINE_COLOURS = ("#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2")


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
               xlabel: str, ylabel: str, title: str, ymax: float | None = None) -> str:
  """SVG lines with shaded error bands: `series[name] = (x, y, err)` (band y +- err).

  Used for ablation curves (share of a concept removed against units ablated). Non-finite
  points are skipped.
  """
  left, top, width, height, right = 56, 30, 420, 220, 150
  points = [(x, y, e) for xs, ys, es in series.values() for x, y, e in zip(xs, ys, es)
            if math.isfinite(y)]
  if not points:
    return _empty("nothing to plot")
  x_max = max(max(p[0] for p in points), 1)
  y_top = ymax if ymax is not None else max(1e-9, max(p[1] + (p[2] if math.isfinite(p[2]) else 0)
                                                      for p in points))
  y_bottom = min(0.0, min(p[1] for p in points))
  sx = lambda x: left + width * x / x_max
  sy = lambda y: top + height * (1 - (y - y_bottom) / (y_top - y_bottom))
  body = _titled_y_axis(title, left, width, y_bottom, y_top, sy, "{:.2f}")
  for i in range(6):
    v = x_max * i / 5
    body.append(f"<text x=\"{_fmt(sx(v))}\" y=\"{top + height + 14}\" font-size=\"10\" "
                f"text-anchor=\"middle\">{v:g}</text>")
  body.append(f"<text x=\"{left + width / 2}\" y=\"{top + height + 32}\" font-size=\"11\" "
              f"text-anchor=\"middle\">{_attr(xlabel)}</text>")
  body.append(f"<text transform=\"translate(14 {top + height / 2}) rotate(-90)\" "
              f"font-size=\"11\" text-anchor=\"middle\">{_attr(ylabel)}</text>")
  for k, (name, (xs, ys, es)) in enumerate(series.items()):
    colour = _LINE_COLOURS[k % len(_LINE_COLOURS)]
    pts = [(x, y, e if math.isfinite(e) else 0.0) for x, y, e in zip(xs, ys, es)
           if math.isfinite(y)]
    if not pts:
      continue
    band = [f"{_fmt(sx(x))},{_fmt(sy(y + e))}" for x, y, e in pts]
    band += [f"{_fmt(sx(x))},{_fmt(sy(y - e))}" for x, y, e in reversed(pts)]
    body.append(f"<polygon points=\"{' '.join(band)}\" fill=\"{colour}\" opacity=\"0.18\"/>")
    line = " ".join(f"{_fmt(sx(x))},{_fmt(sy(y))}" for x, y, _ in pts)
    body.append(f"<polyline points=\"{line}\" fill=\"none\" stroke=\"{colour}\" "
                f"stroke-width=\"2\"><title>{_attr(name)}</title></polyline>")
    y_legend = top + 8 + 18 * k
    body.append(f"<line x1=\"{left + width + 14}\" x2=\"{left + width + 34}\" y1=\"{y_legend}\" "
                f"y2=\"{y_legend}\" stroke=\"{colour}\" stroke-width=\"3\"/>")
    body.append(f"<text x=\"{left + width + 40}\" y=\"{y_legend + 4}\" font-size=\"11\">"
                f"{_attr(_short(name))}</text>")
  body.append(f"<rect x=\"{left}\" y=\"{top}\" width=\"{width}\" height=\"{height}\" "
              "fill=\"none\" stroke=\"#999\"/>")
  return _svg(left + width + right, top + height + 44, body, title)


def bar_chart(values: Mapping[str, tuple[float, float]], ylabel: str, title: str) -> str:
  """SVG vertical bars with 99% error whiskers: `values[name] = (value, err)`, in given order.

  Used for the insertion-context study (added concept area by the concept at the spot).
  """
  items = [(k, v, e) for k, (v, e) in values.items() if math.isfinite(v)]
  if not items:
    return _empty("nothing to plot")
  left, top, height, bar, gap = 56, 30, 200, 26, 12
  width = len(items) * (bar + gap) + gap
  hi = max(max(v + (e if math.isfinite(e) else 0) for _, v, e in items), 1e-12)
  lo = min(0.0, min(v - (e if math.isfinite(e) else 0) for _, v, e in items))
  sy = lambda y: top + height * (1 - (y - lo) / (hi - lo))
  body = _titled_y_axis(title, left, width, lo, hi, sy, "{:.3g}")
  body.append(f"<text transform=\"translate(14 {top + height / 2}) rotate(-90)\" "
              f"font-size=\"11\" text-anchor=\"middle\">{_attr(ylabel)}</text>")
  for i, (name, v, e) in enumerate(items):
    x = left + gap + i * (bar + gap)
    y0, y1 = sy(max(v, 0.0)), sy(min(v, 0.0))
    body.append(f"<rect x=\"{x}\" y=\"{_fmt(y0)}\" width=\"{bar}\" height=\"{_fmt(y1 - y0)}\" "
                f"fill=\"#4e79a7\"><title>{_attr(name)}: {v:.4g}</title></rect>")
    if math.isfinite(e) and e > 0:
      cx = x + bar / 2
      body.append(f"<line x1=\"{cx}\" x2=\"{cx}\" y1=\"{_fmt(sy(v + e))}\" "
                  f"y2=\"{_fmt(sy(v - e))}\" stroke=\"#333\"/>")
    tx, ty = x + bar / 2, top + height + 12
    body.append(f"<text transform=\"translate({_fmt(tx)} {ty}) rotate(45)\" font-size=\"10\">"
                f"{_attr(_short(name))}</text>")
  return _svg(left + width + 20, top + height + 90, body, title)
