"""The classifier-half charts: class-ablation curves and the attack's unit changes.

Curves: one panel per edit (ablate the top N, keep only the top N); each class's own balanced
accuracy as a thin line, their mean as a thick one with a band of the mean of the per-class
99% half-widths, and the mean accuracy of the other classes under the same edits, so a reader
sees at once whether an edit is specific to its class. Attack: per target, the change of its
top units beside the other units', with 99% whiskers. Plain SVG as the rest of the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from jaxdissect.report.svg import _attr, _fmt, _svg

_W, _H, _LEFT, _TOP, _GAP, _LEGEND = 300, 220, 56, 46, 40, 190
_OWN, _OTHERS, _CLASS = "#4e79a7", "#e15759", "#b8c4d6"


def _polyline(xs: Sequence[float], ys: Sequence[float], colour: str, width: float,
              dash: str = "", title: str = "") -> str:
  pts = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in zip(xs, ys) if math.isfinite(y))
  dashes = f" stroke-dasharray=\"{dash}\"" if dash else ""
  tip = f"<title>{_attr(title)}</title>" if title else ""
  return (f"<polyline points=\"{pts}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"{width}\""
          f"{dashes}>{tip}</polyline>")


def _panel(x0: float, panel: Mapping, sizes: Sequence[int], classes: Sequence[str],
           lo: float, baseline: float) -> list[str]:
  """One panel's axes, per-class lines, mean lines and band, left edge at `x0`."""
  s = len(sizes)
  sx = lambda i: x0 + _W * (i + 0.5) / s
  sy = lambda y: _TOP + _H * (1 - (y - lo) / (1 - lo))
  body = [(f"<text x=\"{x0}\" y=\"{_TOP - 8}\" font-size=\"12\" font-weight=\"bold\">"
           f"{_attr(panel['title'])}</text>")]
  for v in np.arange(lo, 1.0 + 1e-9, 0.1):
    body.append(f"<line x1=\"{x0}\" x2=\"{x0 + _W}\" y1=\"{_fmt(sy(v))}\" y2=\"{_fmt(sy(v))}\" "
                "stroke=\"#e3e3e3\"/>")
    body.append(f"<text x=\"{x0 - 6}\" y=\"{_fmt(sy(v) + 4)}\" font-size=\"10\" "
                f"text-anchor=\"end\">{v:.2f}</text>")
  for y, dash, name in ((0.5, "2,3", "chance"), (baseline, "6,3", "unedited")):
    if lo <= y <= 1:
      body.append(f"<line x1=\"{x0}\" x2=\"{x0 + _W}\" y1=\"{_fmt(sy(y))}\" y2=\"{_fmt(sy(y))}\" "
                  f"stroke=\"#888\" stroke-dasharray=\"{dash}\"><title>{name}</title></line>")
  xs = [sx(i) for i in range(s)]
  for i, size in enumerate(sizes):
    body.append(f"<text x=\"{_fmt(xs[i])}\" y=\"{_TOP + _H + 14}\" font-size=\"10\" "
                f"text-anchor=\"middle\">{size}</text>")
  body.append(f"<text x=\"{x0 + _W / 2}\" y=\"{_TOP + _H + 30}\" font-size=\"11\" "
              "text-anchor=\"middle\">N (the class's top units by training-split ablation)</text>")
  own, ci, others = (np.asarray(panel[k], np.float64) for k in ("own", "own_ci", "others"))
  for k, name in enumerate(classes):
    body.append(_polyline(xs, [sy(max(v, lo)) for v in own[k]], _CLASS, 1,
                          title=f"{name}: own accuracy"))
  mean, band = np.nanmean(own, 0), np.nanmean(ci, 0)
  upper = [f"{_fmt(x)},{_fmt(sy(min(m + b, 1.0)))}" for x, m, b in zip(xs, mean, band)]
  lower = [f"{_fmt(x)},{_fmt(sy(max(m - b, lo)))}" for x, m, b in zip(xs, mean, band)]
  body.append(f"<polygon points=\"{' '.join(upper + lower[::-1])}\" fill=\"{_OWN}\" "
              "opacity=\"0.18\"/>")
  body.append(_polyline(xs, [sy(max(v, lo)) for v in mean], _OWN, 2.5,
                        title="own accuracy, mean over classes"))
  body.append(_polyline(xs, [sy(max(v, lo)) for v in np.nanmean(others, 0)], _OTHERS, 2.5,
                        dash="7,4", title="other classes' accuracy, mean"))
  body.append(f"<rect x=\"{x0}\" y=\"{_TOP}\" width=\"{_W}\" height=\"{_H}\" fill=\"none\" "
              "stroke=\"#999\"/>")
  return body


def curves_chart(panels: Sequence[Mapping], sizes: Sequence[int], classes: Sequence[str],
                 baseline: float, title: str) -> str:
  """SVG of the class-ablation curves: `panels` side by side, each a mapping with `title`,
  `own [K, S]` (each class's own accuracy under its edits), `own_ci [K, S]` (99% half-widths)
  and `others [K, S]` (mean accuracy of the other classes), over `sizes` equally spaced; the
  y axis runs from 0.4 (or lower, to the lowest value) to 1."""
  values = [v for p in panels for key in ("own", "others") for v in np.ravel(p[key])
            if math.isfinite(v)]
  if not values:
    return _svg(240, 40, ["<text x=\"8\" y=\"24\" font-size=\"13\">nothing to plot</text>"],
                title)
  lo = min(0.4, math.floor(min(values) * 10) / 10)
  body = [(f"<text x=\"{_LEFT}\" y=\"18\" font-size=\"13\" font-weight=\"bold\">"
           f"{_attr(title)}</text>")]
  for i, panel in enumerate(panels):
    body += _panel(_LEFT + i * (_W + _GAP + _LEFT), panel, sizes, classes, lo, baseline)
  body.append(f"<text transform=\"translate(14 {_TOP + _H / 2}) rotate(-90)\" font-size=\"11\" "
              "text-anchor=\"middle\">balanced accuracy (held-out)</text>")
  x = _LEFT + len(panels) * (_W + _GAP + _LEFT) - _GAP
  legend = ((_OWN, 2.5, "", "own class, mean"), (_CLASS, 1, "", "own class, each"),
            (_OTHERS, 2.5, "7,4", "other classes, mean"), ("#888", 1, "6,3", "unedited, mean"),
            ("#888", 1, "2,3", "chance"))
  for i, (colour, width, dash, name) in enumerate(legend):
    y = _TOP + 8 + 18 * i
    body.append(_polyline([x, x + 22], [y, y], colour, width, dash))
    body.append(f"<text x=\"{x + 28}\" y=\"{y + 4}\" font-size=\"11\">{_attr(name)}</text>")
  return _svg(x + _LEGEND, _TOP + _H + 44, body, title)


def _step(peak: float) -> float:
  """A 1-2-5 tick step giving at most 5 intervals up to `peak` (any scale)."""
  if not peak > 0:
    return 1.0
  mag = 10 ** math.floor(math.log10(peak / 5))
  return next(m * mag for m in (1, 2, 5, 10) if m * mag >= peak / 5)


def shift_chart(groups: Sequence[tuple[str, Sequence[tuple[float, float]]]],
                legend: Sequence[str], ylabel: str, title: str) -> str:
  """SVG grouped bars: per `(target, [(value, ci99), ...])` group, one bar per `legend` entry
  (e.g. the target's top units, the other units, other classes' top units) with 99%
  whiskers; NaN values are left out."""
  values = [v + (e if math.isfinite(e) else 0) for _, pairs in groups for v, e in pairs
            if math.isfinite(v)]
  if not values:
    return _svg(240, 40, ["<text x=\"8\" y=\"24\" font-size=\"13\">nothing to plot</text>"],
                title)
  bars = len(legend)
  left, top_px, height, bar, gap = 64, 40, 200, 26, 5
  group = bars * (bar + gap) + 30
  width = max(len(groups) * group, 260)
  step = _step(max(values))
  ticks = math.ceil(max(values) / step - 1e-9)
  hi = step * ticks
  sy = lambda y: top_px + height * (1 - y / hi)
  body = [f"<text x=\"8\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{_attr(title)}</text>"]
  for i in range(ticks + 1):
    v = step * i
    body.append(f"<line x1=\"{left}\" x2=\"{left + width}\" y1=\"{_fmt(sy(v))}\" "
                f"y2=\"{_fmt(sy(v))}\" stroke=\"#e3e3e3\"/>")
    body.append(f"<text x=\"{left - 6}\" y=\"{_fmt(sy(v) + 4)}\" font-size=\"10\" "
                f"text-anchor=\"end\">{v:.3g}</text>")
  body.append(f"<text transform=\"translate(14 {top_px + height / 2}) rotate(-90)\" "
              f"font-size=\"11\" text-anchor=\"middle\">{_attr(ylabel)}</text>")
  colours = (_OWN, _OTHERS, "#9a9a9a", "#59a14f", "#f28e2b")
  for g, (name, pairs) in enumerate(groups):
    x0 = left + g * group + 15
    for j, (v, e) in enumerate(pairs[:bars]):
      if not math.isfinite(v):
        continue
      x = x0 + j * (bar + gap)
      body.append(f"<rect x=\"{_fmt(x)}\" y=\"{_fmt(sy(v))}\" width=\"{bar}\" "
                  f"height=\"{_fmt(sy(0) - sy(v))}\" fill=\"{colours[j % len(colours)]}\">"
                  f"<title>{_attr(name)}, {_attr(legend[j])}: {v:.4g} +- {e:.2g}</title></rect>")
      if math.isfinite(e) and e > 0:
        cx = x + bar / 2
        body.append(f"<line x1=\"{_fmt(cx)}\" x2=\"{_fmt(cx)}\" y1=\"{_fmt(sy(v + e))}\" "
                    f"y2=\"{_fmt(sy(max(v - e, 0)))}\" stroke=\"#222\" stroke-width=\"1.5\"/>")
    body.append(f"<text x=\"{_fmt(left + g * group + group / 2)}\" y=\"{top_px + height + 16}\" "
                f"font-size=\"11\" text-anchor=\"middle\">{_attr(name)}</text>")
  body.append(f"<line x1=\"{left}\" x2=\"{left + width}\" y1=\"{_fmt(sy(0))}\" "
              f"y2=\"{_fmt(sy(0))}\" stroke=\"#999\"/>")
  x = left + width + 16
  for i, name in enumerate(legend):
    y = top_px + 8 + 18 * i
    body.append(f"<rect x=\"{x}\" y=\"{y - 6}\" width=\"14\" height=\"10\" "
                f"fill=\"{colours[i % len(colours)]}\"/>")
    body.append(f"<text x=\"{x + 20}\" y=\"{y + 3}\" font-size=\"11\">{_attr(name)}</text>")
  body.append(f"<text x=\"{x}\" y=\"{top_px + 20 + 18 * len(legend)}\" font-size=\"10\" "
              "fill=\"#555\">whiskers: 99% CIs over images</text>")
  return _svg(max(x + 230, 8 + 6.5 * len(title)), top_px + height + 30, body, title)
