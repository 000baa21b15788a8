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

`/docs` documents the API from its OpenAPI schema (`/openapi.json`), rendered here into one page
that loads nothing from another host: FastAPI's own docs pages fetch Swagger UI and ReDoc from a
CDN and stay blank offline, so they are turned off.
"""

from __future__ import annotations

import glob
import html
import json
import mimetypes
import os
import re
import threading
from collections import Counter
from typing import Annotated, Any, Literal

from absl import app as absl_app
from absl import flags, logging
import fastapi
from fastapi import responses
from fastapi.exceptions import RequestValidationError
import jax
import jax.numpy as jnp
import numpy as np
import pydantic

from experiments import cli
from experiments.cli import UsageError
from experiments.dissection_io import layer_iou, load_dissection
from jaxdissect import paint, unitsets, zoo
from jaxdissect.errors import check_choice
from jaxdissect.zsample import standard_z

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paint_static")
MAX_INTERVENTIONS = 32
MAX_BATCH = 16
MAX_BODY_BYTES = 2_000_000
INTENSITIES = (4, 10, 15)  # the original client's low / medium / high unit counts
INSERT_SCALE = 2.0  # "add" sets units to their threshold times this (experiments.insert)

# ------------------------------------------------------------------------------------ requests

Seed = Annotated[int, pydantic.Field(ge=0, lt=2**32)]


class _Strict(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")


class Intervention(_Strict):
  """Units of one layer set to `value` with weight `alpha` (x (1 - a) + v a) inside `mask`."""

  layer: str = pydantic.Field(description="A dissected layer (see /api/layers).")
  unit: int | None = pydantic.Field(None, description="One unit (or use `units`).")
  units: list[int] | None = pydantic.Field(None, description="Several units.")
  alpha: float | list[float] = pydantic.Field(1.0, description="In [0, 1]; one or per unit.")
  value: float | list[float] = pydantic.Field(0.0, description="Level; one or per unit.")
  mask: str | None = pydantic.Field(
      None, description="PNG data URL (painted where alpha > 0) or a row-major '0'/'1' raster, "
      "at the image's size; none = everywhere.")
  pooling: Literal["max", "mean"] = pydantic.Field(
      "max", description="How the mask is pooled to the layer's grid.")


class Latents(_Strict):
  """Images given by seed (z = the first row of the z sample of that seed) or by explicit z.

  Give exactly one of `seeds` or `zs`, with 1 to `max_batch` (see /api/info) images.
  """

  seeds: list[Seed] | None = pydantic.Field(
      None, description="One image per seed (give `seeds` or `zs`).")
  zs: list[list[float]] | None = pydantic.Field(
      None, description="One image per latent of `zdim` numbers (give `seeds` or `zs`).")


class GenerateRequest(Latents):
  """Images to generate and the strokes to apply to every one of them."""

  interventions: list[Intervention] = pydantic.Field(
      [], description="Composited in order, later on top; at most `max_interventions`.")


class FeaturesRequest(Latents):
  """Images whose unit activations to measure, and where."""

  mask: str | None = pydantic.Field(None, description="As in an intervention; none = all.")
  layers: list[str] | None = pydantic.Field(None, description="Default: every dissected layer.")


# ----------------------------------------------------------------------------------- responses

class GenerateResponse(pydantic.BaseModel):
  images: list[str] = pydantic.Field(description="PNG data URLs, one per seed or z.")


class ErrorResponse(pydantic.BaseModel):
  """A refused request."""

  detail: str = pydantic.Field(description="The bad value and what would be valid.")


class InfoResponse(pydantic.BaseModel):
  model: str = pydantic.Field(description="The generator (a name of `jaxdissect.zoo`).")
  segmenter: str = pydantic.Field(description="The segmenter the dissection labelled with.")
  image_size: list[int] = pydantic.Field(description="[H, W] of images and masks.")
  zdim: int = pydantic.Field(description="Numbers per latent z.")
  max_interventions: int = pydantic.Field(description="Most interventions per request.")
  max_batch: int = pydantic.Field(description="Most images per request.")
  default_layer: str = pydantic.Field(description="The layer the page starts on.")
  intensities: list[int] = pydantic.Field(description="Units per stroke: low, medium, high.")
  insert_scale: float = pydantic.Field(
      description="'Add' sets units to their threshold times this.")


class LayerInfo(pydantic.BaseModel):
  layer: str
  shape: list[int] = pydantic.Field(description="[h, w, units] of the featuremap.")
  interpretable: int = pydantic.Field(description="Units whose label passes the IoU cut.")
  concept_counts: dict[str, int] = pydantic.Field(
      description="Interpretable units per concept.")


class LayersResponse(pydantic.BaseModel):
  layers: list[LayerInfo]


class UnitInfo(pydantic.BaseModel):
  unit: int
  label: str = pydantic.Field(description="The concept of highest IoU.")
  category: str = pydantic.Field(description="The label's category (object, material, ...).")
  iou: float = pydantic.Field(description="IoU of the unit with its label.")
  threshold: float = pydantic.Field(description="Activation level of the dissection's cut.")
  interpretable: bool = pydantic.Field(description="Whether the IoU passes the cut.")
  strip: str | None = pydantic.Field(description="URL of its top-image strip, if any.")


class UnitsResponse(pydantic.BaseModel):
  layer: str
  units: list[UnitInfo] = pydantic.Field(description="Every unit, by index.")


class ConceptInfo(pydantic.BaseModel):
  name: str
  category: str
  units: int = pydantic.Field(description="Units of the layer labelled with it.")
  interpretable: int = pydantic.Field(description="Of those, units that pass the IoU cut.")
  rankings: list[Literal["iou", "alpha"]] = pydantic.Field(
      description="Rankings available: by IoU, and by learned alpha (units-<concept>.json).")


class ConceptsResponse(pydantic.BaseModel):
  layer: str
  concepts: list[ConceptInfo] = pydantic.Field(description="Learned and most labelled first.")


class Ranking(pydantic.BaseModel):
  name: str = pydantic.Field(description="'<concept>-<metric>'.")
  concept: str
  metric: Literal["iou", "alpha"]
  units: list[int] = pydantic.Field(description="Every unit, best first.")
  scores: list[float] = pydantic.Field(description="The metric of each of `units`.")


class RankingsResponse(pydantic.BaseModel):
  layer: str
  rankings: list[Ranking]


class LevelsResponse(pydantic.BaseModel):
  layer: str
  quantile: float | None = pydantic.Field(
      description="The activation quantile of the levels; null for IQR thresholds.")
  levels: list[float] = pydantic.Field(description="Each unit's dissection threshold.")


class LayerFeatures(pydantic.BaseModel):
  mean: list[list[float]] = pydantic.Field(
      description="[images][units]: mean activation, weighted by the mask mean-pooled to the "
      "layer's grid.")
  max: list[list[float]] = pydantic.Field(
      description="[images][units]: max activation where the max-pooled mask is set.")


class FeaturesResponse(pydantic.BaseModel):
  layers: dict[str, LayerFeatures] = pydantic.Field(description="Per requested layer.")


LayerQuery = Annotated[str, fastapi.Query(description="A dissected layer (see /api/layers).")]
ConceptQuery = Annotated[str | None, fastapi.Query(
    description="A concept (see /api/concepts); none = every concept.")]
TABLE_ERRORS = {400: {"model": ErrorResponse, "description": "An unknown layer or concept."},
                422: {"model": ErrorResponse, "description": "A missing or mistyped parameter."}}
COMPUTE_ERRORS = {
    400: {"model": ErrorResponse,
          "description": "A bad value: layer, unit, alpha, mask, latent or image count."},
    413: {"model": ErrorResponse, "description": "The body exceeds the server's size limit."},
    422: {"model": ErrorResponse,
          "description": "Malformed JSON, a mistyped value or an unknown field."}}


def _bad(message: str) -> fastapi.HTTPException:
  return fastapi.HTTPException(status_code=400, detail=message)


# ------------------------------------------------------------------------------------- the model

class PaintModel:
  """The dissection's tables and the generator, compiled once per batch size.

  `traces` counts how often the generation and feature functions were traced (a retrace per
  request would make every edit wait for a compile).
  """

  def __init__(self, folder: str, model_name: str, max_interventions: int, max_batch: int):
    check_choice("model", model_name, zoo.GENERATORS)
    self.folder = folder
    self.doc = load_dissection(folder)
    if self.doc["model"] != model_name:
      raise UsageError(f"{folder} dissects model {self.doc['model']!r}, not {model_name!r}; pass "
                       f"--model {self.doc['model']}")
    self.model_name = model_name
    self.max_interventions = max_interventions
    self.max_batch = max_batch
    self.layers = {layer["layer"]: layer for layer in self.doc["layers"]}
    self.concepts = [c["name"] for c in self.doc["concepts"]]
    self.iou = {name: layer_iou(folder, layer) for name, layer in self.layers.items()}
    self.alpha = self._learned_alphas()
    self.gen = zoo.load_generator(model_name)
    self.zdim = zoo.latent_dim(model_name)
    self.size, self.grids = self._shapes()
    self.traces = 0
    self._lock = threading.Lock()
    self._render = jax.jit(self._render_fn)
    self._features = jax.jit(self._features_fn)

  def _learned_alphas(self) -> dict[tuple[str, str], np.ndarray]:
    """(layer, concept) -> the `[C]` alpha of each readable `units-*.json` in the folder."""
    found = {}
    for path in sorted(glob.glob(os.path.join(self.folder, "units-*.json"))):
      try:
        with open(path) as f:
          learned = json.load(f)
        layer, concept = learned["layer"], learned["concept"]
        alpha = np.asarray(learned["alpha"], np.float32)
        ok = (layer in self.layers and concept in self.concepts[1:]
              and alpha.shape == (self.layers[layer]["shape"][2],))
      except (OSError, ValueError, KeyError, TypeError) as e:
        logging.warning("skipping %s: %s", path, e)
        continue
      if ok:
        found[(layer, concept)] = alpha
      else:
        logging.warning("skipping %s: its layer, concept or alpha do not match %s", path,
                        self.folder)
    return found

  def _shapes(self) -> tuple[tuple[int, int], dict[str, tuple[int, int]]]:
    """The image size (H, W) and each dissected layer's featuremap grid (h, w)."""
    names = tuple(self.layers)
    out = jax.eval_shape(lambda z: self.gen.apply_fn(self.gen.params, z, capture=names),
                         jax.ShapeDtypeStruct((1, self.zdim), jnp.float32))
    image, acts = out
    return tuple(image.shape[1:3]), {n: tuple(acts[n].shape[1:3]) for n in names}

  def _render_fn(self, params: Any, z: jax.Array, packed: paint.PackedStrokes) -> jax.Array:
    self.traces += 1
    images, _ = self.gen.apply_fn(params, z, edits=paint.composed_edits(packed, self.grids))
    return paint.to_uint8(images)

  def _features_fn(self, params: Any, z: jax.Array, mask: jax.Array) -> dict:
    self.traces += 1
    _, acts = self.gen.apply_fn(params, z, capture=tuple(self.layers))
    return {name: paint.masked_features(a, mask) for name, a in acts.items()}

  # -- requests -> arrays (ValueError -> 400)

  def layer(self, name: str) -> dict:
    """The dissection's record of layer `name`."""
    try:
      check_choice("layer", name, self.layers)
    except ValueError as e:
      raise _bad(str(e)) from None
    return self.layers[name]

  def concept(self, name: str) -> int:
    """Label index of concept `name`."""
    try:
      check_choice("concept", name, self.concepts[1:])
    except ValueError as e:
      raise _bad(str(e)) from None
    return self.concepts.index(name)

  def latents(self, req: Latents) -> np.ndarray:
    """`[B, zdim]` from a request's seeds or zs (exactly one of them, 1..max_batch rows)."""
    if (req.seeds is None) == (req.zs is None):
      raise _bad("give exactly one of 'seeds' (a list of ints) or 'zs' (a list of latents)")
    rows = len(req.seeds if req.seeds is not None else req.zs)
    if not 1 <= rows <= self.max_batch:
      raise _bad(f"{rows} images requested; give 1 to {self.max_batch} per request")
    if req.seeds is not None:
      return np.stack([standard_z(1, s, self.zdim)[0] for s in req.seeds])
    lengths = sorted({len(r) for r in req.zs})
    if lengths != [self.zdim]:
      raise _bad(f"zs rows have lengths {lengths}; {self.model_name} latents have {self.zdim}")
    z = np.asarray(req.zs, np.float32)
    if not np.all(np.isfinite(z)):
      raise _bad("zs hold a non-finite number")
    return z

  def mask(self, text: str | None) -> np.ndarray | None:
    """A request's mask string decoded at image size (None stays None)."""
    if text is None:
      return None
    try:
      return paint.decode_mask(text, self.size)
    except ValueError as e:
      raise _bad(str(e)) from None

  def strokes(self, interventions: list[Intervention]) -> paint.PackedStrokes:
    """Validated, decoded and padded interventions."""
    if len(interventions) > self.max_interventions:
      raise _bad(f"{len(interventions)} interventions; at most {self.max_interventions} per "
                 "request (undo or clear some strokes)")
    strokes = []
    for i, iv in enumerate(interventions):
      layer = self.layer(iv.layer)
      if (iv.unit is None) == (iv.units is None):
        raise _bad(f"intervention {i}: give exactly one of 'unit' or 'units'")
      units = [iv.unit] if iv.unit is not None else iv.units
      mask = self.mask(iv.mask)
      try:
        strokes.append(paint.make_stroke(iv.layer, units, iv.alpha, iv.value, mask, iv.pooling,
                                         layer["shape"][2]))
      except ValueError as e:
        raise _bad(f"intervention {i}: {e}") from None
    units = {name: layer["shape"][2] for name, layer in self.layers.items()}
    return paint.pack_strokes(strokes, units, self.size, self.max_interventions)

  # -- compute

  def render(self, z: np.ndarray, packed: paint.PackedStrokes) -> np.ndarray:
    """`[B, H, W, 3]` uint8 images of `z` with the packed edits."""
    with self._lock:
      return np.asarray(self._render(self.gen.params, jnp.asarray(z), packed))

  def features(self, z: np.ndarray, mask: np.ndarray) -> dict[str, tuple[np.ndarray, ...]]:
    """Per dissected layer, `([B, C] mean, [B, C] max)` of the activations under `mask`."""
    with self._lock:
      out = self._features(self.gen.params, jnp.asarray(z), jnp.asarray(mask))
      return jax.tree.map(np.asarray, out)

  def warm_up(self) -> None:
    """Compiles the batch-1 generation, which every edit of the page uses."""
    self.render(np.zeros((1, self.zdim), np.float32), self.strokes([]))

  # -- tables

  def rankings(self, layer: str, concept: str) -> list[dict]:
    """The concept's unit rankings on `layer`: by IoU, and by learned alpha where there is one."""
    iou = self.iou[layer][:, self.concept(concept)]
    order = np.argsort(-iou, kind="stable")
    out = [{"name": f"{concept}-iou", "concept": concept, "metric": "iou",
            "units": order.tolist(), "scores": iou[order].tolist()}]
    alpha = self.alpha.get((layer, concept))
    if alpha is not None:
      order = unitsets.ranking(alpha, iou)
      out.append({"name": f"{concept}-alpha", "concept": concept, "metric": "alpha",
                  "units": order.tolist(), "scores": alpha[order].tolist()})
    return out

  def layer_concepts(self, layer: str) -> list[dict]:
    """Concepts the layer's units are labelled with (or that have learned alpha), most first."""
    record = self.layers[layer]
    labelled = Counter(u["label"] for u in record["units"] if u["label"] in self.concepts[1:])
    interpretable = record.get("concept_counts", {})
    names = set(labelled) | {c for (name, c) in self.alpha if name == layer}
    rows = [{"name": c, "category": self.doc["concepts"][self.concepts.index(c)]["category"],
             "units": labelled.get(c, 0), "interpretable": interpretable.get(c, 0),
             "rankings": ["iou"] + (["alpha"] if (layer, c) in self.alpha else [])}
            for c in names]
    return sorted(rows, key=lambda r: (-len(r["rankings"]), -r["interpretable"], -r["units"],
                                       r["name"]))

  def strip_path(self, layer: str, unit: int) -> str | None:
    """The file of a unit's top-image strip, if the dissection wrote one inside its folder."""
    rel = self.layers[layer]["units"][unit].get("image")
    if not rel:
      return None
    root = os.path.realpath(self.folder)
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
      return None
    return path

  def default_layer(self) -> str:
    """The layer of the first learned unit set, else layer4 (GANPaint's), else the first."""
    if self.alpha:
      return sorted(self.alpha)[0][0]
    return "layer4" if "layer4" in self.layers else next(iter(self.layers))


# ------------------------------------------------------------------------------------ middleware

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


# ----------------------------------------------------------------------------------------- app

def create_app(dissection_dir: str, model_name: str = "sceneworld", *,
               max_interventions: int = MAX_INTERVENTIONS, max_batch: int = MAX_BATCH,
               max_body_bytes: int = MAX_BODY_BYTES, static_dir: str = STATIC_DIR,
               warm_up: bool = True) -> fastapi.FastAPI:
  """The paint page and API over the dissection in `dissection_dir` of generator `model_name`.

  `app.state.paint` is the `PaintModel` (its `traces` count compilations). Raises UsageError if
  the folder holds no dissection of that model.
  """
  model = PaintModel(dissection_dir, model_name, max_interventions, max_batch)
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

  _static_routes(api, static)
  _table_routes(api, model)
  _compute_routes(api, model)
  _docs_route(api)
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


def _table_routes(api: fastapi.FastAPI, model: PaintModel) -> None:
  """Read-only views of the dissection: info, layers, units, concepts, rankings, levels."""

  @api.get("/api/info", summary="Model, image size and limits", response_model=InfoResponse)
  def info() -> dict:
    """The model, image size, request limits and the page's defaults."""
    return {"model": model.model_name, "segmenter": model.doc["segmenter"],
            "image_size": list(model.size), "zdim": model.zdim,
            "max_interventions": model.max_interventions, "max_batch": model.max_batch,
            "default_layer": model.default_layer(), "intensities": list(INTENSITIES),
            "insert_scale": INSERT_SCALE}

  @api.get("/api/layers", summary="Dissected layers", response_model=LayersResponse)
  def layers() -> dict:
    """The dissected layers: shape [h, w, units] and interpretable units per concept."""
    return {"layers": [{"layer": name, "shape": rec["shape"],
                        "interpretable": rec.get("interpretable", 0),
                        "concept_counts": rec.get("concept_counts", {})}
                       for name, rec in model.layers.items()]}

  @api.get("/api/units", summary="Units of a layer", response_model=UnitsResponse,
           responses=TABLE_ERRORS)
  def units(layer: LayerQuery) -> dict:
    """Every unit of `layer`: label, category, IoU, threshold and its top-image strip URL."""
    rec = model.layer(layer)
    rows = [{"unit": u["unit"], "label": u["label"], "category": u["category"],
             "iou": u["iou"], "threshold": u["threshold"], "interpretable": u["interpretable"],
             "strip": (f"/strips/{layer}/{u['unit']}"
                       if model.strip_path(layer, u["unit"]) else None)}
            for u in rec["units"]]
    return {"layer": layer, "units": rows}

  @api.get("/api/concepts", summary="Concepts of a layer", response_model=ConceptsResponse,
           responses=TABLE_ERRORS)
  def concepts(layer: LayerQuery) -> dict:
    """Concepts that label units of `layer`, with the rankings available for each."""
    model.layer(layer)
    return {"layer": layer, "concepts": model.layer_concepts(layer)}

  @api.get("/api/rankings", summary="Units ranked for a concept",
           response_model=RankingsResponse, responses=TABLE_ERRORS)
  def rankings(layer: LayerQuery, concept: ConceptQuery = None) -> dict:
    """Units of `layer` ranked for `concept` (default: every concept), best first."""
    model.layer(layer)
    names = [concept] if concept is not None else model.concepts[1:]
    return {"layer": layer, "rankings": [r for c in names for r in model.rankings(layer, c)]}

  @api.get("/api/levels", summary="Unit activation levels", response_model=LevelsResponse,
           responses=TABLE_ERRORS)
  def levels(layer: LayerQuery) -> dict:
    """Each unit's dissection threshold: its (1 - q) activation quantile (q = the dissection's
    --threshold; `quantile` is null for IQR thresholds)."""
    rec = model.layer(layer)
    q = model.doc.get("settings", {}).get("threshold")
    try:
      quantile = 1.0 - float(q)
    except (TypeError, ValueError):
      quantile = None
    return {"layer": layer, "quantile": quantile,
            "levels": [u["threshold"] for u in rec["units"]]}

  @api.get("/strips/{layer}/{unit}", include_in_schema=False)
  def strip(layer: str, unit: int) -> responses.FileResponse:
    rec = model.layer(layer)
    if not 0 <= unit < len(rec["units"]):
      raise fastapi.HTTPException(404, f"unit {unit} is out of range for {layer}")
    path = model.strip_path(layer, unit)
    if path is None:
      raise fastapi.HTTPException(404, f"the dissection has no strip of {layer} unit {unit}")
    return responses.FileResponse(path, media_type="image/jpeg")


def _compute_routes(api: fastapi.FastAPI, model: PaintModel) -> None:
  """`generate` and `features`: the requests that run the generator."""

  @api.post("/api/generate", summary="Generate images with edits",
            response_model=GenerateResponse, responses=COMPUTE_ERRORS)
  def generate(req: GenerateRequest) -> dict:
    """Images of `seeds` or `zs` with `interventions` composited in order (later on top)."""
    z = model.latents(req)
    images = model.render(z, model.strokes(req.interventions))
    return {"images": [paint.png_data_url(im) for im in images]}

  @api.post("/api/features", summary="Unit activations under a mask",
            response_model=FeaturesResponse, responses=COMPUTE_ERRORS)
  def features(req: FeaturesRequest) -> dict:
    """Per layer and image, each unit's mean activation under the mask (mean-pooled to the
    grid) and its max (mask max-pooled)."""
    names = req.layers if req.layers is not None else list(model.layers)
    for name in names:
      model.layer(name)
    mask = model.mask(req.mask)
    mask = np.ones(model.size, np.float32) if mask is None else mask
    if not mask.any():
      raise _bad("mask is empty: paint at least one pixel")
    out = model.features(model.latents(req), mask)
    return {"layers": {n: {"mean": out[n][0].tolist(), "max": out[n][1].tolist()}
                       for n in names}}


# ------------------------------------------------------------------------------------- API docs

_DOCS_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em auto; max-width: 62em; padding: 0 1em;
       color: #222; line-height: 1.4; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.92em; }
nav li, section ul { list-style: none; }
nav ul, section ul { padding-left: 1.2em; }
section { border-top: 1px solid #ccc; padding: 0.6em 0; }
h2 { font-size: 1.15em; margin: 0.3em 0; }
h3 { font-size: 1em; margin: 0.8em 0 0.2em; }
.method { display: inline-block; min-width: 3.5em; padding: 0 0.3em; border-radius: 3px;
          color: #fff; font-weight: bold; font-size: 0.85em; text-align: center; }
.get { background: #2a7d2e; } .post { background: #1f5fa8; }
.put, .patch { background: #a86c1f; } .delete { background: #a8321f; }
.type { color: #6a3d9a; } .req { color: #b00020; font-size: 0.85em; }
.facts { color: #555; font-size: 0.9em; }
form.try { background: #f4f4f4; padding: 0.5em; border-radius: 4px; }
form.try label { margin-right: 1em; }
pre.out { max-height: 24em; overflow: auto; background: #fafafa; margin: 0.4em 0 0; }
pre.out:empty { display: none; }
"""

# Sends a "try it" form as a GET of its path (path parameters filled in, empty fields left out)
# and shows the status and the indented JSON below the form.
_DOCS_JS = """
for (const form of document.querySelectorAll('form.try')) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const out = form.querySelector('pre.out');
    const query = new URLSearchParams();
    let path = form.getAttribute('action');
    for (const input of form.querySelectorAll('input[name]')) {
      if (input.dataset.in === 'path') {
        path = path.replace('{' + input.name + '}', encodeURIComponent(input.value));
      } else if (input.value !== '') {
        query.append(input.name, input.value);
      }
    }
    const url = path + (query.toString() ? '?' + query : '');
    out.textContent = 'GET ' + url + ' ...';
    try {
      const response = await fetch(url);
      let text = await response.text();
      try { text = JSON.stringify(JSON.parse(text), null, 1); } catch (e) {}
      out.textContent = 'GET ' + url + ': ' + response.status + '\\n' + text;
    } catch (error) {
      out.textContent = 'GET ' + url + ': ' + error;
    }
  });
}
"""

_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
           ("exclusiveMaximum", "<"), ("minItems", "items ≥"), ("maxItems", "items ≤"),
           ("minLength", "length ≥"), ("maxLength", "length ≤"), ("pattern", "matches"))


def render_docs(openapi: dict) -> str:
  """The API docs page of an OpenAPI schema: one HTML file that loads nothing from elsewhere.

  Every operation shows its summary, description, parameters, request body and responses, with
  `$ref`s resolved into `components.schemas`; GET operations get a small "try it" form.
  """
  schemas = openapi.get("components", {}).get("schemas", {})
  info = openapi.get("info", {})
  title = html.escape(info.get("title", "API"))
  ops = [(path, method, op) for path, item in openapi.get("paths", {}).items()
         for method, op in item.items() if isinstance(op, dict) and "responses" in op]
  toc = "".join(f'<li><a href="#{_anchor(m, p)}">{_method(m)} <code>{html.escape(p)}</code></a> '
                f'{html.escape(op.get("summary", ""))}</li>' for p, m, op in ops)
  body = "".join(_operation_html(p, m, op, schemas) for p, m, op in ops)
  return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">'
          f'<title>{title} API</title><link rel="icon" href="data:,">'
          f'<style>{_DOCS_CSS}</style></head>\n<body><header><h1>{title} API '
          f'<small>{html.escape(str(info.get("version", "")))}</small></h1>'
          f'{_prose(info.get("description", ""))}<p><a href="/">The paint page</a> · '
          f'<a href="/openapi.json">openapi.json</a></p></header>\n'
          f'<nav><ul>{toc}</ul></nav>\n<main>{body}</main>\n'
          f'<script>{_DOCS_JS}</script></body></html>\n')


def _operation_html(path: str, method: str, op: dict, schemas: dict) -> str:
  """One operation's section."""
  parts = [f'<section id="{_anchor(method, path)}"><h2>{_method(method)} '
           f'<code>{html.escape(path)}</code> {html.escape(op.get("summary", ""))}</h2>',
           _prose(op.get("description", ""))]
  params = op.get("parameters", [])
  if params:
    rows = "".join(_field_html(p["name"], p.get("schema", {}), p.get("required", False),
                               schemas, (), where=p.get("in", ""),
                               description=p.get("description")) for p in params)
    parts.append(f"<h3>Parameters</h3><ul>{rows}</ul>")
  body = op.get("requestBody", {}).get("content", {}).get("application/json")
  if body is not None:
    parts.append("<h3>JSON body</h3>" + _payload_html(body.get("schema", {}), schemas))
  parts.append("<h3>Responses</h3><ul>")
  for status, response in op.get("responses", {}).items():
    content = response.get("content", {}).get("application/json")
    payload = _payload_html(content.get("schema", {}), schemas) if content else ""
    parts.append(f"<li><code>{html.escape(status)}</code> "
                 f"{html.escape(response.get('description', ''))}{payload}</li>")
  parts.append("</ul>")
  if method == "get":
    parts.append(_try_html(path, params))
  return "".join(parts) + "</section>\n"


def _payload_html(node: dict, schemas: dict) -> str:
  """A body's type, its description and its fields."""
  name, resolved = _resolve(node, schemas)
  nested = _nested(node, schemas)
  out = f' <span class="type">{html.escape(_type_label(node))}</span>'
  if name and resolved.get("description"):
    out += " — " + _inline(resolved["description"])
  if nested is not None:
    out += _fields_html(nested[1], schemas, (nested[0],))
  return out


def _fields_html(obj: dict, schemas: dict, seen: tuple[str, ...]) -> str:
  """The fields of an object schema as a nested list (models already open are not reopened)."""
  required = set(obj.get("required", []))
  rows = "".join(_field_html(name, node, name in required, schemas, seen)
                 for name, node in obj.get("properties", {}).items())
  if obj.get("additionalProperties") is False:
    rows += '<li class="facts">Other fields are refused.</li>'
  return f"<ul>{rows}</ul>"


def _field_html(name: str, node: dict, required: bool, schemas: dict, seen: tuple[str, ...],
                where: str = "", description: str | None = None) -> str:
  """One field or parameter: name, type, required, facts, description and nested fields."""
  nested = _nested(node, schemas)
  if description is None:
    description = node.get("description") or (nested[1].get("description", "") if nested else "")
  facts = _facts(node, schemas)
  if "default" in node:
    facts.insert(0, f"default {_json(node['default'])}")
  out = f"<li><code><b>{html.escape(name)}</b></code>"
  if where:
    out += f" ({html.escape(where)})"
  out += f' <span class="type">{html.escape(_type_label(node))}</span>'
  if required:
    out += ' <span class="req">required</span>'
  if facts:
    out += f' <span class="facts">{"; ".join(facts)}</span>'
  if description:
    out += " — " + _inline(description)
  if nested is not None and nested[0] not in seen:
    out += _fields_html(nested[1], schemas, seen + (nested[0],))
  return out + "</li>"


def _try_html(path: str, params: list[dict]) -> str:
  """A form that GETs `path` with its query and path parameters and shows the answer."""
  inputs = "".join(
      f'<label><code>{html.escape(p["name"])}</code> <input name="{html.escape(p["name"])}" '
      f'data-in="{html.escape(p.get("in", "query"))}"{" required" if p.get("required") else ""}'
      f'></label>' for p in params if p.get("in") in ("query", "path"))
  return (f'<h3>Try it</h3><form class="try" method="get" action="{html.escape(path)}">'
          f'{inputs}<button type="submit">GET</button><pre class="out"></pre></form>')


def _resolve(node: dict, schemas: dict) -> tuple[str | None, dict]:
  """(model name, schema) of a `$ref` into `components.schemas`; (None, node) otherwise."""
  ref = node.get("$ref")
  if ref is None:
    return None, node
  name = ref.rsplit("/", 1)[-1]
  return name, schemas.get(name, {})


def _children(node: dict) -> list[dict]:
  """The schemas inside `node`: union members, array items, dictionary values."""
  kids = [*node.get("anyOf", []), *node.get("oneOf", []), *node.get("allOf", [])]
  kids += [node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict)]
  return kids


def _nested(node: dict, schemas: dict) -> tuple[str, dict] | None:
  """(name, schema) of the first object schema with fields in `node` (itself, its items, ...)."""
  name, resolved = _resolve(node, schemas)
  if "properties" in resolved:
    return name or resolved.get("title", ""), resolved
  if name is not None:
    return None  # a named model without fields (an alias): not opened, so no cycle
  for child in _children(node):
    found = _nested(child, schemas)
    if found is not None:
      return found
  return None


def _type_label(node: dict) -> str:
  """A short type: 'integer', 'array of Intervention', 'number | array of number', ..."""
  if "$ref" in node:
    return node["$ref"].rsplit("/", 1)[-1]
  union = node.get("anyOf") or node.get("oneOf") or node.get("allOf")
  if union:
    return " | ".join(_type_label(member) for member in union)
  kind = node.get("type", "any")
  if kind == "array":
    return f"array of {_type_label(node.get('items', {}))}"
  if kind == "object" and isinstance(node.get("additionalProperties"), dict):
    return f"object of string → {_type_label(node['additionalProperties'])}"
  return kind


def _facts(node: dict, schemas: dict, prefix: str = "") -> list[str]:
  """Enums and bounds of `node` and of the schemas inside it ('each' for items)."""
  _, resolved = _resolve(node, schemas)
  if "properties" in resolved:
    return []
  facts = []
  if "enum" in resolved:
    facts.append(prefix + "one of " + ", ".join(_json(v) for v in resolved["enum"]))
  if "const" in resolved:
    facts.append(prefix + "always " + _json(resolved["const"]))
  facts += [f"{html.escape(prefix + symbol)} {_json(resolved[key])}" for key, symbol in _BOUNDS
            if key in resolved]
  for child in _children(resolved):
    each = "each " if child is resolved.get("items") else ""
    facts += _facts(child, schemas, prefix + each)
  return facts


def _json(value: Any) -> str:
  """A value as escaped inline code (4294967296.0 -> 4294967296)."""
  if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
    value = int(value)
  return f"<code>{html.escape(json.dumps(value))}</code>"


def _inline(text: str) -> str:
  """Escaped text with `backticks` as code."""
  return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _prose(text: str) -> str:
  """Paragraphs of escaped text (blank lines separate them)."""
  return "".join(f"<p>{_inline(p)}</p>" for p in re.split(r"\n\s*\n", text.strip()) if p)


def _method(method: str) -> str:
  return f'<span class="method {html.escape(method)}">{html.escape(method.upper())}</span>'


def _anchor(method: str, path: str) -> str:
  return "op-" + method + re.sub(r"[^A-Za-z0-9]+", "-", path).rstrip("-")


def _docs_route(api: fastapi.FastAPI) -> None:
  """`/docs`: the API docs rendered here from `api.openapi()` (FastAPI's load from a CDN)."""

  @api.get("/docs", include_in_schema=False, response_class=responses.HTMLResponse)
  def docs() -> responses.HTMLResponse:
    return responses.HTMLResponse(render_docs(api.openapi()),
                                  headers={"Cache-Control": "no-cache"})


# ------------------------------------------------------------------------------------------ main

def define_flags() -> None:
  """The command's flags. Only the command defines them: importing `create_app` (tests, the
  benchmark) must not clash with other scripts' flags of the same names."""
  flags.DEFINE_string("dissection", "results/dissect-sceneworld",
                      "Output folder of experiments.dissect.")
  flags.DEFINE_string("model", "sceneworld", f"Generator: one of {list(zoo.GENERATORS)}.")
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
