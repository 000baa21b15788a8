"""A finished dissection read back as typed records: the one reader of `dissect.json`.

Every consumer of a dissection folder (the causal scripts, the paint server, the report check)
reads it through `read_dissection`, so the document is validated in one place and a malformed or
hostile file fails fast with `DissectionReadError` naming what is wrong, never with a KeyError
deep inside a script. The JSON itself is the contract of design §4; this module only reads it.
Files larger than MAX_DOC_BYTES are refused before they are read, and JSON nested too deeply for
the parser (a RecursionError) is a DissectionReadError like any other malformed document.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, NamedTuple

import numpy as np

from jaxdissect import smallfile
from jaxdissect.npyfile import read_npy

MAX_DOC_BYTES = 256 << 20  # a dissect.json of 100 layers x 4096 units is ~60 MB


class DissectionReadError(ValueError):
  """A dissection folder or document that cannot be read (named, one line)."""


class UnitRecord(NamedTuple):
  """One unit of a dissected layer: its threshold, label and top images."""

  unit: int
  threshold: float
  label: str
  category: str
  iou: float
  interpretable: bool
  top: tuple[tuple[int, float], ...]  # (image index, peak activation), best first
  image: str  # the strip's path relative to the folder
  iou_bound: float


class LayerRecord(NamedTuple):
  """One dissected layer: its `[H, W, C]` shape, counts and per-unit records."""

  layer: str
  dirname: str
  shape: tuple[int, int, int]
  interpretable: int
  concept_counts: dict[str, int]
  units: tuple[UnitRecord, ...]

  def thresholds(self) -> np.ndarray:
    """`[C]` float32 thresholds (each unit's top-q level: the default insertion value)."""
    return np.array([u.threshold for u in self.units], np.float32)


class Dissection(NamedTuple):
  """A finished dissection folder: what was dissected, with what, and the per-layer records.

  `model` and `segmenter` are the specs they were loaded from (`jaxdissect.zoo`), with the
  factory keyword arguments of an import spec in `model_args` / `segmenter_args`; `latents`
  says where the latents came from (`jaxdissect.latents`); `doc` is the raw document.
  """

  folder: str
  model: str
  segmenter: str
  model_args: dict[str, Any]
  segmenter_args: dict[str, Any]
  settings: dict[str, Any]
  latents: dict[str, Any]
  concepts: tuple[tuple[str, str], ...]
  layers: tuple[LayerRecord, ...]
  doc: dict[str, Any]

  @property
  def layer_names(self) -> tuple[str, ...]:
    return tuple(r.layer for r in self.layers)

  def layer(self, name: str) -> LayerRecord:
    """The record of layer `name`; the error lists the dissected layers."""
    for record in self.layers:
      if record.layer == name:
        return record
    raise DissectionReadError(f"layer {name!r} was not dissected; dissected layers: "
                              f"{', '.join(self.layer_names)}")

  def concept_index(self, name: str) -> int:
    """Label index of concept `name` (never the none label at index 0)."""
    names = [c for c, _ in self.concepts]
    if name not in names[1:]:
      raise DissectionReadError(f"concept {name!r} is unknown; valid concepts are: "
                                f"{', '.join(names[1:])}")
    return names.index(name)

  def iou(self, layer: str | LayerRecord) -> np.ndarray:
    """The `[units, concepts]` float32 IoU table of a layer (its `iou.npy`)."""
    record = layer if isinstance(layer, LayerRecord) else self.layer(layer)
    path = os.path.join(self.folder, record.dirname, "iou.npy")
    table = read_npy(path, DissectionReadError)
    want = (len(record.units), len(self.concepts))
    if table.shape != want or not np.issubdtype(table.dtype, np.floating):
      raise DissectionReadError(f"{path} holds {table.dtype} {list(table.shape)}, expected "
                                f"float {list(want)}")
    return table.astype(np.float32)

  def best_layer(self, concept: str) -> LayerRecord:
    """The layer holding the unit of highest IoU with `concept`."""
    c = self.concept_index(concept)
    return max(self.layers, key=lambda r: float(self.iou(r)[:, c].max(initial=0.0)))


def read_dissection(folder: str) -> Dissection:
  """Reads and validates `folder/dissect.json`; raises DissectionReadError."""
  path = os.path.join(folder, "dissect.json")
  if not os.path.isfile(path):
    raise DissectionReadError(f"{folder} has no dissect.json; run experiments.dissect first")
  try:
    doc = smallfile.read_json(path, MAX_DOC_BYTES, "dissection document")
  except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
    if isinstance(e, DissectionReadError):
      raise
    raise DissectionReadError(f"{path} is not a readable JSON document ({smallfile.one_line(e, 300)})"
                              ) from None
  return parse_dissection(doc, folder, path)


def read_unit_set(path: str) -> tuple[str, str, np.ndarray]:
  """`(layer, concept, alpha [C] float32)` of a learned unit set (`units-<concept>.json`, written
  by `experiments.optimize_units` beside the dissection); DissectionReadError if malformed."""
  try:
    learned = _mapping(smallfile.read_json(path, MAX_DOC_BYTES, "dissection document"), path)
    alpha = np.asarray([_float(a, path) for a in _list(learned, "alpha", path)], np.float32)
    return _text(learned, "layer", path), _text(learned, "concept", path), alpha
  except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
    if isinstance(e, DissectionReadError):
      raise
    raise DissectionReadError(f"{path} is not a readable unit set ({smallfile.one_line(e, 300)})") from None


MAX_RESULT_BYTES = 64 << 20  # an ablation result of 30 units is ~10 kB


class AblationCurve(NamedTuple):
  """One ranking's curve of an ablation result: `removed[k]` and its 99% half-width `ci99[k]`
  after ablating the first k of `units` (k = 0 .. len(units))."""

  units: tuple[int, ...]
  removed: tuple[float, ...]
  ci99: tuple[float, ...]
  baseline: float | None = None  # the concept's share of the image before any ablation


class AblationRecord(NamedTuple):
  """An `ablation-<concept>.json` of `experiments.ablate`: curves of one concept and layer."""

  model: str
  layer: str
  concept: str
  rankings: dict[str, AblationCurve]


def read_ablation(path: str) -> AblationRecord:
  """Reads and validates an ablation result; raises DissectionReadError (one line, naming it)."""
  try:
    doc = _mapping(smallfile.read_json(path, MAX_RESULT_BYTES, "ablation result"), path)
    rankings = {}
    for name, r in _mapping(doc.get("rankings"), f"{path}: rankings").items():
      at = f"{path}: ranking {str(name)[:40]!r}"
      r = _mapping(r, at)
      units = tuple(_int(u, at) for u in _list(r, "units", at))
      removed = tuple(_float(v, at) for v in _list(r, "removed", at))
      ci = tuple(_float(v, at) for v in _list(r, "ci99", at))
      if not len(removed) == len(ci) == len(units) + 1:
        raise DissectionReadError(f"{at}: {len(units)} units need {len(units) + 1} 'removed' and "
                                  f"'ci99' values, found {len(removed)} and {len(ci)}")
      baseline = _float(r["baseline"], at) if r.get("baseline") is not None else None
      rankings[str(name)] = AblationCurve(units, removed, ci, baseline)
    return AblationRecord(_text(doc, "model", path), _text(doc, "layer", path),
                          _text(doc, "concept", path), rankings)
  except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
    if isinstance(e, DissectionReadError):
      raise
    raise DissectionReadError(f"{path} is not a readable ablation result "
                              f"({smallfile.one_line(e, 300)})") from None


def read_folder(folder: str) -> Dissection:
  """`read_dissection`, or where only the report was kept, the copy embedded in report.html."""
  if os.path.isfile(os.path.join(folder, "dissect.json")):
    return read_dissection(folder)
  from jaxdissect.report import html  # pylint: disable=g-import-not-at-top (html -> dissect)
  path = os.path.join(folder, html.REPORT_NAME)
  try:
    doc = html.embedded_doc(smallfile.read_bytes(path, MAX_DOC_BYTES, "report").decode("utf-8"))
  except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
    raise DissectionReadError(f"{folder} has neither dissect.json nor a readable "
                              f"{html.REPORT_NAME} ({smallfile.one_line(e, 300)})") from None
  return parse_dissection(doc, folder, path)


def parse_dissection(doc: Any, folder: str = ".", where: str = "dissect.json") -> Dissection:
  """A `Dissection` from an already parsed document (e.g. the one embedded in a report)."""
  doc = _mapping(doc, where)
  settings = _mapping(doc.get("settings", {}), f"{where}: settings")
  concepts = tuple(_concept(c, i, where) for i, c in enumerate(_list(doc, "concepts", where)))
  if not concepts:
    raise DissectionReadError(f"{where}: concepts is empty")
  layers = tuple(_layer(r, where) for r in _list(doc, "layers", where))
  names = [r.layer for r in layers]
  if len(set(names)) != len(names):
    raise DissectionReadError(f"{where}: a layer is listed twice in {names}")
  return Dissection(
      folder=folder, model=_text(doc, "model", where), segmenter=_text(doc, "segmenter", where),
      model_args=dict(_mapping(settings.get("model_args", {}), f"{where}: model_args")),
      segmenter_args=dict(_mapping(settings.get("segmenter_args", {}),
                                   f"{where}: segmenter_args")),
      settings=dict(settings), latents=dict(_mapping(doc.get("latents", {}), f"{where}: latents")),
      concepts=concepts, layers=layers, doc=doc)


def _concept(c: Any, i: int, where: str) -> tuple[str, str]:
  c = _mapping(c, f"{where}: concepts[{i}]")
  return _text(c, "name", where), str(c.get("category", "other"))


def _layer(r: Any, where: str) -> LayerRecord:
  r = _mapping(r, f"{where}: a layer")
  name = _text(r, "layer", where)
  at = f"{where}: layer {name!r}"
  shape = _list(r, "shape", at)
  if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
    raise DissectionReadError(f"{at}: shape {shape!r} is not three positive integers")
  dirname = _text(r, "dirname", at)
  if os.path.basename(dirname) != dirname or dirname in ("", ".", ".."):
    raise DissectionReadError(f"{at}: dirname {dirname!r} is not a plain folder name")
  units = tuple(_unit(u, at) for u in _list(r, "units", at))
  if [u.unit for u in units] != list(range(len(units))) or len(units) != shape[2]:
    raise DissectionReadError(f"{at}: its {shape[2]} units are not listed as 0..{shape[2] - 1} "
                              "in order")
  counts = _mapping(r.get("concept_counts", {}), f"{at}: concept_counts")
  return LayerRecord(name, dirname, tuple(shape), _int(r.get("interpretable", 0), at),
                     {str(k): _int(v, at) for k, v in counts.items()}, units)


def _unit(u: Any, at: str) -> UnitRecord:
  u = _mapping(u, f"{at}: a unit")
  top = []
  for t in _list(u, "top", at) if "top" in u else []:
    t = _mapping(t, f"{at}: a top image")
    top.append((_int(t.get("image"), at), _float(t.get("max"), at)))
  return UnitRecord(unit=_int(u.get("unit"), at), threshold=_float(u.get("threshold"), at),
                    label=_text(u, "label", at), category=str(u.get("category", "other")),
                    iou=_float(u.get("iou"), at), interpretable=bool(u.get("interpretable")),
                    top=tuple(top), image=str(u.get("image", "")),
                    iou_bound=_float(u.get("iou_bound", 0.0), at))


def _mapping(x: Any, at: str) -> Mapping[str, Any]:
  if not isinstance(x, dict):
    raise DissectionReadError(f"{at}: expected a JSON object, found {type(x).__name__}")
  return x


def _list(d: Mapping[str, Any], key: str, at: str) -> list:
  x = d.get(key)
  if not isinstance(x, list):
    raise DissectionReadError(f"{at}: {key!r} should be a list, found {type(x).__name__}")
  return x


def _text(d: Mapping[str, Any], key: str, at: str) -> str:
  x = d.get(key)
  if not isinstance(x, str):
    raise DissectionReadError(f"{at}: {key!r} should be a string, found {type(x).__name__}")
  return x


def _int(x: Any, at: str) -> int:
  if isinstance(x, bool) or not isinstance(x, int):
    raise DissectionReadError(f"{at}: {x!r} is not an integer")
  return x


def _float(x: Any, at: str) -> float:
  try:
    ok = not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)
  except OverflowError:  # an integer beyond float range
    ok = False
  if not ok:
    raise DissectionReadError(f"{at}: {str(x)[:40]} is not a finite number")
  return float(x)
