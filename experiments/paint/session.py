"""The paint server's state and arithmetic: a finished dissection, its generator, and the edits.

`PaintModel` reads the dissection once (`jaxdissect.report.reader`), loads the generator it
dissected and compiles one generation and one feature function per batch size. It turns
validated requests into arrays and answers the table queries; it knows nothing of HTTP, so a bad
value is a `RequestError` that the app (`experiments.paint.app`) answers with 400.
"""

from __future__ import annotations

from collections import Counter
import glob
import os
import threading
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments.cli import UsageError
from experiments.paint.schema import Intervention, Latents
from jaxdissect import images as images_lib, paint, unitsets, zoo
from jaxdissect.errors import check_choice
from jaxdissect.report.reader import (DissectionReadError, LayerRecord, read_dissection,
                                      read_unit_set)
from jaxdissect.zsample import standard_z


class RequestError(ValueError):
  """A request value the model refuses (the app answers 400 with this message)."""


def _checked(kind: str, value: str, valid: list[str]) -> None:
  """`check_choice`, as a RequestError."""
  try:
    check_choice(kind, value, valid)
  except ValueError as e:
    raise RequestError(str(e)) from None


class PaintModel:
  """The dissection's tables and the generator, compiled once per batch size.

  `traces` counts how often the generation and feature functions were traced (a retrace per
  request would make every edit wait for a compile).
  """

  def __init__(self, folder: str, model_name: str | None, max_interventions: int,
               max_batch: int):
    self.folder = folder
    try:
      self.dissection = read_dissection(folder)
      self.iou = {r.layer: self.dissection.iou(r) for r in self.dissection.layers}
    except DissectionReadError as e:
      raise UsageError(str(e)) from None
    dissected = self.dissection.model
    model_name = dissected if model_name is None else model_name
    if dissected != model_name:
      if ":" not in model_name:  # a registered name, not a checkpoint or import spec
        check_choice("model", model_name, zoo.GENERATORS)
      raise UsageError(f"{folder} dissects model {dissected!r}, not {model_name!r}; pass "
                       f"--model {dissected}")
    self.model_name = model_name
    self.max_interventions = max_interventions
    self.max_batch = max_batch
    self.layers: dict[str, LayerRecord] = {r.layer: r for r in self.dissection.layers}
    self.concepts = [name for name, _ in self.dissection.concepts]
    self.categories = dict(self.dissection.concepts)
    self.alpha = self._learned_alphas()
    try:
      self.gen = zoo.load_generator(dissected, self.dissection.model_args)
    except zoo.SpecError as e:
      raise UsageError(str(e)) from None
    self.zdim = self.gen.zdim
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
        layer, concept, alpha = read_unit_set(path)
        ok = (layer in self.layers and concept in self.concepts[1:]
              and alpha.shape == (self.layers[layer].shape[2],))
      except DissectionReadError as e:
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
                         jax.ShapeDtypeStruct((1, *self.gen.latent_shape), jnp.float32))
    image, acts = out
    return tuple(image.shape[1:3]), {n: tuple(acts[n].shape[1:3]) for n in names}

  def _render_fn(self, params: Any, z: jax.Array, packed: paint.PackedStrokes) -> jax.Array:
    self.traces += 1
    images, _ = self.gen.apply_fn(params, z, edits=paint.composed_edits(packed, self.grids))
    return images_lib.to_uint8(images)

  def _features_fn(self, params: Any, z: jax.Array, mask: jax.Array) -> dict:
    self.traces += 1
    _, acts = self.gen.apply_fn(params, z, capture=tuple(self.layers))
    return {name: paint.masked_features(a, mask) for name, a in acts.items()}

  # -- requests -> arrays (RequestError -> 400)

  def layer(self, name: str) -> LayerRecord:
    """The dissection's record of layer `name`."""
    _checked("layer", name, list(self.layers))
    return self.layers[name]

  def concept(self, name: str) -> int:
    """Label index of concept `name`."""
    _checked("concept", name, self.concepts[1:])
    return self.concepts.index(name)

  def latents(self, req: Latents) -> np.ndarray:
    """`[B, *latent_shape]` from a request's seeds or zs (exactly one, 1..max_batch rows)."""
    if (req.seeds is None) == (req.zs is None):
      raise RequestError("give exactly one of 'seeds' (a list of ints) or 'zs' (a list of "
                         "latents)")
    rows = len(req.seeds if req.seeds is not None else req.zs)
    if not 1 <= rows <= self.max_batch:
      raise RequestError(f"{rows} images requested; give 1 to {self.max_batch} per request")
    if req.seeds is not None:
      z = np.stack([standard_z(1, s, self.zdim)[0] for s in req.seeds])
    else:
      lengths = sorted({len(r) for r in req.zs})
      if lengths != [self.zdim]:
        raise RequestError(f"zs rows have lengths {lengths}; {self.model_name} latents have "
                           f"{self.zdim}")
      z = np.asarray(req.zs, np.float32)
      if not np.all(np.isfinite(z)):
        raise RequestError("zs hold a non-finite number")
    return z.reshape(rows, *self.gen.latent_shape)

  def mask(self, text: str | None) -> np.ndarray | None:
    """A request's mask string decoded at image size (None stays None)."""
    if text is None:
      return None
    try:
      return paint.decode_mask(text, self.size)
    except ValueError as e:
      raise RequestError(str(e)) from None

  def strokes(self, interventions: list[Intervention]) -> paint.PackedStrokes:
    """Validated, decoded and padded interventions."""
    if len(interventions) > self.max_interventions:
      raise RequestError(f"{len(interventions)} interventions; at most {self.max_interventions} "
                         "per request (undo or clear some strokes)")
    strokes = []
    for i, iv in enumerate(interventions):
      layer = self.layer(iv.layer)
      if (iv.unit is None) == (iv.units is None):
        raise RequestError(f"intervention {i}: give exactly one of 'unit' or 'units'")
      units = [iv.unit] if iv.unit is not None else iv.units
      mask = self.mask(iv.mask)
      try:
        strokes.append(paint.make_stroke(iv.layer, units, iv.alpha, iv.value, mask, iv.pooling,
                                         layer.shape[2]))
      except ValueError as e:
        raise RequestError(f"intervention {i}: {e}") from None
    units = {name: layer.shape[2] for name, layer in self.layers.items()}
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
    self.render(np.zeros((1, *self.gen.latent_shape), np.float32), self.strokes([]))

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
    labelled = Counter(u.label for u in record.units if u.label in self.concepts[1:])
    interpretable = record.concept_counts
    names = set(labelled) | {c for (name, c) in self.alpha if name == layer}
    rows = [{"name": c, "category": self.categories[c], "units": labelled.get(c, 0),
             "interpretable": interpretable.get(c, 0),
             "rankings": ["iou"] + (["alpha"] if (layer, c) in self.alpha else [])}
            for c in names]
    return sorted(rows, key=lambda r: (-len(r["rankings"]), -r["interpretable"], -r["units"],
                                       r["name"]))

  def strip_path(self, layer: str, unit: int) -> str | None:
    """The file of a unit's top-image strip, if the dissection wrote one inside its folder."""
    rel = self.layers[layer].units[unit].image
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
