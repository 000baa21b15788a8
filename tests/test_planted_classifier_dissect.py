"""Dissecting the planted classifier recovers its wiring exactly (issue 16's acceptance).

The planted classifier's unit `PLANTED[c]` is exactly concept c's mask on its images, and its
other units detect nothing. Run over those images through `imagesource` (the image as the
latent, the exact labels as a channel) and the one dissection engine, each planted unit must be
labelled with its concept at IoU 1.0, and no other unit may pass the interpretability rule, as
`dissect.json` records them.
"""

import numpy as np
import pytest

from jaxdissect import dissect, driver, imagesource
from jaxdissect import planted_classifier as pc
from jaxdissect.imagesource import ImageSet

N = 300
CONCEPT_INDEX = {name: i for i, (name, _) in enumerate(pc.CONCEPTS)}


def _dissect(seed, outdir):
  """The engine's results and `dissect.json` document for the planted classifier `seed`."""
  images, labels, _ = pc.planted_images(N, 0)
  rows = np.concatenate([images, labels.astype(np.float32)], axis=-1)
  gen, seg, source = imagesource.source(pc.make_planted_classifier(seed),
                                        ImageSet(rows, "planted images", pc.CONCEPTS))
  config = dissect.Config(("features",), N, batch_size=100, warmup=100, latents=source)
  results = driver.run(gen, seg, config)
  doc = driver.write(str(outdir), results, gen, seg, config, model="planted_classifier",
                     segmenter="exact", images=False)
  return results["features"], doc["layers"][0]


@pytest.mark.parametrize("seed", [0, 1])  # the seed draws only the noise units
def test_dissection_labels_exactly_the_planted_units(seed, tmp_path):
  result, layer = _dissect(seed, tmp_path)
  assert layer["shape"] == [pc.SIZE, pc.SIZE, pc.UNITS]
  units = {u["unit"]: u for u in layer["units"]}
  for concept, unit in pc.PLANTED.items():
    assert result.label[unit] == CONCEPT_INDEX[concept], (concept, unit)
    assert result.best_iou[unit] == 1.0 and result.thresholds[unit] == 0.0, (concept, unit)
    assert units[unit]["label"] == concept and units[unit]["category"] == "color"
    assert units[unit]["iou"] == 1.0 and units[unit]["interpretable"], units[unit]
  passing = sorted(u for u, d in units.items() if d["interpretable"])
  assert passing == sorted(pc.PLANTED.values())
  assert layer["interpretable"] == len(pc.PLANTED)
  assert layer["concept_counts"] == {c: 1 for c in pc.PLANTED}
  noise = np.asarray(result.best_iou)[list(pc.NOISE_UNITS)]
  assert noise.max() < 0.02, noise.max()  # chance overlap, far under the rule's 0.04
