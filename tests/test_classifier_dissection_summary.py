"""The classifier dissection summary counts what the dissections say, and its "+ colour" labelling
is the dissection with both label sets (the colour columns joined to a source's, same thresholds).

A tiny factory classifier is dissected over a few rendered scenes three times (exact labels, the
colour segmenter, and a segmenter that gives both label sets at once); the summary of the first
two must reproduce the third, and the command writes its JSON and SVG or one error line.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import classifier_dissection_summary as summary
from jaxdissect import colorseg, dissect, driver, imagesource
from jaxdissect.model import Segmenter
from jaxdissect.report.reader import read_dissection
from jaxdissect.sceneworld import sceneset
from factory_models import make_classifier  # tests/ is on the path (no package)

ROOT = pathlib.Path(__file__).resolve().parents[1]
N, SIZE, LAYERS = 40, 32, ("conv1", "conv2")


def _both(exact: Segmenter, colour: Segmenter) -> Segmenter:
  """Exact labels and colour labels as one segmenter (colour indices after the exact ones)."""
  k = len(exact.concepts)

  def label_fn(params, images):
    c = colour.label_fn(colour.params, images[..., :3])
    return jnp.concatenate([exact.label_fn(exact.params, images),
                            jnp.where(c > 0, c + k - 1, 0)], axis=-1)

  return Segmenter(None, label_fn, {}, exact.concepts + colour.concepts[1:])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("dissections")
  clf = make_classifier(width=6, size=SIZE)
  image_set = sceneset.scene_image_set(N, 999, SIZE)
  gen, exact, source = imagesource.source(clf, image_set)
  colour = imagesource.on_colour_channels(colorseg.make_segmenter())
  # No refining pass (which depends on the labels): every run has the same thresholds.
  config = dissect.Config(LAYERS, N, batch_size=20, warmup=N, iou_tolerance=1.0,
                          latents=source)
  out = {}
  for name, seg in (("exact", exact), ("color", colour), ("both", _both(exact, colour))):
    out[name] = str(root / name)
    driver.write(out[name], driver.run(gen, seg, config), gen, seg, config, model="tiny",
                 segmenter=name, images=False)
  return out


def test_counts_are_the_dissection_and_colour_joins_as_one_dissection(folders):
  exact, colour, both = (read_dissection(folders[k]) for k in ("exact", "color", "both"))
  plain, joint = summary.summarize(exact), summary.summarize(exact, colour)
  assert plain["concept_categories"] == ["object", "part"]
  assert joint["concept_categories"] == ["object", "part", "color"]
  for layer, p, j, want in zip(LAYERS, plain["layers"], joint["layers"], both.doc["layers"]):
    record = exact.doc["layers"][LAYERS.index(layer)]
    assert p["layer"] == j["layer"] == layer and p["stage"] == layer
    assert p["interpretable"] == record["interpretable"]
    assert p["categories"] == record["category_counts"]
    assert j["interpretable"] == want["interpretable"]
    assert j["categories"] == want["category_counts"]
    assert p["units"] == j["units"] == 6 and j["same_thresholds"]
    assert p["share_of_units"] == {c: n / 6 for c, n in p["categories"].items()}
  assert sum(r["categories"].get("color", 0) for r in joint["layers"]) > 0  # not vacuous
  assert [s["stage"] for s in plain["stages"]] == list(LAYERS)
  claim = summary.claim_check(joint)["share_of_units"]
  first, last = joint["stages"][0], joint["stages"][-1]
  share = lambda s: (s["categories"].get("object", 0) + s["categories"].get("part", 0)) / 6
  assert claim["first"]["share"] == share(first) and claim["last"]["share"] == share(last)
  assert claim["holds"] == (share(last) > share(first))


def test_stages_group_vgg_layer_names():
  assert [summary.stage_of(n) for n in ("conv5_3", "conv1_1", "layer4", "fc", "a_b")] == [
      "conv5", "conv1", "layer4", "fc", "a_b"]


def _run(args, cwd):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "-m", "experiments.classifier_dissection_summary",
                         *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_command_writes_json_and_svg_or_one_error_line(folders, tmp_path):
  out = tmp_path / "figs" / "summary"
  proc = _run(["--dissections", f"exact={folders['exact']},colour={folders['color']}",
               "--colour", folders["color"], "--out", out], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads(out.with_suffix(".json").read_text())
  assert list(doc["sources"]) == ["exact", "colour"] and doc["layers"] == list(LAYERS)
  assert doc["sources"]["exact"]["with_colour"]["layers"][0]["layer"] == "conv1"
  chart = out.with_suffix(".svg").read_text()
  assert chart.startswith("<svg") and chart.count("<svg") == 5  # 2 sources x 2 rows + frame
  proc = _run(["--dissections", f"exact={folders['exact']},x={tmp_path}"], tmp_path)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and lines[-1].startswith("classifier_dissection_summary: error:")
  assert "has no dissect.json" in lines[-1]
