"""The paint API over a face-GAN dissection labelled with face parts: the server loads the real
face DCGAN the dissection names, serves the face-parts concepts and their rankings, and a stroke
that removes a concept's units edits the image exactly as the generator does with that edit.

The dissection is hand-written (known IoU tables), so no segmenter runs: the test needs only
the face GAN's weights (`pip install --no-deps gan-face-generate==1.1.1`)."""

import base64
import importlib.util
import io
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the paint server needs fastapi (the 'paint' extra)")
pytest.importorskip("httpx", reason="fastapi.testclient needs httpx (the test extra)")
if importlib.util.find_spec("gan_face_generate") is None:
  pytest.skip("the face GAN's weights come with `pip install --no-deps gan-face-generate==1.1.1`",
              allow_module_level=True)

with warnings.catch_warnings():
  warnings.simplefilter("ignore")
  from fastapi.testclient import TestClient  # noqa: E402

import fake_dissection  # noqa: E402
from experiments import paint_server  # noqa: E402
from jaxdissect import images as images_lib, zoo  # noqa: E402
from jaxdissect.model import Edit  # noqa: E402
from jaxdissect.zsample import standard_z  # noqa: E402
from ports import facegan, faceparts  # noqa: E402

LAYERS = {"layer2": (8, 8, 256), "layer3": (16, 16, 128)}
CONCEPTS = [name for name, _ in faceparts.CONCEPTS]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("dissect-facegan-faceparts")
  fake_dissection.write(folder, LAYERS, faceparts.CONCEPTS, "facegan", "faceparts")
  return folder


@pytest.fixture(scope="module")
def client(folder):
  return TestClient(paint_server.create_app(str(folder), max_interventions=4, max_batch=2))


def test_info_and_rankings_are_the_face_dissection(client, folder):
  info = client.get("/api/info").json()
  assert (info["model"], info["segmenter"]) == ("facegan", "faceparts")
  assert info["image_size"] == [64, 64] and info["zdim"] == facegan.ZDIM
  names = [c["name"] for c in client.get("/api/concepts", params={"layer": "layer3"}).json()[
      "concepts"]]
  assert set(names) <= set(CONCEPTS[1:]) and names
  ranked = client.get("/api/rankings", params={"layer": "layer3", "concept": "lips"}).json()
  column = np.load(folder / "layer3" / "iou.npy")[:, faceparts.LABEL["lips"]]
  assert ranked["rankings"][0]["units"] == sorted(range(128), key=lambda u: -column[u])


def test_a_stroke_removing_mouth_units_is_the_generator_with_that_edit(client, folder):
  column = np.load(folder / "layer3" / "iou.npy")[:, faceparts.LABEL["lips"]]
  units = [int(u) for u in np.argsort(-column)[:10]]
  mask = np.zeros((64, 64), bool)
  mask[40:56, 20:44] = True  # where the face GAN draws mouths
  bits = "".join("1" if v else "0" for v in mask.reshape(-1))
  body = {"seeds": [3, 4], "interventions": [{"layer": "layer3", "units": units, "mask": bits}]}
  response = client.post("/api/generate", json=body)
  assert response.status_code == 200, response.text
  got = np.stack([_decode(u) for u in response.json()["images"]])
  gen = zoo.load_generator("facegan")
  z = jnp.asarray(np.stack([standard_z(1, s, facegan.ZDIM)[0] for s in (3, 4)]))
  alpha = np.zeros((1, 16, 16, 128), np.float32)
  alpha[0, 10:14, 5:11, units] = 1.0  # the stroke max-pooled to layer3's 16x16 grid
  edit = {"layer3": Edit(jnp.asarray(alpha), jnp.zeros((), jnp.float32))}
  run = jax.jit(lambda p, z, e: gen.apply_fn(p, z, edits=e)[0])
  want = np.asarray(images_lib.to_uint8(run(gen.params, z, edit)))
  plain = np.asarray(images_lib.to_uint8(run(gen.params, z, None)))
  diff = np.abs(got.astype(int) - want.astype(int))
  assert diff.max() <= 1 and (diff > 0).mean() < 0.01
  change = np.abs(got.astype(int) - plain.astype(int)).max(-1)
  assert change[:, mask].mean() > 2  # the stroke changes the mouth region ...
  assert change[:, :24].max() == 0  # ... and leaves the forehead and eyes alone


def _decode(url):
  assert url.startswith("data:image/png;base64,")
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
