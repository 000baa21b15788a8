"""Checks a written report in a real (headless) browser, without a person looking at it.

A report can be wrong in ways no Python test sees: a script error leaves the page blank, or the
strip paths do not resolve from `file://`. The page's script records on `<body>` how many unit
cards it rendered (`data-units`) and, once every image has loaded or failed,
`data-images-loaded` / `data-images-failed`. This module opens the page in headless Chromium,
dumps the DOM after the page settles and reads those attributes back; it can also save a
screenshot. Only `subprocess` is used; a missing or failing browser raises RuntimeError.
"""

from __future__ import annotations

import html.parser
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import urllib.parse

from jaxdissect.report.html import REPORT_NAME

DEFAULT_CHROMIUM = "/usr/bin/chromium"
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--virtual-time-budget=10000")
_INT_ATTRS = {"data-units": "units", "data-images": "images", "data-images-loaded": "images_loaded",
              "data-images-failed": "images_failed"}


def report_url(outdir: str, layer: str | None = None) -> str:
  """`file://` URL of `OUTDIR/report.html`, with `#layer` when a layer is given."""
  url = pathlib.Path(outdir, REPORT_NAME).resolve().as_uri()
  return url + ("#" + urllib.parse.quote(layer, safe="") if layer else "")


def _chromium_path(chromium: str) -> str:
  path = chromium if os.path.sep in chromium else shutil.which(chromium)
  if not path or not os.access(path, os.X_OK):
    raise RuntimeError(f"chromium not found at {chromium!r}; install it (Debian: apt-get install "
                       f"chromium) or pass its path")
  return path


def _run(chromium: str, args: list[str], timeout: float) -> str:
  """Runs headless Chromium with a fresh profile; returns stdout. Raises RuntimeError on failure."""
  exe = _chromium_path(chromium)
  with tempfile.TemporaryDirectory(prefix="jaxdissect-chromium-") as profile:
    cmd = [exe, *_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
      out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)   # the browser's own process group, started above
      proc.communicate()
      raise RuntimeError(f"chromium timed out after {timeout} s: {' '.join(cmd)}") from None
  if proc.returncode != 0:
    tail = "\n".join(err.strip().splitlines()[-10:])
    raise RuntimeError(f"chromium exited with status {proc.returncode}: {' '.join(cmd)}\n{tail}")
  return out


class _BodyAttrs(html.parser.HTMLParser):
  """Collects the attributes of the first `<body>` tag."""

  def __init__(self):
    super().__init__()
    self.attrs: dict[str, str] | None = None

  def handle_starttag(self, tag, attrs):
    if tag == "body" and self.attrs is None:
      self.attrs = {k: v or "" for k, v in attrs}


def body_attributes(dom: str) -> dict[str, str]:
  """Attributes of `<body>` in a dumped DOM (empty if there is no body)."""
  parser = _BodyAttrs()
  parser.feed(dom)
  parser.close()
  return parser.attrs or {}


def parse_status(dom: str) -> dict:
  """The report's self-check from a dumped DOM.

  Returns `{"layer", "units", "images", "images_loaded", "images_failed"}`; a value is None when
  the page did not set it (script error, or images still pending when the DOM was dumped).
  """
  attrs = body_attributes(dom)
  status = {"layer": attrs.get("data-layer")}
  for attr, key in _INT_ATTRS.items():
    try:
      status[key] = int(attrs[attr])
    except (KeyError, ValueError):
      status[key] = None
  return status


def check_report(outdir: str, layer: str | None = None, chromium: str = DEFAULT_CHROMIUM,
                 timeout: float = 60) -> dict:
  """Opens `OUTDIR/report.html#layer` headless and returns `parse_status` of its DOM (+ "url")."""
  if not os.path.exists(os.path.join(outdir, REPORT_NAME)):
    raise FileNotFoundError(f"no {REPORT_NAME} in {outdir}")
  url = report_url(outdir, layer)
  status = parse_status(_run(chromium, ["--dump-dom", url], timeout))
  status["url"] = url
  return status


def screenshot(outdir: str, path: str, layer: str | None = None,
               chromium: str = DEFAULT_CHROMIUM, window: tuple[int, int] = (1400, 1000),
               timeout: float = 60) -> str:
  """Saves a PNG of `OUTDIR/report.html#layer` at `window` size (width, height); returns `path`."""
  if not os.path.exists(os.path.join(outdir, REPORT_NAME)):
    raise FileNotFoundError(f"no {REPORT_NAME} in {outdir}")
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if os.path.exists(path):
    os.remove(path)
  args = [f"--screenshot={path}", f"--window-size={window[0]},{window[1]}", "--hide-scrollbars",
          report_url(outdir, layer)]
  _run(chromium, args, timeout)
  if not os.path.exists(path):
    raise RuntimeError(f"chromium did not write the screenshot {path}")
  return path
