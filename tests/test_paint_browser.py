"""The paint page in a real browser: a stroke over a tree, with "remove tree", removes the tree.

Headless Chromium (Debian's, driven by Playwright) loads the page from a uvicorn server on a
free loopback port, picks a scene with a tree, chooses concept "tree", mode "remove" and the
highest intensity (the top 15 units of the learned-alpha ranking), and drags a stroke over the
tree. The returned image is measured with our scene segmenter: inside the stroke (the mask the
page actually sent) the tree pixel fraction must drop by at least half, and pixels far from the
stroke (beyond the edit's reach: the max-pooled layer4 cells plus the receptive field of the
layers after it) must barely change.

The dissection is built here (layer4, 100 images, small unit strips; learned alpha from 30
optimizer steps), so the test needs no results/ folder. The scene is the seed, among 0..31,
whose largest tree the unit set removes best when ablated everywhere (measured in process, not
through the page): removal varies by scene, and this test is about the page localising an edit
that the units can make. Set JAXDISSECT_PAINT_SCREENSHOT=docs/paint.png to keep the screenshot.
"""

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
uvicorn = pytest.importorskip("uvicorn", reason="the paint server needs uvicorn (paint extra)")
if not os.path.exists(CHROMIUM):
  pytest.skip(f"needs Chromium at {CHROMIUM}", allow_module_level=True)

from experiments import paint_server  # noqa: E402
from jaxdissect import zoo  # noqa: E402
from jaxdissect.masks import mask_from_image  # noqa: E402
from jaxdissect.model import Edit  # noqa: E402
from jaxdissect.zsample import standard_z  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER = "layer4"
UNITS = 15           # the page's "high" intensity
SEEDS = range(32)    # scenes searched for a tree
MIN_TREE = 60        # pixels of the tree blob painted over
BRUSH = 6            # brush diameter in image pixels
FAR = 24             # pixels farther than this from the stroke are beyond the edit's reach
FAR_MEAN_DIFF = 1.0  # mean |change| allowed there, in 0..255 levels (measured: 0.0)
FAR_RELABELED = 0.01  # share of far pixels whose label may change (measured: 0 to 0.0006)
SCREENSHOT_ENV = "JAXDISSECT_PAINT_SCREENSHOT"


def _run(args, cwd):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT,
                                                                    os.environ.get("PYTHONPATH")])))
  proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def dissection(tmp_path_factory):
  """A layer4 dissection of the scene GAN with learned tree alpha (about 1 minute)."""
  outdir = tmp_path_factory.mktemp("dissect")
  _run(["experiments.dissect", "--layers", LAYER, "--n", "100", "--batch_size", "50",
        "--outdir", str(outdir), "--quiet", "--topk", "3", "--tile", "32"], outdir)
  _run(["experiments.optimize_units", "--dissection", str(outdir), "--concept", "tree",
        "--layer", LAYER, "--steps", "30", "--eval_n", "8", "--max_units", "1",
        "--checkpoint_every", "1000", "--quiet"], outdir)
  assert (outdir / "units-tree.json").exists()
  return outdir


@pytest.fixture(scope="module")
def server(dissection):
  """The paint server on a free loopback port, in a thread; yields (url, PaintModel)."""
  api = paint_server.create_app(str(dissection), "sceneworld")
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.bind(("127.0.0.1", 0))
  server = uvicorn.Server(uvicorn.Config(api, log_level="warning"))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.time() + 30
  while not server.started and time.time() < deadline:
    time.sleep(0.05)
  assert server.started, "uvicorn did not start"
  yield f"http://127.0.0.1:{sock.getsockname()[1]}", api.state.paint
  server.should_exit = True
  thread.join(timeout=10)


@pytest.fixture(scope="module")
def world():
  return zoo.load_world("sceneworld")


@pytest.fixture(scope="module")
def labeller(world):
  """`images [b, H, W, 3]` in [-1, 1] -> our segmenter's `[b, H, W, D]` labels (b <= 2 x
  len(SEEDS); padded to that, so it compiles once)."""
  seg = world.segmenter
  label = jax.jit(lambda images: seg.label_fn(seg.params, images))
  rows = 2 * len(SEEDS)

  def labels(images):
    images = np.asarray(images, np.float32)
    padded = np.concatenate([images, np.zeros((rows - len(images), *images.shape[1:]),
                                              np.float32)])
    return np.asarray(label(padded))[:len(images)]

  return labels


def _pick_scene(world, labeller, units, num_units):
  """(seed, its tree blob, its unedited uint8 image): the scene whose largest tree blob the
  unit set removes best when ablated everywhere (ties: the largest blob)."""
  gen, tree = world.generator, [name for name, _ in world.segmenter.concepts].index("tree")
  z = np.stack([standard_z(1, s, world.generator.zdim)[0] for s in SEEDS])
  alpha = np.zeros((2 * len(z), 1, 1, num_units), np.float32)
  alpha[len(z):, ..., units] = 1  # second half: the units ablated everywhere
  images = jax.jit(lambda z, a: gen.apply_fn(gen.params, z, edits={LAYER: Edit(a, 0 * a)})[0])(
      np.concatenate([z, z]), alpha)
  trees = np.asarray((labeller(images) == tree).any(-1))
  before, after = trees[:len(z)], trees[len(z):]
  best = None
  for i, seed in enumerate(SEEDS):
    blobs, count = ndimage.label(before[i])
    if not count:
      continue
    sizes = ndimage.sum(before[i], blobs, range(1, count + 1))
    blob = blobs == int(np.argmax(sizes)) + 1
    if blob.sum() < MIN_TREE:
      continue
    removed = 1 - (after[i] & blob).sum() / blob.sum()
    key = (removed >= 0.9, blob.sum() if removed >= 0.9 else removed)
    if best is None or key > best[0]:
      best = (key, seed, blob, i)
  assert best is not None, f"no scene among seeds {SEEDS} has a tree of {MIN_TREE} pixels"
  plain = np.clip(np.round((np.asarray(images[best[3]]) + 1) * 127.5), 0, 255)
  return best[1], best[2], plain


def _decode(url):
  assert url.startswith("data:image/png;base64,"), url[:40]
  return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _as_model_input(url):
  rgb = np.asarray(_decode(url).convert("RGB"), np.float32)
  return rgb / 127.5 - 1.0


def _wait_generation(page, count):
  page.wait_for_function(
      f"Number(document.querySelector('#result').dataset.generation) >= {count}")
  return int(page.get_attribute("#result", "data-generation"))


def _scribble(page, blob, size):
  """Drags a zigzag stroke over the bounding box of `blob` (image pixels) on the overlay."""
  box = page.locator("#overlay").bounding_box()
  k = box["width"] / size
  ys, xs = np.nonzero(blob)
  y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
  to_page = lambda x, y: (box["x"] + x * k, box["y"] + y * k)
  rows = np.arange(y0 + BRUSH / 3, y1 + 0.01, BRUSH * 0.6)
  page.mouse.move(*to_page(x0, rows[0]))
  page.mouse.down()
  for i, y in enumerate(rows):
    a, b = (x0, x1) if i % 2 == 0 else (x1, x0)
    page.mouse.move(*to_page(a, y), steps=2)
    page.mouse.move(*to_page(b, y), steps=8)
  page.mouse.up()


def test_stroke_with_remove_tree_removes_the_tree_inside_only(server, world, labeller, tmp_path):
  url, model = server
  size = model.size[0]
  ranking = {r["metric"]: r for r in model.rankings(LAYER, "tree")}
  assert "alpha" in ranking, "the fixture's units-tree.json was not picked up"
  units = ranking["alpha"]["units"][:UNITS]
  seed, blob, plain = _pick_scene(world, labeller, units, model.layers[LAYER].shape[2])

  with sync_api.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
    try:
      page = browser.new_page(viewport={"width": 1200, "height": 1000})
      page.set_default_timeout(60_000)
      errors = []
      page.on("pageerror", lambda e: errors.append(str(e)))
      page.goto(url + "/")
      page.wait_for_selector("body[data-ready='1']")
      shown = _wait_generation(page, 1)
      page.fill("#seed", str(seed))
      page.click("#load-seed")
      shown = _wait_generation(page, shown + 1)
      before_url = page.get_attribute("#result", "src")
      page.click("button[data-concept='tree']")
      assert page.input_value("#ranking") == "alpha"
      page.check(f"input[name='intensity'][value='{UNITS}']")
      page.check("input[name='mode'][value='remove']")
      page.locator("#brush").evaluate(
          "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(BRUSH))
      with page.expect_response(lambda r: r.url.endswith("/api/generate")
                                and r.request.method == "POST") as answer:
        _scribble(page, blob, size)
      response = answer.value
      assert response.status == 200, response.text()
      sent = response.request.post_data_json
      after_url = response.json()["images"][0]
      _wait_generation(page, shown + 1)
      assert page.get_attribute("#result", "src") == after_url
      assert "strokes use layer4" in page.inner_text("#in-use")
      strips = page.locator("#units img")
      assert strips.count() == UNITS
      page.wait_for_function("[...document.querySelectorAll('#units img')].every("
                             "img => img.complete && img.naturalWidth > 0)")
      page.check("#show-strokes")  # for the screenshot: the stroke over the result
      assert page.get_attribute("#original", "src") == before_url
      shot = tmp_path / "paint.png"
      page.screenshot(path=str(shot), full_page=True)
      # Undo brings the unedited scene back; a gallery thumbnail switches the scene.
      page.click("#undo")
      shown = _wait_generation(page, shown + 2)
      assert page.get_attribute("#result", "src") == before_url
      assert page.locator("#history li").count() == 0
      page.click("#gallery button[data-seed='3']")
      _wait_generation(page, shown + 1)
      assert page.input_value("#seed") == "3"
      assert page.get_attribute("#result", "src") != before_url
      assert not errors, errors
    finally:
      browser.close()
  if os.environ.get(SCREENSHOT_ENV):
    shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])

  # What the page sent: one stroke removing the top units of the alpha ranking.
  assert sent["seeds"] == [seed] and len(sent["interventions"]) == 1
  stroke = sent["interventions"][0]
  assert stroke["layer"] == LAYER and stroke["units"] == units and stroke["value"] == 0
  mask = mask_from_image(_decode(stroke["mask"])) > 0
  assert mask.shape == (size, size) and (mask & blob).sum() >= 0.9 * blob.sum()

  # The page showed the seed's scene: the server's image is the generator's (to 1 level).
  assert np.abs(np.asarray(_decode(before_url).convert("RGB"), np.float32) - plain).max() <= 1

  before, after = (_as_model_input(u) for u in (before_url, after_url))
  labels = labeller(np.stack([before, after]))
  trees = (labels == [name for name, _ in world.segmenter.concepts].index("tree")).any(-1)
  inside_before, inside_after = trees[0][mask].mean(), trees[1][mask].mean()
  assert inside_before > 0.1, inside_before
  assert inside_after <= 0.5 * inside_before, (inside_before, inside_after)

  far = ~ndimage.binary_dilation(mask, np.ones((2 * FAR + 1, 2 * FAR + 1), bool))
  assert far.sum() >= 200, far.sum()
  change = np.abs(after - before).mean(-1) * 127.5
  relabeled = (labels[0] != labels[1]).any(-1)
  assert change[far].mean() <= FAR_MEAN_DIFF, change[far].mean()
  assert relabeled[far].mean() <= FAR_RELABELED, relabeled[far].mean()
  print(f"seed {seed}: tree inside the stroke {inside_before:.3f} -> {inside_after:.3f}; far "
        f"from it ({far.sum()} px) mean change {change[far].mean():.4f} levels, "
        f"{relabeled[far].mean():.4f} relabeled")
