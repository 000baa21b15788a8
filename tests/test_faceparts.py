"""Face-parts segmenter: exact labels from a hand-built landmark set, soft and hard outputs that
agree away from part boundaries (measured), no-face images labelled `unknown` and counted, and
the `faceparts` spec through the zoo."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factory_models import face_gan_images
from jaxdissect import zoo
from ports import faceparts

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("mediapipe") is None,
    reason="the face models come with `pip install --no-deps mediapipe==0.10.21`")

# Hand-built parts: each loop's vertices on an axis-aligned rectangle (x0, y0, x1, y1), corners
# at integers so no pixel centre lies on an edge; irises are circles (x, y, r).
_H = _W = 32
_RECTS = {
    "skin": (faceparts.FACE_OVAL, (4, 2, 28, 30)),
    "nose": (faceparts.NOSE, (14, 12, 18, 20)),
    "brow": ((faceparts.RIGHT_BROW, (7, 6, 13, 8)), (faceparts.LEFT_BROW, (19, 6, 25, 8))),
    "eye": ((faceparts.RIGHT_EYE, (7, 9, 13, 12)), (faceparts.LEFT_EYE, (19, 9, 25, 12))),
    "lips": (faceparts.LIPS_OUTER, (11, 22, 21, 27)),
    "mouth": (faceparts.LIPS_INNER, (13, 24, 19, 25)),
}
_IRISES = ((10.0, 10.5, 1.2), (22.0, 10.5, 1.2))


def _loops():
  for name, spec in _RECTS.items():
    for loop, rect in (spec if isinstance(spec[0], tuple) and isinstance(spec[0][0], tuple)
                       else (spec,)):
      yield name, loop, rect


def _hand_geometry():
  mesh = np.full((468, 2), -100.0, np.float32)
  used = []
  for _, loop, (x0, y0, x1, y1) in _loops():
    corners = np.asarray([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float32)
    for i, v in enumerate(loop):
      mesh[v] = corners[i * 4 // len(loop)]
    used.extend(loop)
  assert len(used) == len(set(used))  # the loops share no landmark
  person = np.zeros((_H, _W), np.float32)
  person[:, 2:30] = 1.0  # the person covers all but two columns at each side
  return faceparts.Geometry(jnp.asarray(mesh)[None], jnp.asarray(_IRISES, jnp.float32)[None],
                            jnp.asarray(person)[None], jnp.asarray([0.9]))


def _expected_labels():
  ys, xs = np.mgrid[0:_H, 0:_W] + 0.5
  labels = np.full((_H, _W), faceparts.LABEL["background"])
  labels[(xs > 2) & (xs < 30)] = faceparts.LABEL["head"]
  order = ["skin", "nose", "brow", "eye", "iris", "lips", "mouth"]
  eye = np.zeros((_H, _W), bool)
  for name in order:
    if name == "iris":
      inside = np.zeros_like(eye)
      for cx, cy, r in _IRISES:
        inside |= (xs - cx) ** 2 + (ys - cy) ** 2 < r * r
      inside &= eye
    else:
      inside = np.zeros_like(eye)
      for n, _, (x0, y0, x1, y1) in _loops():
        if n == name:
          inside |= (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
      if name == "eye":
        eye = inside
    labels[inside] = faceparts.LABEL[name]
  return labels


def test_hand_built_landmarks_give_exact_labels():
  probs, labels = jax.jit(faceparts.rasterize)(_hand_geometry())
  want = _expected_labels()
  np.testing.assert_array_equal(np.asarray(labels)[0, ..., 0], want)
  assert set(np.unique(want)) == set(range(1, 10))  # every part is drawn
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)


def test_soft_and_hard_agree_away_from_boundaries():
  probs, labels = jax.jit(faceparts.rasterize)(_hand_geometry(), softness=0.25)
  hard = np.asarray(labels)[0, ..., 0]
  argmax = np.asarray(probs)[0].argmax(-1)
  disagree = argmax != hard
  # A pixel is at a boundary when a 3x3 neighbourhood holds more than one label.
  pad = np.pad(hard, 1, mode="edge")
  near = np.zeros_like(disagree)
  for dy in range(3):
    for dx in range(3):
      near |= pad[dy:dy + _H, dx:dx + _W] != hard
  assert not (disagree & ~near).any()
  assert disagree.mean() <= 0.02, disagree.mean()


def test_no_face_is_unknown_and_counted():
  g = _hand_geometry()._replace(face_score=jnp.asarray([0.2]))
  probs, labels = jax.jit(faceparts.rasterize)(g)
  assert (np.asarray(labels) == faceparts.LABEL["unknown"]).all()
  assert (np.asarray(probs).argmax(-1) == faceparts.LABEL["unknown"]).all()
  both = jnp.concatenate([labels, jax.jit(faceparts.rasterize)(_hand_geometry())[1]])
  assert faceparts.count_unknown(both) == 1


@pytest.fixture(scope="module")
def segmenter():
  if importlib.util.find_spec("mediapipe") is None:
    pytest.skip("the face models come with `pip install --no-deps mediapipe==0.10.21`")
  return zoo.load_segmenter("faceparts")


@needs_wheel
def test_face_gan_images_and_blank_images(segmenter):
  faces = face_gan_images(2, seed=0)
  blank = jnp.zeros((1, 64, 64, 3))  # uniform grey: no face
  images = jnp.concatenate([faces, blank])
  labels = np.asarray(segmenter.label_fn(segmenter.params, images))
  probs = np.asarray(segmenter.segment_fn(segmenter.params, images))
  assert labels.shape == (3, 64, 64, 1) and labels.dtype == np.int32
  assert probs.shape == (3, 64, 64, len(faceparts.CONCEPTS))
  assert faceparts.count_unknown(labels) == 1 and (labels[2] == faceparts.LABEL["unknown"]).all()
  for b in range(2):  # every face shows skin, eyes, brows, nose and lips
    for part in ("skin", "eye", "brow", "nose", "lips"):
      assert (labels[b] == faceparts.LABEL[part]).any(), (b, part)
  assert (probs.argmax(-1) == labels[..., 0]).mean() >= 0.98
  assert segmenter.concepts == faceparts.CONCEPTS


def test_bad_options_are_one_line_errors():
  with pytest.raises(ValueError, match="threshold is 1.5"):
    faceparts.make_segmenter({}, threshold=1.5)
  with pytest.raises(ValueError, match="softness is 0"):
    faceparts.make_segmenter({}, softness=0)
