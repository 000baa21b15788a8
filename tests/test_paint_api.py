"""The paint server's JSON API, in process: tables, edits checked against the spec, bad input.

The server runs over a small hand-written dissection of the scene GAN (two layers, known IoU
tables, thresholds and learned alpha), so every table it serves can be checked against the
files. Generated images are compared with the generator run here on edits built by an
independent NumPy transcription of the original server's compositing (spec §8: planes per
intervention, masks max- or mean-pooled, `a = 1 - (1 - a_new)(1 - a_acc)`,
`v = (v_acc a_acc (1 - a_new) + v_new a_new) / (a + 1e-40)`).
"""

import asyncio
import base64
import html
import html.parser
import io
import json
import re
import urllib.parse
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the paint server needs fastapi (the 'paint' extra)")
pytest.importorskip("httpx", reason="fastapi.testclient needs httpx (the test extra)")

with warnings.catch_warnings():  # starlette suggests httpx2; httpx works
  warnings.simplefilter("ignore")
  from fastapi.testclient import TestClient  # noqa: E402

import fake_dissection  # noqa: E402
from experiments import paint_server  # noqa: E402
from experiments.paint import apidocs  # noqa: E402
from experiments.cli import UsageError  # noqa: E402
from jaxdissect import zoo  # noqa: E402
from jaxdissect.model import Edit  # noqa: E402
from jaxdissect.zsample import standard_z  # noqa: E402

LAYERS = {"layer4": (8, 8, 128), "layer6": (16, 16, 48)}
CONCEPTS = ["-", "sky", "cloud", "mountain", "grass", "tree", "building", "road", "water", "roof",
            "window", "door", "trunk"]
SIZE = 64
MAX_INTERVENTIONS = 6
TREE_ALPHA_LAYER = "layer4"


def _write_dissection(folder):
  """A dissect.json (+ iou.npy, thresholds.npy, a few strips, units-tree.json) for LAYERS."""
  doc = fake_dissection.write(
      folder, LAYERS, [(n, "object") for n in CONCEPTS], "sceneworld", "sceneworld",
      image=lambda name, u: f"{name}/units/unit{u:04d}.jpg")
  for name in LAYERS:
    for u in range(3):  # strips for the first units only
      Image.new("RGB", (40, 8), (u * 50, 0, 0)).save(folder / name / "units" / f"unit{u:04d}.jpg")
  alpha = np.zeros(LAYERS[TREE_ALPHA_LAYER][2], np.float32)
  alpha[[7, 3, 90, 11]] = [1.0, 0.9, 0.9, 0.2]
  (folder / "units-tree.json").write_text(json.dumps(
      {"layer": TREE_ALPHA_LAYER, "concept": "tree", "alpha": alpha.tolist()}))
  return doc


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("dissection")
  _write_dissection(folder)
  return folder


@pytest.fixture(scope="module")
def api(folder):
  return paint_server.create_app(str(folder), "sceneworld", max_interventions=MAX_INTERVENTIONS,
                                 max_batch=4, max_body_bytes=200_000)


@pytest.fixture(scope="module")
def client(api):
  return TestClient(api)


@pytest.fixture(scope="module")
def gen():
  return zoo.load_generator("sceneworld")


# ------------------------------------------------------------------------------------ helpers

def _png(mask, mode="RGBA"):
  """A PNG data URL of a 0/1 `[H, W]` mask: painted = opaque (RGBA) or white (L)."""
  m = (np.asarray(mask) > 0).astype(np.uint8) * 255
  if mode == "RGBA":
    image = Image.fromarray(np.dstack([np.zeros_like(m)] * 3 + [m]), "RGBA")
  else:
    image = Image.fromarray(m, "L")
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _bits(mask):
  return "".join("1" if v else "0" for v in np.asarray(mask).reshape(-1))


def _decode(url):
  assert url.startswith("data:image/png;base64,")
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def _box(y0, x0, y1, x1):
  m = np.zeros((SIZE, SIZE), np.float32)
  m[y0:y1, x0:x1] = 1
  return m


def _pool(mask, h, w, how):
  cells = mask.reshape(h, SIZE // h, w, SIZE // w)
  return cells.max((1, 3)) if how == "max" else cells.mean((1, 3))


def _spec_edits(interventions):
  """Spec §8, in NumPy: per-layer alpha/value planes [h, w, C], composited in order."""
  acc = {n: [np.zeros(s, np.float64), np.zeros(s, np.float64)] for n, s in LAYERS.items()}
  for iv in interventions:
    h, w, c = LAYERS[iv["layer"]]
    units = iv.get("units", [iv.get("unit")])
    alpha = np.broadcast_to(np.asarray(iv.get("alpha", 1.0), np.float64), (len(units),))
    value = np.broadcast_to(np.asarray(iv.get("value", 0.0), np.float64), (len(units),))
    a_plane, v_plane = np.zeros((h, w, c)), np.zeros((h, w, c))
    mask = iv.get("_mask")
    cells = np.ones((h, w)) if mask is None else _pool(mask, h, w, iv.get("pooling", "max"))
    a_plane[:, :, units] = cells[..., None] * alpha
    v_plane[:, :, units] = value
    a_acc, v_acc = acc[iv["layer"]]
    merged = 1 - (1 - a_plane) * (1 - a_acc)
    v_new = (v_acc * a_acc * (1 - a_plane) + v_plane * a_plane) / (merged + 1e-40)
    acc[iv["layer"]] = [merged, v_new]
  return {n: Edit(jnp.asarray(a, jnp.float32), jnp.asarray(v, jnp.float32))
          for n, (a, v) in acc.items()}


def _expected(gen, z, interventions):
  """uint8 images of the generator run here on the spec's composited edits."""
  images = _jitted(gen)(gen.params, jnp.asarray(z), _spec_edits(interventions))
  return np.asarray(jnp.clip(jnp.round((images + 1) * 127.5), 0, 255).astype(jnp.uint8))


_JITTED = {}


def _jitted(gen):
  """The generator with edits, compiled once (every call edits both layers)."""
  if id(gen) not in _JITTED:
    _JITTED[id(gen)] = jax.jit(lambda p, z, edits: gen.apply_fn(p, z, edits=edits)[0])
  return _JITTED[id(gen)]


def _request(interventions, **latents):
  body = {"seeds": [5]} if not latents else latents
  ivs = [{k: v for k, v in iv.items() if not k.startswith("_")} for iv in interventions]
  return {**body, "interventions": ivs}


def _generate(client, interventions, **latents):
  response = client.post("/api/generate", json=_request(interventions, **latents))
  assert response.status_code == 200, response.text
  return np.stack([_decode(u) for u in response.json()["images"]])


def _assert_close_images(got, want):
  diff = np.abs(got.astype(int) - want.astype(int))
  assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


# ------------------------------------------------------------------------------------- tables

def test_tables_match_the_dissection_files(client, folder):
  info = client.get("/api/info").json()
  assert info["image_size"] == [SIZE, SIZE] and info["intensities"] == [4, 10, 15]
  assert info["default_layer"] == TREE_ALPHA_LAYER
  layers = client.get("/api/layers").json()["layers"]
  assert [(l["layer"], l["shape"]) for l in layers] == [(n, list(s)) for n, s in LAYERS.items()]
  for name in LAYERS:
    iou = np.load(folder / name / "iou.npy")
    units = client.get("/api/units", params={"layer": name}).json()["units"]
    assert [u["unit"] for u in units] == list(range(len(iou)))
    assert [u["label"] for u in units] == [CONCEPTS[k] for k in iou.argmax(1)]
    np.testing.assert_allclose([u["iou"] for u in units], iou.max(1), rtol=1e-6)
    assert [u["strip"] is not None for u in units[:4]] == [True, True, True, False]
    levels = client.get("/api/levels", params={"layer": name}).json()
    assert levels["quantile"] == pytest.approx(0.99)
    np.testing.assert_allclose(levels["levels"], np.load(folder / name / "thresholds.npy"))
    ranked = client.get("/api/rankings", params={"layer": name, "concept": "road"}).json()
    assert [r["metric"] for r in ranked["rankings"]] == ["iou"]
    column = iou[:, CONCEPTS.index("road")]
    assert ranked["rankings"][0]["units"] == sorted(range(len(column)), key=lambda u: -column[u])
  strip = client.get(units[0]["strip"])
  assert strip.status_code == 200 and strip.headers["content-type"] == "image/jpeg"
  every = client.get("/api/rankings", params={"layer": "layer6"}).json()["rankings"]
  assert {r["concept"] for r in every} == set(CONCEPTS[1:])


def test_alpha_ranking_and_concepts_come_from_units_json(client):
  ranked = client.get("/api/rankings", params={"layer": "layer4", "concept": "tree"}).json()
  by = {r["metric"]: r for r in ranked["rankings"]}
  assert by["alpha"]["units"][:4] == [7, 3, 90, 11] or by["alpha"]["units"][:4] == [7, 90, 3, 11]
  assert by["alpha"]["scores"][:4] == pytest.approx([1.0, 0.9, 0.9, 0.2])
  concepts = client.get("/api/concepts", params={"layer": "layer4"}).json()["concepts"]
  assert concepts[0]["name"] == "tree" and concepts[0]["rankings"] == ["iou", "alpha"]
  other = client.get("/api/concepts", params={"layer": "layer6"}).json()["concepts"]
  assert all(c["rankings"] == ["iou"] for c in other)


# ------------------------------------------------------------------------------------ generate

def test_plain_generation_matches_the_generator(client, gen):
  got = _generate(client, [], seeds=[9])
  _assert_close_images(got, _expected(gen, standard_z(1, 9, 64), []))
  zs = standard_z(1, 3, 64)
  _assert_close_images(_generate(client, [], zs=zs.tolist()), _expected(gen, zs, []))


def test_strokes_composite_in_order_as_the_spec_says(client, gen):
  left, right = _box(8, 0, 40, 36), _box(20, 24, 64, 64)
  strokes = [
      {"layer": "layer4", "units": list(range(0, 128, 2)), "alpha": 1, "value": 0,
       "_mask": left},
      {"layer": "layer4", "units": list(range(0, 128, 3)), "alpha": 0.7,
       "value": np.linspace(1, 4, 43).tolist(), "_mask": right, "pooling": "mean"},
      {"layer": "layer6", "unit": 5, "value": 3.0, "_mask": _box(30, 30, 34, 34)},
      {"layer": "layer4", "units": [1, 2], "alpha": [0.5, 1.0], "value": [2.0, 0.0]},
  ]
  strokes[0]["mask"] = _png(left)
  strokes[1]["mask"] = _bits(right)
  strokes[2]["mask"] = _png(strokes[2]["_mask"], mode="L")
  got = _generate(client, strokes)
  want = _expected(gen, standard_z(1, 5, 64), strokes)
  _assert_close_images(got, want)
  plain = _generate(client, [])
  assert np.abs(got.astype(int) - plain).mean() > 2  # the edits changed the image
  reordered = _generate(client, [strokes[1], strokes[0]] + strokes[2:])
  assert np.abs(reordered.astype(int) - got).max() > 5  # order matters where strokes overlap


def test_png_and_bit_masks_agree_and_empty_mask_edits_nothing(client):
  mask = _box(16, 16, 48, 40)
  base = {"layer": "layer4", "units": list(range(64))}
  by_png = _generate(client, [{**base, "mask": _png(mask)}])
  by_bits = _generate(client, [{**base, "mask": _bits(mask)}])
  np.testing.assert_array_equal(by_png, by_bits)
  nothing = _generate(client, [{**base, "mask": _bits(np.zeros((SIZE, SIZE)))}])
  np.testing.assert_array_equal(nothing, _generate(client, []))


def test_features_are_mask_weighted_unit_activations(client, gen):
  mask = _box(0, 0, 20, 64)
  response = client.post("/api/features", json={"seeds": [5], "mask": _bits(mask)})
  assert response.status_code == 200, response.text
  out = response.json()["layers"]
  capture = jax.jit(lambda p, z: gen.apply_fn(p, z, capture=tuple(LAYERS))[1])
  acts = capture(gen.params, jnp.asarray(standard_z(1, 5, 64)))
  for name, (h, w, _) in LAYERS.items():
    a = np.asarray(acts[name], np.float64)[0]
    weight = _pool(mask, h, w, "mean")
    np.testing.assert_allclose(out[name]["mean"][0],
                               (a * weight[..., None]).sum((0, 1)) / weight.sum(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(out[name]["max"][0],
                               (a * _pool(mask, h, w, "max")[..., None]).max((0, 1)),
                               rtol=1e-4, atol=1e-5)
  one = client.post("/api/features", json={"zs": [[0.0] * 64], "layers": ["layer6"]}).json()
  assert list(one["layers"]) == ["layer6"]


def test_requests_reuse_one_compiled_function_per_batch_size(client, api):
  model = api.state.paint
  _generate(client, [])
  client.post("/api/features", json={"seeds": [1]})
  traces = model.traces
  mask = _box(10, 10, 30, 30)
  variants = [
      [],
      [{"layer": "layer4", "unit": 3}],
      [{"layer": "layer6", "units": [1, 2], "mask": _png(mask), "pooling": "mean"}],
      [{"layer": "layer4", "units": [u], "value": 2.0, "mask": _bits(mask)}
       for u in range(MAX_INTERVENTIONS)],
  ]
  for seed, ivs in enumerate(variants):
    _generate(client, ivs, seeds=[seed])
    _generate(client, ivs, zs=standard_z(1, seed, 64).tolist())
    client.post("/api/features", json={"seeds": [seed], "mask": _bits(mask)})
  assert model.traces == traces
  _generate(client, variants[1], seeds=[1, 2])  # a new batch size compiles once...
  assert model.traces == traces + 1
  _generate(client, variants[3], seeds=[3, 4])  # ...and only once
  assert model.traces == traces + 1


# --------------------------------------------------------------------------------- bad requests

def _bad_png_bodies():
  png = _png(np.ones((SIZE, SIZE)))
  raw = base64.b64decode(png.split(",", 1)[1])
  truncated = "data:image/png;base64," + base64.b64encode(raw[:len(raw) // 2]).decode()
  jpeg = io.BytesIO()
  Image.new("RGB", (SIZE, SIZE)).save(jpeg, format="JPEG")
  as_jpeg = "data:image/png;base64," + base64.b64encode(jpeg.getvalue()).decode()
  return [
      ("data:image/png;base64,@@not base64@@", "base64"),
      ("data:image/png;base64," + base64.b64encode(b"hello, not a png").decode(), "not a PNG"),
      (truncated, "not a readable PNG"),
      (as_jpeg, "JPEG"),
      ("data:image/gif;base64,AAAA", "data:image/png;base64,"),
      (_png(np.ones((32, 32))), "32x32"),
      (_png(np.ones((SIZE, SIZE + 8))), "64x72"),
      ("0101", "4 bits"),
      ("2" * SIZE * SIZE, "'2'"),
  ]


@pytest.mark.parametrize("mask,message", _bad_png_bodies())
def test_bad_masks_are_400_with_a_message(client, mask, message):
  response = client.post("/api/generate", json={
      "seeds": [1], "interventions": [{"layer": "layer4", "unit": 1, "mask": mask}]})
  assert response.status_code == 400 and message in response.json()["detail"], response.text


def _bad_generate_bodies():
  unit = {"layer": "layer4", "unit": 1}
  return [
      ({"seeds": [1], "interventions": [{"layer": "layer99", "unit": 1}]}, 400, "'layer99'"),
      ({"seeds": [1], "interventions": [{"layer": "layer4", "unit": 128}]}, 400, "0..127"),
      ({"seeds": [1], "interventions": [{"layer": "layer4", "units": [2, 2]}]}, 400, "repeat"),
      ({"seeds": [1], "interventions": [{"layer": "layer4", "units": []}]}, 400, "no units"),
      ({"seeds": [1], "interventions": [{"layer": "layer4"}]}, 400, "'unit' or 'units'"),
      ({"seeds": [1], "interventions": [{**unit, "alpha": 2}]}, 400, "[0, 1]"),
      ({"seeds": [1], "interventions": [{**unit, "value": [1, 2]}]}, 400, "2 entries"),
      ({"seeds": [1], "interventions": [{**unit, "untis": [1]}]}, 422, "untis"),
      ({"seeds": [1], "interventions": [{**unit, "pooling": "min"}]}, 422, "pooling"),
      ({"seeds": [1], "interventions": [unit] * (MAX_INTERVENTIONS + 1)}, 400,
       f"at most {MAX_INTERVENTIONS}"),
      ({"interventions": []}, 400, "exactly one of 'seeds'"),
      ({"seeds": [1], "zs": [[0.0] * 64]}, 400, "exactly one of 'seeds'"),
      ({"seeds": [1, 2, 3, 4, 5]}, 400, "1 to 4"),
      ({"seeds": []}, 400, "1 to 4"),
      ({"seeds": [-1]}, 422, "seeds.0"),
      ({"zs": [[0.0] * 63]}, 400, "[63]"),
      ({"zs": "nope"}, 422, "zs"),
  ]


@pytest.mark.parametrize("body,status,message", _bad_generate_bodies())
def test_bad_generate_requests_are_4xx_with_a_message(client, body, status, message):
  response = client.post("/api/generate", json=body)
  assert response.status_code == status and message in response.json()["detail"], response.text


@pytest.mark.parametrize("path,params,message", [
    ("/api/units", {"layer": "layer5"}, "valid layers are: 'layer4', 'layer6'"),
    ("/api/levels", {"layer": "nope"}, "'nope'"),
    ("/api/concepts", {"layer": "nope"}, "'nope'"),
    ("/api/rankings", {"layer": "layer4", "concept": "unicorn"}, "'unicorn'"),
    ("/api/rankings", {"layer": "layer4", "concept": "-"}, "'-'"),
    ("/api/units", {}, "layer"),
])
def test_bad_table_queries_are_4xx_with_a_message(client, path, params, message):
  response = client.get(path, params=params)
  assert 400 <= response.status_code < 500 and message in response.json()["detail"]


def test_bad_feature_requests_are_400(client):
  for body, message in [({"seeds": [1], "mask": _bits(np.zeros((SIZE, SIZE)))}, "empty"),
                        ({"seeds": [1], "layers": ["layer1"]}, "'layer1'"),
                        ({"seeds": [1], "mask": _png(np.ones((8, 8)))}, "8x8")]:
    response = client.post("/api/features", json=body)
    assert response.status_code == 400 and message in response.json()["detail"]


def test_oversized_bodies_are_413_declared_or_streamed(client):
  big = {"seeds": [1], "interventions": [{"layer": "layer4", "unit": 1, "mask": "0" * 300_000}]}
  response = client.post("/api/generate", json=big)
  assert response.status_code == 413 and "200000 bytes" in response.json()["detail"]
  streamed = client.post("/api/generate", content=iter([b" " * 50_000] * 6),
                         headers={"content-type": "application/json"})
  assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]
  bogus = client.post("/api/generate", content=b"{}", headers={"content-length": "-5"})
  assert 400 <= bogus.status_code < 500


def test_malformed_json_is_422(client):
  response = client.post("/api/generate", content=b"{not json",
                         headers={"content-type": "application/json"})
  assert response.status_code == 422 and "JSON" in response.json()["detail"]


def test_server_keeps_serving_after_bad_requests(client, gen):
  for body in [{"seeds": [1], "interventions": [{"layer": "x", "unit": 0}]},
               {"seeds": [1], "interventions": [{"layer": "layer4", "unit": 0,
                                                 "mask": "data:image/png;base64,AAAA"}]}]:
    assert client.post("/api/generate", json=body).status_code == 400
  client.post("/api/generate", content=b"x" * 300_000)
  stroke = [{"layer": "layer4", "units": [1, 2, 3], "_mask": _box(0, 0, 32, 32)}]
  stroke[0]["mask"] = _bits(stroke[0]["_mask"])
  _assert_close_images(_generate(client, stroke), _expected(gen, standard_z(1, 5, 64), stroke))


# -------------------------------------------------------------------------------- static files

def test_page_and_static_files_are_served(client):
  page = client.get("/")
  assert page.status_code == 200 and "/static/paint.js" in page.text
  for name, kind in [("paint.js", "javascript"), ("paint.css", "text/css")]:
    response = client.get(f"/static/{name}")
    assert response.status_code == 200 and kind in response.headers["content-type"]
  assert client.get("/docs").status_code == 200
  paths = client.get("/openapi.json").json()["paths"]
  assert {"/api/generate", "/api/features", "/api/rankings", "/api/levels"} <= set(paths)


@pytest.mark.parametrize("path", [
    "/static/../paint_server.py", "/static/..%2Fpaint_server.py", "/static/%2e%2e/paint_server.py",
    "/static/..%2F..%2Fjaxdissect%2Fpaint.py", "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
    "/static/....//paint_server.py", "/static/%5c..%5cpaint_server.py", "/static/",
    "/static/paint_static", "/strips/layer4/..%2F..%2Fdissect.json", "/strips/layer4/-1",
    "/strips/layer4/5",
])
def test_paths_cannot_escape_the_static_folder(client, path):
  response = client.get(path)
  assert response.status_code in (404, 422), response.text
  for leak in ("import ", "[project]", '"layers"'):
    assert leak not in response.text


def test_raw_dot_dot_path_is_refused_at_the_asgi_level(api):
  """Clients normalise '..' away; this request reaches the app with it intact."""
  sent = []

  async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}

  async def send(message):
    sent.append(message)

  for raw in ("/static/../paint_server.py", "/static/../../jaxdissect/paint.py"):
    sent.clear()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": raw, "raw_path": raw.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"host", b"testserver")],
             "server": ("testserver", 80), "client": ("127.0.0.1", 1)}
    asyncio.run(api(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert status == 404 and b"import" not in body


def test_create_app_rejects_a_wrong_model_or_folder(folder, tmp_path):
  with pytest.raises(UsageError, match="'planted'"):
    paint_server.create_app(str(folder), "planted", warm_up=False)
  with pytest.raises(UsageError, match="no dissect.json"):
    paint_server.create_app(str(tmp_path), "sceneworld", warm_up=False)
  with pytest.raises(ValueError, match="valid models"):
    paint_server.create_app(str(folder), "nope", warm_up=False)


# ------------------------------------------------------------------------------------ API docs

URL_ATTRS = {"src", "href", "action", "formaction", "srcset", "poster", "data", "background",
             "cite", "xlink:href", "manifest"}
CSS_URL = r"(?:url\(|@import)\s*['\"]?((?:[a-z]+:)?//[^'\")\s]+)"  # url(//host/..), @import


class _Collector(html.parser.HTMLParser):
  """Tags with their attributes, and the text inside <script> and <style>."""

  def __init__(self):
    super().__init__()
    self.tags, self.code, self._in = [], [], None

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))
    self._in = tag if tag in ("script", "style") else None

  def handle_endtag(self, tag):
    self._in = None

  def handle_data(self, data):
    if self._in:
      self.code.append((self._in, data))


def _external_urls(page):
  """(where, url) for everything in `page` that points at another host."""
  parser = _Collector()
  parser.feed(page)
  found = []
  for tag, attrs in parser.tags:
    for name, value in attrs.items():
      if name in URL_ATTRS and value:
        for url in value.split(",") if name == "srcset" else [value]:
          parts = urllib.parse.urlsplit(url.strip().split(" ")[0])
          if parts.netloc or parts.scheme in ("http", "https", "ftp", "ws", "wss"):
            found.append((f"<{tag} {name}>", url))
  for where, code in parser.code:
    found += [(f"<{where}>", u) for u in re.findall(CSS_URL, code)]
  found += [("text", u) for u in re.findall(r"(?:https?|wss?|ftp)://[^\s\"'<>)]+", page)]
  return found


def _sections(page):
  """Operation anchor -> the HTML of its section."""
  return dict(re.findall(r'<section id="(op-[^"]+)">(.*?)</section>', page, re.S))


def _text(fragment):
  """The words of an HTML fragment (inline tags dropped, others a space)."""
  inline = re.sub(r"</?(?:code|b|span)\b[^>]*>", "", fragment)
  return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def test_docs_page_loads_nothing_from_another_host(client):
  response = client.get("/docs")
  assert response.status_code == 200 and "text/html" in response.headers["content-type"]
  assert _external_urls(response.text) == []
  tags = _Collector()
  tags.feed(response.text)
  assert all("src" not in attrs for tag, attrs in tags.tags if tag == "script")
  assert not [attrs for tag, attrs in tags.tags if tag == "link" and attrs.get("rel") != "icon"]


def test_external_url_check_flags_fastapi_cdn_docs():
  from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
  for page in (get_swagger_ui_html(openapi_url="/openapi.json", title="x"),
               get_redoc_html(openapi_url="/openapi.json", title="x")):
    found = _external_urls(page.body.decode())
    assert any(where.startswith(("<script", "<link")) for where, _ in found), found
  assert _external_urls('<img srcset="a.png 1x, //cdn.example/b.png 2x">')
  assert _external_urls("<style>body { background: url('//cdn.example/a.png') }</style>")


def test_docs_page_documents_every_operation(client, api):
  page = client.get("/docs").text
  openapi = api.openapi()
  sections = _sections(page)
  ops = [(p, m, op) for p, item in openapi["paths"].items() for m, op in item.items()]
  assert len(sections) == len(ops) == 8
  for path, method, op in ops:
    section = next(v for k, v in sections.items() if k == "op-" + method
                   + re.sub(r"[^A-Za-z0-9]+", "-", path).rstrip("-"))
    text = _text(section)
    assert f"{method.upper()} {path} {op['summary']}" in text
    assert op["description"].split()[0] in text
    for param in op.get("parameters", []):
      assert f"{param['name']} (query) string" in text and param["description"] in text
    for status, response in op["responses"].items():
      assert f"{status} {response['description']}" in text
    forms = re.findall(r'<form class="try" method="get" action="([^"]+)"', section)
    assert forms == ([path] if method == "get" else [])
  for name, schema in openapi["components"]["schemas"].items():
    assert name in page
    for field in schema.get("properties", {}):
      assert f"<b>{field}</b>" in page, (name, field)


def test_docs_page_resolves_refs_with_types_defaults_and_enums(client):
  sections = _sections(client.get("/docs").text)
  generate = _text(sections["op-post-api-generate"])
  assert "JSON body GenerateRequest" in generate
  assert "seeds array of integer | null each ≥ 0; each < 4294967296" in generate
  assert "interventions array of Intervention default [] — Composited in order" in generate
  assert "layer string required — A dissected layer" in generate  # Intervention, from its $ref
  assert 'pooling string default "max"; one of "max", "mean"' in generate
  assert "alpha number | array of number default 1 — In [0, 1]" in generate
  assert "422 Malformed JSON" in generate and "detail string required" in generate
  features = _text(sections["op-post-api-features"])
  assert "layers object of string → LayerFeatures required" in features
  assert "mean array of array of number required" in features
  rankings = _text(sections["op-get-api-rankings"])
  assert "layer (query) string required" in rankings
  assert "concept (query) string | null — A concept" in rankings
  assert 'metric string required one of "iou", "alpha"' in rankings


def test_render_docs_escapes_text_and_stops_at_recursive_models():
  openapi = {
      "info": {"title": "<t>", "description": "<script>alert(1)</script> `x`"},
      "paths": {"/tree": {"post": {
          "summary": "a & b", "responses": {"200": {"description": "ok"}},
          "requestBody": {"content": {"application/json": {
              "schema": {"$ref": "#/components/schemas/Node"}}}}}}},
      "components": {"schemas": {"Node": {
          "type": "object", "required": ["kids"], "properties": {
              "kids": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}}}}}
  page = apidocs.render_docs(openapi)
  assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
  assert "<code>x</code>" in page and "a &amp; b" in page and "<title>&lt;t&gt; API" in page
  assert page.count("<b>kids</b>") == 1  # Node's fields once, not again inside itself
  assert "kids array of Node required" in _text(page)


def test_openapi_json_is_served_and_cdn_docs_are_off(client, api):
  response = client.get("/openapi.json")
  assert response.status_code == 200 and response.json() == api.openapi()
  assert response.json()["paths"]["/api/generate"]["post"]["summary"]
  for path in ("/redoc", "/docs/oauth2-redirect"):
    assert client.get(path).status_code == 404
