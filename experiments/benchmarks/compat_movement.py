"""How much each original-GAN-Dissection definition moves the scene GAN's numbers (issue 19).

`python -m experiments.benchmarks.compat_movement --n 200 --out results/compat_movement.json`
(layers layer2,layer4,layer6,layer8,layer10 by default) dissects the embedded scene GAN once per
definition (the default, raw quantiles, category IoU, IQR on the same and on the seed-2 sample,
the IoU > 0.05 rule, the `--compat gandissect` preset and that preset at q = 0.01) and writes,
for each, the interpretable units per layer, the labels changed and the mean |delta best IoU|
against the default, and the wall time: the table of README "Reproducing the original GAN
Dissection's numbers".
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from jaxdissect import dissect, driver, latents, thresholds, zoo

DEFAULT = "pnas (default)"


def variants() -> dict[str, tuple[dict, object]]:
  """name -> (Config fields beside the defaults, interpretability rule: a name or an IoU)."""
  seed2 = latents.seeded(2)
  return {
      DEFAULT: ({}, "iou"),
      "raw quantile": ({"quantile_of": "raw"}, "iou"),
      "category IoU": ({"iou": "category"}, "iou"),
      "iqr, same sample": ({"threshold": "iqr"}, "auto"),
      "iqr, seed-2 sample": ({"threshold": "iqr", "threshold_latents": seed2}, "auto"),
      "rule IoU > 0.05": ({}, 0.05),
      "gandissect preset": ({"threshold": "iqr", "quantile_of": "raw", "iou": "category",
                             "threshold_latents": seed2}, "gandissect"),
      "gandissect, q = 0.01": ({"quantile_of": "raw", "iou": "category"}, "gandissect"),
  }


def measure(n: int, layers: tuple[str, ...]) -> list[dict]:
  """One row per variant (see the module docstring)."""
  world = zoo.load_world("sceneworld")
  runs = {}
  for name, (fields, rule) in variants().items():
    config = dissect.Config(layers=layers, n=n, batch_size=50, forward_chunk=10, **fields)
    start = time.perf_counter()
    same = not fields and DEFAULT in runs  # a rule on the default's results: no second run
    results = runs[DEFAULT][0] if same else driver.run(world.generator, world.segmenter, config)
    seconds = 0.0 if same else time.perf_counter() - start
    judge = (thresholds.Interpretable(rule) if isinstance(rule, float) else
             thresholds.interpretable_for(config.threshold, rule, has_iqr=config.staged or None))
    runs[name] = (results, judge, seconds)
  reference = runs[DEFAULT][0]
  rows = []
  for name, (results, judge, seconds) in runs.items():
    per_layer, changed, total, deltas = [], 0, 0, []
    for layer in layers:
      r, b = results[layer], reference[layer]
      per_layer.append(sum(bool(judge(int(r.label[u]), float(r.best_iou[u]), float(r.iqr[u])))
                           for u in range(len(r.label))))
      changed += int(np.sum(r.label != b.label))
      total += len(r.label)
      deltas.append(np.abs(r.best_iou - b.best_iou))
    rows.append({"name": name, "seconds": seconds, "interpretable": per_layer,
                 "labels_changed": changed, "units": total,
                 "mean_abs_delta_iou": float(np.mean(np.concatenate(deltas))),
                 "rule": judge.describe()})
  return rows


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=200)
  parser.add_argument("--layers", default="layer2,layer4,layer6,layer8,layer10")
  parser.add_argument("--out", required=True)
  a = parser.parse_args(argv)
  layers = tuple(a.layers.split(","))
  rows = measure(a.n, layers)
  with open(a.out, "w") as f:
    json.dump({"n": a.n, "layers": list(layers), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
