"""Dissections compared side by side: the figures are the dissections' own, counted again here."""

import collections
import json
import os
import re
import subprocess
import sys

import pytest

import cli_support
import fake_dissection
from jaxdissect.report import compare
from jaxdissect.report.reader import DissectionReadError, read_ablation, read_dissection

_CONCEPTS = [("-", ""), ("sky", "object"), ("tree", "object"), ("door", "part"),
             ("window", "part")]


def _folder(tmp_path, name, layers, model):
  folder = tmp_path / name
  folder.mkdir()
  # About 60% of the units interpretable, so counts of units and of interpretable ones differ.
  doc = fake_dissection.write(folder, layers, _CONCEPTS, model, "sceneworld", iou_max=0.05)
  return folder, doc


def _ablation(folder, concept, removed, ci, ranking="ace", layer="l1", baseline=0.0125):
  units = list(range(len(removed) - 1))
  doc = {"model": "m", "segmenter": "s", "layer": layer, "concept": concept,
         "rankings": {ranking: {"units": units, "removed": removed, "ci99": ci,
                                "baseline": baseline}}}
  (folder / f"ablation-{concept}.json").write_text(json.dumps(doc))


def test_summary_counts_what_the_document_says(tmp_path):
  folder, doc = _folder(tmp_path, "a", {"l1": (4, 4, 40), "l2": (8, 8, 30)}, "pg")
  s = compare.summarize(read_dissection(str(folder)), "ProgGAN")
  want_units = collections.Counter()
  for record, layer in zip(doc["layers"], s.layers):
    on = [u for u in record["units"] if u["interpretable"]]
    assert layer.units == len(record["units"])
    assert 0 < layer.interpretable == len(on) < layer.units
    assert layer.concepts == tuple(sorted({u["label"] for u in on}))
    assert layer.categories == dict(collections.Counter(u["category"] for u in on))
    want_units.update(u["label"] for u in on)
  assert s.concept_units == dict(want_units)
  d = compare.comparison_doc([s], ["tree"])
  m = d["models"][0]
  assert m["interpretable"] == sum(want_units.values())
  assert m["share"] == pytest.approx(m["interpretable"] / 70)
  assert m["concepts_covered"] == sorted(want_units)
  assert m["ablations"] == {"tree": None}


def test_ablation_curve_is_the_first_ranking_the_result_has(tmp_path):
  folder, _ = _folder(tmp_path, "a", {"l1": (4, 4, 8)}, "pg")
  _ablation(folder, "tree", [0.0, 0.5, 0.7], [0.0, 0.1, 0.05], ranking="iou")
  record = read_ablation(str(folder / "ablation-tree.json"))
  s = compare.summarize(read_dissection(str(folder)), ablations=[record])
  assert s.name == "pg"
  curve = compare.comparison_doc([s], ["tree"], ("ace", "iou"))["models"][0]["ablations"]["tree"]
  assert curve == {"layer": "l1", "ranking": "iou", "baseline": 0.0125, "units": [0, 1],
                   "removed": [0.0, 0.5, 0.7], "ci99": [0.0, 0.1, 0.05]}
  assert compare.comparison_doc([s], ["tree"], ("ace",))["models"][0]["ablations"]["tree"] is None


@pytest.mark.parametrize("damage", [
    lambda d: d.update(rankings=[]),
    lambda d: d["rankings"]["ace"].update(removed=[0.0, 0.1]),
    lambda d: d["rankings"]["ace"].update(ci99=[0.0, "x", 0.1]),
    lambda d: d["rankings"]["ace"].update(units=[0, 1.5]),
    lambda d: d.pop("concept"),
    lambda d: d["rankings"]["ace"].update(baseline="NaN"),
])
def test_a_damaged_ablation_result_is_one_named_error(tmp_path, damage):
  _ablation(tmp_path, "tree", [0.0, 0.5, 0.7], [0.0, 0.1, 0.05])
  path = tmp_path / "ablation-tree.json"
  doc = json.loads(path.read_text())
  damage(doc)
  path.write_text(json.dumps(doc))
  with pytest.raises(DissectionReadError, match="ablation-tree.json"):
    read_ablation(str(path))


def _run(args, tmp_path):
  return subprocess.run([sys.executable, "-m", "experiments.compare_dissections", *args],
                        capture_output=True, text=True, cwd=cli_support.ROOT, timeout=300,
                        env=cli_support.subprocess_env(tmp_path / "cache"))


def test_cli_writes_the_page_tables_and_charts(tmp_path):
  a, _ = _folder(tmp_path, "a", {"l1": (4, 4, 40), "l2": (8, 8, 30)}, "pg")
  b, _ = _folder(tmp_path, "b", {"b4.conv1": (4, 4, 20), "b8.conv0": (8, 8, 20),
                                 "b8.conv1": (8, 8, 20)}, "sg")
  removed = [i / 35 for i in range(31)]
  _ablation(a, "tree", removed, [0.01] * 31)
  out = tmp_path / "out"
  proc = _run([f"--dissections={a},{b}", "--names=ProgGAN,StyleGAN2", "--concepts=tree,door",
               f"--out={out}"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  doc = json.loads((out / "compare.json").read_text())
  assert [m["name"] for m in doc["models"]] == ["ProgGAN", "StyleGAN2"]
  md = (out / "compare.md").read_text()
  # top 1 .. top 30 of the tree curve, as the table quotes them.
  assert ("| tree | ProgGAN | l1 (ace) | 0.0125 | 3% ± 1 | 14% ± 1 | 29% ± 1 | 57% ± 1 | 86% ± 1 |"
          in md)
  assert "| tree | StyleGAN2 | not measured |" in md
  assert "| StyleGAN2 | b8.conv1 | 20 |" in md
  page = (out / "compare.html").read_text()
  assert page.count("<svg") == 2 + 1 + 2  # layer charts, depth, one ablation chart per concept
  tops = [max(int(t) for t in re.findall(r'class="tick"[^>]*>(\d+)<', chart))
          for chart in page.split("<svg")[1:3]]
  peak = max(l["interpretable"] for m in doc["models"] for l in m["layers"])
  assert tops[0] == tops[1] >= peak  # the two layer charts share one scale
  assert "StyleGAN2" in page and "b8.conv0" in page
  for name in ("depth.svg", "ablation-tree.svg", "ablation-door.svg"):
    assert (out / name).read_text().startswith("<svg")


def test_cli_usage_errors_are_one_line(tmp_path):
  a, _ = _folder(tmp_path, "a", {"l1": (4, 4, 8)}, "pg")
  proc = _run([f"--dissections={a}", "--names=x,y", f"--out={tmp_path / 'o'}"], tmp_path)
  assert proc.returncode == 2 and "--names: 2 names for 1 dissections" in proc.stderr
  proc = _run([f"--dissections={tmp_path / 'missing'}", f"--out={tmp_path / 'o'}"], tmp_path)
  assert proc.returncode == 2 and "no dissect.json" in proc.stderr
  assert os.path.exists(a / "dissect.json")
