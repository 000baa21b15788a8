"""The one reader of a finished dissection, and the latents reader: right on good input, and
only their own named error, fast, on anything else (fuzzed)."""

import json

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jaxdissect import colorseg, dissect, driver, latents, planted
from jaxdissect.report import reader

SETTINGS = hypothesis.settings(
    max_examples=60, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A finished planted-world dissection (no strips), written by the library's writer."""
  out = tmp_path_factory.mktemp("dissection")
  gen, seg = planted.make_planted_generator(), planted.make_oracle_segmenter()
  config = dissect.Config(("layer1", "layer2"), 60, batch_size=20, warmup=20)
  results = driver.run(gen, seg, config)
  driver.write(str(out), results, gen, seg, config, model="planted", segmenter="planted",
               settings={"model_args": {"width": 3}}, images=False)
  return out, results


def test_reads_what_the_writer_wrote(folder):
  out, results = folder
  d = reader.read_dissection(str(out))
  doc = json.loads((out / "dissect.json").read_text())
  assert (d.model, d.segmenter, d.model_args) == ("planted", "planted", {"width": 3})
  assert d.latents == {"source": "seed", "seed": 1} and d.layer_names == ("layer1", "layer2")
  assert d.concepts == tuple((c["name"], c["category"]) for c in doc["concepts"])
  for name, result in results.items():
    layer = d.layer(name)
    np.testing.assert_array_equal(d.iou(name), result.iou)
    np.testing.assert_array_equal(layer.thresholds(), result.thresholds.astype(np.float32))
    assert [u.label for u in layer.units] == [u["label"] for u in doc["layers"][
        d.layer_names.index(name)]["units"]]
  assert d.best_layer("red").layer == "layer2"
  with pytest.raises(reader.DissectionReadError, match="'layer9'.*layer1, layer2"):
    d.layer("layer9")
  with pytest.raises(reader.DissectionReadError, match="'purple'.*red"):
    d.concept_index("purple")


def _paths(doc, prefix=()):
  """Every path (tuple of keys / indices) into a JSON document."""
  yield prefix
  if isinstance(doc, dict):
    for k, v in doc.items():
      yield from _paths(v, prefix + (k,))
  elif isinstance(doc, list):
    for i, v in enumerate(doc):
      yield from _paths(v, prefix + (i,))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 10 ** 400) | st.floats()
                           | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)


@SETTINGS
@hypothesis.given(data=st.data())
def test_fuzzed_documents_fail_only_with_the_named_error(folder, tmp_path, data):
  out, _ = folder
  doc = json.loads((out / "dissect.json").read_text())
  paths = list(_paths(doc))
  for _ in range(data.draw(st.integers(1, 3))):
    path = data.draw(st.sampled_from(paths))
    value = data.draw(JSON_VALUES)
    if not path:
      doc = value
      break
    node = doc
    try:
      for key in path[:-1]:
        node = node[key]
      node[path[-1]] = value
    except (KeyError, IndexError, TypeError):
      pass
  (tmp_path / "dissect.json").write_text(json.dumps(doc))
  for layer in ("layer1", "layer2"):
    (tmp_path / layer).mkdir(exist_ok=True)
    (tmp_path / layer / "iou.npy").write_bytes((out / layer / "iou.npy").read_bytes())
  try:
    d = reader.read_dissection(str(tmp_path))
    for record in d.layers:
      d.iou(record)
  except reader.DissectionReadError as e:
    assert "\n" not in str(e)


@SETTINGS
@hypothesis.given(raw=st.binary(max_size=300))
def test_random_bytes_fail_only_with_the_named_errors(tmp_path, raw):
  (tmp_path / "dissect.json").write_bytes(raw)
  with pytest.raises(reader.DissectionReadError):
    reader.read_dissection(str(tmp_path))
  (tmp_path / "units-x.json").write_bytes(raw)
  with pytest.raises(reader.DissectionReadError):
    reader.read_unit_set(str(tmp_path / "units-x.json"))
  (tmp_path / "z.npy").write_bytes(raw)
  with pytest.raises(latents.LatentsError):
    latents.load_npy(str(tmp_path / "z.npy"))


def test_latent_files_read_back_and_forged_headers_fail_fast(tmp_path):
  z = np.random.RandomState(0).standard_normal((7, 4)).astype(np.float32)
  np.save(tmp_path / "z.npy", z)
  source = latents.load_npy(str(tmp_path / "z.npy"))
  np.testing.assert_array_equal(np.concatenate([b for _, b in source.batches(7, 3, (4,))]), z)
  np.testing.assert_array_equal(source.rows(np.array([5, 1]), (2, 2)), z[[5, 1]].reshape(2, 2, 2))
  # A header claiming 10^12 float64s backed by a few bytes: refused before any allocation.
  header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }"
  header += b" " * (117 - len(header)) + b"\n"
  (tmp_path / "forged.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                                        + header + b"\0" * 64)
  with pytest.raises(latents.LatentsError, match="forged.npy.*bytes"):
    latents.load_npy(str(tmp_path / "forged.npy"))
  np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(latents.LatentsError, match="objects.npy"):
    latents.load_npy(str(tmp_path / "objects.npy"))
  np.save(tmp_path / "ints.npy", np.zeros((3, 4), np.int32))
  with pytest.raises(latents.LatentsError, match="int32"):
    latents.load_npy(str(tmp_path / "ints.npy"))
  np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan, np.float32))
  with pytest.raises(latents.LatentsError, match="non-finite"):
    latents.load_npy(str(tmp_path / "nan.npy"))
  with pytest.raises(latents.LatentsError, match="shape"):
    latents.from_array(z).check(7, (5,))
  with pytest.raises(latents.LatentsError, match="7 rows"):
    latents.from_array(z).check(8, (4,))


def test_colour_segmenter_dissection_records_given_latents(tmp_path):
  z = np.random.RandomState(1).standard_normal((30, planted.ZDIM)).astype(np.float32)
  gen, seg = planted.make_planted_generator(), colorseg.make_segmenter()
  config = dissect.Config(("layer2",), 30, batch_size=10, warmup=10,
                          latents=latents.from_array(z, "mine"))
  doc = driver.write(str(tmp_path), driver.run(gen, seg, config), gen, seg, config,
                     model="planted", segmenter="color", images=True)
  assert doc["latents"]["origin"] == "mine" and doc["latents"]["count"] == 30
  assert reader.read_dissection(str(tmp_path)).latents == doc["latents"]
  assert list((tmp_path / "layer2" / "units").glob("unit*.jpg"))
  page = (tmp_path / "report.html").read_text()
  assert "latents <b>mine</b>" in page and "seed <b>" not in page


def test_a_kept_report_alone_reads_as_the_dissection(folder, tmp_path):
  out, _ = folder
  (tmp_path / "report.html").write_bytes((out / "report.html").read_bytes())
  alone = reader.read_folder(str(tmp_path))
  full = reader.read_folder(str(out))
  assert alone.layers == full.layers and alone.concepts == full.concepts
  with pytest.raises(reader.DissectionReadError, match="neither dissect.json"):
    reader.read_folder(str(tmp_path / "missing"))


def test_unit_sets_read_back_and_malformed_ones_fail_by_name(tmp_path):
  path = tmp_path / "units-tree.json"
  path.write_text(json.dumps({"layer": "layer4", "concept": "tree", "alpha": [0.5, 1, 0]}))
  layer, concept, alpha = reader.read_unit_set(str(path))
  assert (layer, concept) == ("layer4", "tree") and alpha.tolist() == [0.5, 1.0, 0.0]
  for bad in ({"layer": "layer4", "concept": "tree"}, {"layer": 4, "concept": "t", "alpha": []},
              {"layer": "l", "concept": "t", "alpha": ["x"]}, [1, 2]):
    path.write_text(json.dumps(bad))
    with pytest.raises(reader.DissectionReadError, match="units-tree.json"):
      reader.read_unit_set(str(path))
