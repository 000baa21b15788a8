"""Which units count as interpretable: PNAS's IoU rule, or in IQR mode the original GAN
Dissection code's rule (IQR > 0.01 and IoU > 0.05), recorded in dissect.json and the report."""

import numpy as np
import pytest

from jaxdissect import dissect, driver, thresholds


def test_rules_by_threshold_and_name():
  assert thresholds.interpretable_for(0.01) == thresholds.Interpretable(0.04, None)
  assert thresholds.interpretable_for("iqr") == thresholds.Interpretable(0.05, 0.01)
  assert thresholds.interpretable_for("iqr", "iou") == thresholds.Interpretable(0.04, None)
  assert thresholds.interpretable_for("iqr", iou=0.1) == thresholds.Interpretable(0.1, 0.01)
  with pytest.raises(ValueError, match="needs each label's IQR"):
    thresholds.interpretable_for(0.01, "gandissect")
  with pytest.raises(ValueError, match="'median'.*auto, iou, gandissect"):
    thresholds.interpretable_for(0.01, "median")
  rule = thresholds.Interpretable(0.05, 0.01)
  assert rule(3, 0.06, 0.02) and not rule(3, 0.06, 0.005) and not rule(0, 0.9, 0.9)
  assert rule.describe() == "IQR > 0.01 and IoU > 0.05"


def test_iqr_dissection_uses_the_original_rule(planted_world, tmp_path):
  gen, seg = planted_world.generator, planted_world.segmenter
  config = dissect.Config(("layer1", "layer2"), 80, batch_size=20, warmup=40, threshold="iqr")
  results = driver.run(gen, seg, config)
  doc = driver.write(str(tmp_path), results, gen, seg, config, model="planted",
                     segmenter="planted", images=False)
  plain = driver.write(str(tmp_path / "plain"), results, gen, seg, config, model="planted",
                       segmenter="planted", images=False,
                       interpretable=thresholds.interpretable_for("iqr", "iou"))
  assert doc["interpretable"]["rule"] == "IQR > 0.01 and IoU > 0.05"
  assert plain["interpretable"]["rule"] == "IoU > 0.04"
  for layer, plain_layer in zip(doc["layers"], plain["layers"]):
    result = results[layer["layer"]]
    for unit in layer["units"]:
      u = unit["unit"]
      expected = (result.label[u] != 0 and result.best_iou[u] > 0.05 and result.iqr[u] > 0.01)
      assert unit["interpretable"] == bool(expected), (layer["layer"], u)
    assert layer["interpretable"] <= plain_layer["interpretable"]
  assert sum(layer["interpretable"] for layer in doc["layers"]) >= 3  # the planted colour units
  assert np.all([u["iqr"] > 0.01 for layer in doc["layers"] for u in layer["units"]
                 if u["interpretable"]])
  assert "IQR &gt; 0.01 and IoU &gt; 0.05" in (tmp_path / "report.html").read_text()
