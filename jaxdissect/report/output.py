"""The output folder of a dissection (design §4), written in one place for every caller.

The CLI, the benchmarks and library users get the same files: per layer `iou.npy`,
`thresholds.npy`, unit strips and the concept chart, then `dissect.json` and `report.html`. JSON
is written through a temporary file and an atomic rename, so a killed run never leaves half a
document behind; `dissect.json` is written after everything it points to.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from jaxdissect import examples
from jaxdissect.dissect import Config, LayerResult
from jaxdissect.model import Generator
from jaxdissect.report import document, html, strips
from jaxdissect.thresholds import Interpretable


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` to `path` through a temporary file and an atomic rename."""
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(path + ".tmp", path)


def document_of(results: Mapping[str, LayerResult], concepts, config: Config, *, model: str,
                segmenter: str, settings: Mapping[str, Any] | None,
                interpretable: Interpretable) -> dict:
  """The `dissect.json` document: `document.dissection_doc` plus where the latents came from."""
  doc = document.dissection_doc(results, concepts, model=model, segmenter=segmenter,
                                settings=settings or {}, interpretable=interpretable,
                                iqr=config.rule.name == "iqr" or config.staged)
  doc["latents"] = config.source.record()
  if config.staged:
    doc["definitions"] = config.definitions()
  return doc


def write_folder(outdir: str, doc: dict, results: Mapping[str, LayerResult], gen: Generator,
                 config: Config, *, images: bool = True, tile: int = 128,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
  """Writes every output file of a finished dissection under `outdir`."""
  for layer, result in results.items():
    folder = os.path.join(outdir, document.layer_dirname(layer))
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "iou.npy"), result.iou.astype(np.float32))
    np.save(os.path.join(folder, "thresholds.npy"), result.thresholds.astype(np.float32))
  if images:
    write_strips(outdir, results, gen, config, tile, progress)
  write_json(os.path.join(outdir, "dissect.json"), doc)
  html.write_report(outdir, doc)


def write_strips(outdir: str, results: Mapping[str, LayerResult], gen: Generator,
                 config: Config, tile: int,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
  """Each unit's top images, dimmed outside where it is on (`strips.unit_strip`), as JPEGs."""
  tops = {layer: r.top_indices for layer, r in results.items()}
  found = examples.top_examples(gen, tops, config.source, config.batch_size, progress)
  for layer, result in results.items():
    ex = found[layer]
    for u in range(len(result.label)):
      k = examples.example_count(result.top_indices[u])
      if k:
        strip = strips.unit_strip(ex.images(u)[:k], ex.maps[u, :k], float(result.thresholds[u]),
                                  tile=tile)
        strips.save_jpeg(os.path.join(outdir, document.unit_image_path(layer, u)), strip)
