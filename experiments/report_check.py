"""Checks a dissection report in headless Chromium: every unit card rendered, every strip loaded.

Command (a second or two per layer):

  python -m experiments.report_check --outdir results/dissect [--layer layer4]
      [--screenshot results/dissect/report.png]

Opens `OUTDIR/report.html#LAYER` (every layer of `OUTDIR/dissect.json` unless --layer is given),
reads the counts the page records on `<body>`, logs them, and exits 1 unless the page rendered one
card per unit of the layer, loaded at least that many images and none failed. With --screenshot it
also saves a PNG of the page (the first checked layer) for the README.
"""

from __future__ import annotations


from absl import app, flags, logging

from jaxdissect.report import browser, reader

_OUTDIR = flags.DEFINE_string("outdir", None, "Dissection output folder with report.html.",
                              required=True)
_LAYER = flags.DEFINE_string("layer", None, "Layer to check; default: every layer.")
_SCREENSHOT = flags.DEFINE_string("screenshot", None, "Optional PNG path for a screenshot.")
_WINDOW = flags.DEFINE_string("window_size", "1400,1000", "Screenshot size, WIDTH,HEIGHT.")
_CHROMIUM = flags.DEFINE_string("chromium", browser.DEFAULT_CHROMIUM, "Chromium executable.")
_TIMEOUT = flags.DEFINE_float("timeout", 60, "Seconds allowed per browser run.")


def main(argv):
  del argv
  try:
    dissection = reader.read_folder(_OUTDIR.value)
  except reader.DissectionReadError as e:
    raise app.UsageError(str(e)) from None
  expected = {layer.layer: len(layer.units) for layer in dissection.layers}
  names = [_LAYER.value] if _LAYER.value else list(expected)
  problems = []
  for name in names:
    if name not in expected:
      raise app.UsageError(f"unknown layer {name!r}; valid layers are: {', '.join(expected)}")
    status = browser.check_report(_OUTDIR.value, name, chromium=_CHROMIUM.value,
                                  timeout=_TIMEOUT.value)
    logging.info("%s: %s unit cards (expected %d), images loaded %s, failed %s", name,
                 status["units"], expected[name], status["images_loaded"],
                 status["images_failed"])
    if status["layer"] != name or status["units"] != expected[name]:
      problems.append(f"{name}: rendered {status['units']} cards for layer {status['layer']!r}, "
                      f"expected {expected[name]}")
    if status["images_failed"] is None or status["images_loaded"] is None:
      problems.append(f"{name}: images had not settled when the page was dumped")
    elif status["images_failed"] > 0 or status["images_loaded"] < expected[name]:
      problems.append(f"{name}: {status['images_loaded']} images loaded, "
                      f"{status['images_failed']} failed")
  if _SCREENSHOT.value:
    width, height = (int(v) for v in _WINDOW.value.split(","))
    path = browser.screenshot(_OUTDIR.value, _SCREENSHOT.value, names[0],
                              chromium=_CHROMIUM.value, window=(width, height),
                              timeout=_TIMEOUT.value)
    logging.info("wrote %s", path)
  if problems:
    raise SystemExit("report check failed:\n  " + "\n  ".join(problems))
  logging.info("report OK: %d layer(s) checked", len(names))


if __name__ == "__main__":
  app.run(main)
