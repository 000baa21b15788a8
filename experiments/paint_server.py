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
"""

from __future__ import annotations

import glob
import json
import mimetypes
import os
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

  layer: str
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
  """Images given by seed (z = the first row of the z sample of that seed) or by explicit z."""

  seeds: list[Seed] | None = None
  zs: list[list[float]] | None = None


class GenerateRequest(Latents):
  interventions: list[Intervention] = []


class FeaturesRequest(Latents):
  mask: str | None = pydantic.Field(None, description="As in an intervention; none = all.")
  layers: list[str] | None = pydantic.Field(None, description="Default: every dissected layer.")


class GenerateResponse(pydantic.BaseModel):
  images: list[str] = pydantic.Field(description="PNG data URLs, one per seed or z.")


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
                        description="Paint with the units of a dissected GAN (GANPaint-style).")
  api.state.paint = model
  api.add_middleware(BodyLimit, max_bytes=max_body_bytes)

  @api.exception_handler(RequestValidationError)
  async def _invalid(_, exc: RequestValidationError) -> responses.JSONResponse:
    return responses.JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

  _static_routes(api, static)
  _table_routes(api, model)
  _compute_routes(api, model)
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

  @api.get("/api/info")
  def info() -> dict:
    """The model, image size, request limits and the page's defaults."""
    return {"model": model.model_name, "segmenter": model.doc["segmenter"],
            "image_size": list(model.size), "zdim": model.zdim,
            "max_interventions": model.max_interventions, "max_batch": model.max_batch,
            "default_layer": model.default_layer(), "intensities": list(INTENSITIES),
            "insert_scale": INSERT_SCALE}

  @api.get("/api/layers")
  def layers() -> dict:
    """The dissected layers: shape [h, w, units] and interpretable units per concept."""
    return {"layers": [{"layer": name, "shape": rec["shape"],
                        "interpretable": rec.get("interpretable", 0),
                        "concept_counts": rec.get("concept_counts", {})}
                       for name, rec in model.layers.items()]}

  @api.get("/api/units")
  def units(layer: str) -> dict:
    """Every unit of `layer`: label, category, IoU, threshold and its top-image strip URL."""
    rec = model.layer(layer)
    rows = [{"unit": u["unit"], "label": u["label"], "category": u["category"],
             "iou": u["iou"], "threshold": u["threshold"], "interpretable": u["interpretable"],
             "strip": (f"/strips/{layer}/{u['unit']}"
                       if model.strip_path(layer, u["unit"]) else None)}
            for u in rec["units"]]
    return {"layer": layer, "units": rows}

  @api.get("/api/concepts")
  def concepts(layer: str) -> dict:
    """Concepts that label units of `layer`, with the rankings available for each."""
    model.layer(layer)
    return {"layer": layer, "concepts": model.layer_concepts(layer)}

  @api.get("/api/rankings")
  def rankings(layer: str, concept: str | None = None) -> dict:
    """Units of `layer` ranked for `concept` (default: every concept), best first."""
    model.layer(layer)
    names = [concept] if concept is not None else model.concepts[1:]
    return {"layer": layer, "rankings": [r for c in names for r in model.rankings(layer, c)]}

  @api.get("/api/levels")
  def levels(layer: str) -> dict:
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

  @api.post("/api/generate", response_model=GenerateResponse)
  def generate(req: GenerateRequest) -> dict:
    """Images of `seeds` or `zs` with `interventions` composited in order (later on top)."""
    z = model.latents(req)
    images = model.render(z, model.strokes(req.interventions))
    return {"images": [paint.png_data_url(im) for im in images]}

  @api.post("/api/features")
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
