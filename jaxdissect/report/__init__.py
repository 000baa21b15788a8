"""The dissection report: unit strips, summary charts, the HTML page and its browser check.

Dissection produces numbers; this package turns them into something a person can judge: a strip
of top images per unit (`strips`), SVG charts of concepts per layer (`svg`), one self-contained
HTML page over the output folder (`html`) and a headless-browser check of that page (`browser`).
"""

from jaxdissect.report.browser import check_report, screenshot
from jaxdissect.report.html import embedded_doc, report_html, write_report
from jaxdissect.report.strips import save_jpeg, unit_strip
from jaxdissect.report.svg import concept_bargraph, layer_chart, order_categories, pluralize

__all__ = ["check_report", "concept_bargraph", "embedded_doc", "layer_chart", "order_categories",
           "pluralize", "report_html", "save_jpeg", "screenshot", "unit_strip", "write_report"]
