"""The paint server's web layer: the FastAPI app, its routes, the body limit and error answers.

`create_app` loads a `session.PaintModel` over a finished dissection and serves the paint page
(`experiments/paint_static`), the JSON API declared in `schema`, and the offline `/docs` page
(`apidocs`). Every refusal is a JSON `{"detail": ...}`: 400 for a bad value, 404 for a missing
file, 413 for an oversized body, 422 for a malformed one.
"""

from __future__ import annotations

import mimetypes
import os
from typing import Any

import fastapi
from fastapi import responses
from fastapi.exceptions import RequestValidationError
import numpy as np

from experiments.paint import STATIC_DIR, apidocs, schema, session
from jaxdissect import paint

MAX_INTERVENTIONS = 32
MAX_BATCH = 16
MAX_BODY_BYTES = 2_000_000
INTENSITIES = (4, 10, 15)  # the original client's low / medium / high unit counts
INSERT_SCALE = 2.0  # "add" sets units to their threshold times this (experiments.insert)


class BodyLimit:
  """ASGI middleware: answers 413 to requests whose body exceeds `max_bytes` (declared or sent).

  The body is read up front (it is at most `max_bytes`) and replayed to the app.
  """

  def __init__(self, app: Any, max_bytes: int):
    self.app = app
    self.max_bytes = max_bytes

  async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
      await self.app(scope, receive, send)
      return
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
      await self._too_large(scope, send, declared.decode("latin-1"))
      return
    chunks, size, more = [], 0, True
    while more:
      message = await receive()
      if message["type"] != "http.request":
        return  # the client went away
      chunks.append(message.get("body", b""))
      size += len(chunks[-1])
      if size > self.max_bytes:
        await self._too_large(scope, send, f"more than {size}")
        return
      more = message.get("more_body", False)
    replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

    async def replayed() -> dict:
      return replay.pop() if replay else await receive()

    await self.app(scope, replayed, send)

  async def _too_large(self, scope: dict, send: Any, size: str) -> None:
    detail = (f"request body is {size} bytes; the limit is {self.max_bytes} bytes "
              "(fewer strokes or images per request)")
    await responses.JSONResponse({"detail": detail}, status_code=413)(scope, None, send)


def _validation_detail(exc: RequestValidationError) -> str:
  """Pydantic's errors as one readable line: 'body.zs.0: Input should be a valid list; ...'."""
  parts = []
  for err in exc.errors():
    where = ".".join(str(p) for p in err.get("loc", ()))
    parts.append(f"{where}: {err.get('msg', 'invalid')}")
  return "; ".join(parts) or "invalid request"


def create_app(dissection_dir: str, model_name: str | None = None, *,
               max_interventions: int = MAX_INTERVENTIONS, max_batch: int = MAX_BATCH,
               max_body_bytes: int = MAX_BODY_BYTES, static_dir: str = STATIC_DIR,
               warm_up: bool = True) -> fastapi.FastAPI:
  """The paint page and API over the dissection in `dissection_dir` of generator `model_name`.

  `app.state.paint` is the `PaintModel` (its `traces` count compilations). Raises UsageError if
  the folder holds no dissection of that model.
  """
  model = session.PaintModel(dissection_dir, model_name, max_interventions, max_batch)
  if warm_up:
    model.warm_up()
  static = {name: os.path.join(static_dir, name) for name in sorted(os.listdir(static_dir))
            if os.path.isfile(os.path.join(static_dir, name))}
  api = fastapi.FastAPI(title="jaxdissect paint",
                        description="Paint with the units of a dissected GAN (GANPaint-style).",
                        docs_url=None, redoc_url=None)
  api.state.paint = model
  api.add_middleware(BodyLimit, max_bytes=max_body_bytes)

  @api.exception_handler(RequestValidationError)
  async def _invalid(_, exc: RequestValidationError) -> responses.JSONResponse:
    return responses.JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

  @api.exception_handler(session.RequestError)
  async def _refused(_, exc: session.RequestError) -> responses.JSONResponse:
    return responses.JSONResponse({"detail": str(exc)}, status_code=400)

  _static_routes(api, static)
  _table_routes(api, model)
  _compute_routes(api, model)
  apidocs.docs_route(api)
  return api


def _static_routes(api: fastapi.FastAPI, static: dict[str, str]) -> None:
  """`/` (the page) and `/static/<name>` for the files of the static folder, and nothing else."""

  def serve(name: str) -> responses.FileResponse:
    if name not in static:
      raise fastapi.HTTPException(404, f"no static file {name!r}; files: {', '.join(static)}")
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return responses.FileResponse(static[name], media_type=media,
                                  headers={"Cache-Control": "no-cache"})

  @api.get("/", include_in_schema=False)
  def index() -> responses.FileResponse:
    return serve("index.html")

  @api.get("/static/{name}", include_in_schema=False)
  def static_file(name: str) -> responses.FileResponse:
    return serve(name)


def _table_routes(api: fastapi.FastAPI, model: session.PaintModel) -> None:
  """Read-only views of the dissection: info, layers, units, concepts, rankings, levels."""

  @api.get("/api/info", summary="Model, image size and limits",
           response_model=schema.InfoResponse)
  def info() -> dict:
    """The model, image size, request limits and the page's defaults."""
    return {"model": model.model_name, "segmenter": model.dissection.segmenter,
            "image_size": list(model.size), "zdim": model.zdim,
            "max_interventions": model.max_interventions, "max_batch": model.max_batch,
            "default_layer": model.default_layer(), "intensities": list(INTENSITIES),
            "insert_scale": INSERT_SCALE}

  @api.get("/api/layers", summary="Dissected layers", response_model=schema.LayersResponse)
  def layers() -> dict:
    """The dissected layers: shape [h, w, units] and interpretable units per concept."""
    return {"layers": [{"layer": name, "shape": list(rec.shape), "interpretable": rec.interpretable,
                        "concept_counts": rec.concept_counts}
                       for name, rec in model.layers.items()]}

  @api.get("/api/units", summary="Units of a layer", response_model=schema.UnitsResponse,
           responses=schema.TABLE_ERRORS)
  def units(layer: schema.LayerQuery) -> dict:
    """Every unit of `layer`: label, category, IoU, threshold and its top-image strip URL."""
    rec = model.layer(layer)
    rows = [{"unit": u.unit, "label": u.label, "category": u.category, "iou": u.iou,
             "threshold": u.threshold, "interpretable": u.interpretable,
             "strip": f"/strips/{layer}/{u.unit}" if model.strip_path(layer, u.unit) else None}
            for u in rec.units]
    return {"layer": layer, "units": rows}

  @api.get("/api/concepts", summary="Concepts of a layer",
           response_model=schema.ConceptsResponse, responses=schema.TABLE_ERRORS)
  def concepts(layer: schema.LayerQuery) -> dict:
    """Concepts that label units of `layer`, with the rankings available for each."""
    model.layer(layer)
    return {"layer": layer, "concepts": model.layer_concepts(layer)}

  @api.get("/api/rankings", summary="Units ranked for a concept",
           response_model=schema.RankingsResponse, responses=schema.TABLE_ERRORS)
  def rankings(layer: schema.LayerQuery, concept: schema.ConceptQuery = None) -> dict:
    """Units of `layer` ranked for `concept` (default: every concept), best first."""
    model.layer(layer)
    names = [concept] if concept is not None else model.concepts[1:]
    return {"layer": layer, "rankings": [r for c in names for r in model.rankings(layer, c)]}

  @api.get("/api/levels", summary="Unit activation levels",
           response_model=schema.LevelsResponse, responses=schema.TABLE_ERRORS)
  def levels(layer: schema.LayerQuery) -> dict:
    """Each unit's dissection threshold: its (1 - q) activation quantile (q = the dissection's
    --threshold; `quantile` is null for IQR thresholds)."""
    rec = model.layer(layer)
    q = model.dissection.settings.get("threshold")
    try:
      quantile = 1.0 - float(q)
    except (TypeError, ValueError):
      quantile = None
    return {"layer": layer, "quantile": quantile,
            "levels": [u.threshold for u in rec.units]}

  @api.get("/strips/{layer}/{unit}", include_in_schema=False)
  def strip(layer: str, unit: int) -> responses.FileResponse:
    rec = model.layer(layer)
    if not 0 <= unit < len(rec.units):
      raise fastapi.HTTPException(404, f"unit {unit} is out of range for {layer}")
    path = model.strip_path(layer, unit)
    if path is None:
      raise fastapi.HTTPException(404, f"the dissection has no strip of {layer} unit {unit}")
    return responses.FileResponse(path, media_type="image/jpeg")


def _compute_routes(api: fastapi.FastAPI, model: session.PaintModel) -> None:
  """`generate` and `features`: the requests that run the generator."""

  @api.post("/api/generate", summary="Generate images with edits",
            response_model=schema.GenerateResponse, responses=schema.COMPUTE_ERRORS)
  def generate(req: schema.GenerateRequest) -> dict:
    """Images of `seeds` or `zs` with `interventions` composited in order (later on top)."""
    z = model.latents(req)
    images = model.render(z, model.strokes(req.interventions))
    return {"images": [paint.png_data_url(im) for im in images]}

  @api.post("/api/features", summary="Unit activations under a mask",
            response_model=schema.FeaturesResponse, responses=schema.COMPUTE_ERRORS)
  def features(req: schema.FeaturesRequest) -> dict:
    """Per layer and image, each unit's mean activation under the mask (mean-pooled to the
    grid) and its max (mask max-pooled)."""
    names = req.layers if req.layers is not None else list(model.layers)
    for name in names:
      model.layer(name)
    mask = model.mask(req.mask)
    mask = np.ones(model.size, np.float32) if mask is None else mask
    if not mask.any():
      raise session.RequestError("mask is empty: paint at least one pixel")
    out = model.features(model.latents(req), mask)
    return {"layers": {n: {"mean": out[n][0].tolist(), "max": out[n][1].tolist()}
                       for n in names}}
