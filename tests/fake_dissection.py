"""A dissection folder written by hand (dissect.json, iou.npy, thresholds.npy per layer) with
random IoUs, for tests of what reads dissections (the paint server) without running one."""

import json
import os

import numpy as np


def write(folder, layers, concepts, model, segmenter, image=None, iou_max=0.1):
  """Writes the folder; `layers` {name: (h, w, c)}, `concepts` [(name, category)]; `image(name,
  u)` gives a unit's strip path (or None for none); IoUs are uniform in [0, iou_max) (units are
  interpretable above 0.04). Returns the dissect.json document."""
  rng = np.random.default_rng(0)
  names = [name for name, _ in concepts]
  category = dict(concepts)
  records = []
  for name, (h, w, c) in layers.items():
    os.makedirs(folder / name / "units")
    iou = rng.uniform(0, iou_max, (c, len(concepts))).astype(np.float32)
    iou[:, 0] = 0
    thresholds = rng.uniform(0.5, 3.0, c).astype(np.float32)
    np.save(folder / name / "iou.npy", iou)
    np.save(folder / name / "thresholds.npy", thresholds)
    labels = iou.argmax(1)
    units = []
    for u in range(c):
      unit = {"unit": u, "threshold": float(thresholds[u]), "label": names[labels[u]],
              "category": category[names[labels[u]]], "iou": float(iou[u, labels[u]]),
              "interpretable": bool(iou[u, labels[u]] > 0.04), "top": []}
      if image is not None and image(name, u):
        unit["image"] = image(name, u)
      units.append(unit)
    counts = {}
    for u in units:
      if u["interpretable"]:
        counts[u["label"]] = counts.get(u["label"], 0) + 1
    records.append({"layer": name, "dirname": name, "shape": [h, w, c],
                    "interpretable": sum(counts.values()), "concept_counts": counts,
                    "units": units})
  doc = {"model": model, "segmenter": segmenter, "settings": {"threshold": "0.01"},
         "concepts": [{"index": i, "name": n, "category": c} for i, (n, c) in enumerate(concepts)],
         "layers": records}
  (folder / "dissect.json").write_text(json.dumps(doc))
  return doc
