"""Paint with units: a GANPaint-style web page and JSON API over a finished dissection.

Command (starts in about 10 seconds on 2 CPU cores; one edit then takes tens of milliseconds):

  python -m experiments.paint_server --dissection results/dissect-sceneworld

then open http://127.0.0.1:8000/ (the page) or http://127.0.0.1:8000/docs (the API). The page
shows a scene chosen by seed; strokes drawn on it remove (ablate) or add (insert at a multiple
of each unit's dissection threshold) the top units of a concept, ranked by the dissection's IoU
or by the coefficients `experiments.optimize_units` learned (`units-<concept>.json`). It writes
nothing. The server listens on loopback unless `--host` says otherwise.

The API mirrors the original GANPaint server (spec §8): layers, units (label, IoU, threshold,
top-image strip), rankings per concept, per-unit levels, `generate` (seeds or explicit z, plus
interventions composited in order by `intervene.compose`, each inside an optional stroke mask)
and `features` (unit activations under a mask). Every request of a batch size runs one compiled
function: interventions are padded to `max_interventions` and masks have the image's size.
Bad requests get a 4xx answer whose `detail` names the bad value and what would be valid.

`/docs` documents the API from its OpenAPI schema (`/openapi.json`), rendered into one page
that loads nothing from another host: FastAPI's own docs pages fetch Swagger UI and ReDoc from a
CDN and stay blank offline, so they are turned off.

This file is the command: its flags and a call. The server itself is the `experiments.paint`
package (`schema`, `session`, `app`, `apidocs`); `create_app` is re-exported from here.
"""

from __future__ import annotations

import os

from absl import app as absl_app
from absl import flags, logging

from experiments import cli
from experiments.cli import UsageError
from experiments.paint.app import INSERT_SCALE, create_app
from experiments.paint.schema import GenerateRequest
from experiments.paint.session import PaintModel
from jaxdissect import paint

# The names callers import from here (tests, experiments.benchmark_paint).
__all__ = ["INSERT_SCALE", "GenerateRequest", "PaintModel", "create_app", "paint"]


def define_flags() -> None:
  """The command's flags. Only the command defines them: importing `create_app` (tests, the
  benchmark) must not clash with other scripts' flags of the same names."""
  flags.DEFINE_string("dissection", "results/dissect-sceneworld",
                      "Output folder of experiments.dissect.")
  flags.DEFINE_string("model", None, "Generator spec (default: the one the dissection records; "
                      "if given, it must be that one).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (loopback by default).")
  flags.DEFINE_integer("port", 8000, "Port to listen on.")


def _serve() -> None:
  import uvicorn  # only the command needs the server
  f = flags.FLAGS
  if not os.path.isdir(f.dissection):
    raise UsageError(f"--dissection={f.dissection} is not a folder; run experiments.dissect "
                     "first")
  try:
    api = create_app(f.dissection, f.model)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if f.host not in ("127.0.0.1", "localhost", "::1"):
    logging.warning("listening on %s: anyone who can reach it can use the server", f.host)
  logging.info("paint page at http://%s:%d/ (API docs at /docs)", f.host, f.port)
  uvicorn.run(api, host=f.host, port=f.port, log_level="warning")


def main(argv):
  cli.run_main("paint_server", _serve, argv)


if __name__ == "__main__":
  define_flags()
  absl_app.run(main)
