"""A face-parts segmenter from trained MediaPipe models, run in JAX: real labels for a face GAN.

The colour segmenter names colours; dissecting a face GAN for face parts needs a segmenter trained
on faces. The `mediapipe` 0.10.21 wheel (Apache-2.0; `pip install --no-deps mediapipe==0.10.21`)
ships trained `.tflite` models; this module reads three of them from the installed wheel (found
without importing mediapipe) and runs them with `ports.tflite_graph`:

  * `face_landmark.tflite`: a 468-point face mesh and a face-presence logit from a 192x192 crop;
  * `iris_landmark.tflite`: eye contour and 5 iris points (centre, then 4 on the rim) from a
    64x64 eye crop;
  * `selfie_segmentation.tflite`: person vs background at 256x256.
Inputs are RGB in [0, 1] for all three. (`face_landmark_with_attention.tflite` would give refined
eyes, lips and irises directly, but it needs three MediaPipe custom ops that neither
`ports.tflite_graph` nor the reference runtime `ai-edge-litert` implements, so its parity could
not be checked; the iris model gives the irises instead.)

Crops, for images `[B, S, S, 3]` such as our aligned 64x64 faces (the models never see a
detector's box, since the GAN's faces are already centred and fill the frame):
  * mesh: the image padded by `S / 8` on each side by repeating its edge pixels (so the face
    covers about the central 80% of the crop, as in MediaPipe's 1.5x-enlarged face boxes, and
    the face oval does not touch the crop's border), resized bilinearly to 192x192;
  * irises: per eye, a square centred between the eye corners (mesh points 33/133 and 362/263),
    side 2.3x the corner distance, rotated with the corner line, sampled bilinearly at 64x64;
    the subject's left eye (image right) is mirrored, as MediaPipe does, since the model takes
    right eyes;
  * selfie: the whole image resized to 256x256, its mask resized back (area) to S x S.

Face presence: `sigmoid(face logit)` of the mesh model, in [0, 1]. An image whose score is below
`threshold` (0.5, MediaPipe's default tracking confidence) has no detectable face: every pixel
is labelled `unknown` (and its probabilities are one-hot there), so such images are counted, not
guessed at: `geometry(...).face_score` gives the scores and `count_unknown` counts them.
Nothing raises on such images.

Labels (one channel, `CONCEPTS` order), painted from the bottom up so later parts win:
background, head (person pixels outside the face oval: hair, ears, neck), skin (face oval),
nose, brow, eye (the eye opening), iris (iris circle within the eye opening), lips, mouth (the
inner lip contour). Polygons are rasterised at pixel centres by the even-odd rule (exact given
the landmarks); probabilities use the same layers with soft masks `sigmoid(signed distance /
softness)` and a soft painter's rule, so they are differentiable in the image and their argmax is
the label except within about a pixel of a part boundary.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.model import Segmenter
from ports import tflite_graph

PACKAGE = "mediapipe"
MESH_FILE = "face_landmark/face_landmark.tflite"
IRIS_FILE = "iris_landmark/iris_landmark.tflite"
SELFIE_FILE = "selfie_segmentation/selfie_segmentation.tflite"

PARTS = ("background", "head", "skin", "nose", "brow", "eye", "iris", "lips", "mouth")
CONCEPTS = (("-", "-"), ("background", "object"), ("head", "part"), ("skin", "part"),
            ("nose", "part"), ("brow", "part"), ("eye", "part"), ("iris", "part"),
            ("lips", "part"), ("mouth", "part"), ("unknown", "object"))
LABEL = {name: i for i, (name, _) in enumerate(CONCEPTS)}
THRESHOLD = 0.5
SOFTNESS = 0.5  # pixels

# Face-mesh landmark loops (MediaPipe's canonical mesh topology).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67,
             109)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39,
              40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81,
              80, 191)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
# The nose's lower outline (nostrils and tip), closed upwards at the bridge's top (168).
NOSE = (168, 275, 440, 344, 278, 294, 327, 326, 2, 97, 98, 64, 48, 115, 220, 45)
EYE_CORNERS = ((33, 133), (362, 263))  # (right eye, left eye): (outer, inner) corners
_PAD = 8  # the mesh crop's margin is S / _PAD on each side
_MESH, _IRIS, _SELFIE = 192, 64, 256
_IRIS_SCALE = 2.3


class Geometry(NamedTuple):
  """What the parts are drawn from, in image pixels (x right, y down, image = [0, W] x [0, H])."""

  mesh: jax.Array  # [B, 468, 2]
  irises: jax.Array  # [B, 2, 3]: (x, y, radius) of the right and the left iris
  person: jax.Array  # [B, H, W] selfie probability
  face_score: jax.Array  # [B] face presence in [0, 1]


def model_dir() -> str:
  """The `mediapipe/modules` folder of the installed wheel, found without importing it."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("the face-parts models come with the PyPI package mediapipe 0.10.21, which "
                     "is not installed: run `pip install --no-deps mediapipe==0.10.21`")
  return os.path.join(list(spec.submodule_search_locations)[0], "modules")


def load_models(folder: str | None = None) -> dict[str, tflite_graph.TFLiteModel]:
  """The three models, from `folder` (default: the installed wheel's `modules`)."""
  folder = model_dir() if folder is None else folder
  return {name: tflite_graph.load(os.path.join(folder, f))
          for name, f in (("mesh", MESH_FILE), ("iris", IRIS_FILE), ("selfie", SELFIE_FILE))}


def _resize(x: jax.Array, h: int, w: int) -> jax.Array:
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[-1]), "linear")


def _sample(images: jax.Array, points: jax.Array) -> jax.Array:
  """Bilinear samples `[B, ..., 3]` of `images` at continuous pixel coordinates `[B, ..., 2]`
  (x, y; pixel centres at +0.5), clamped at the borders."""
  _, h, w, _ = images.shape
  x = jnp.clip(points[..., 0] - 0.5, 0.0, w - 1.0)
  y = jnp.clip(points[..., 1] - 0.5, 0.0, h - 1.0)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
  take = jax.vmap(lambda im, yy, xx: im[yy, xx])
  top = take(images, y0, x0) * (1 - fx) + take(images, y0, x1) * fx
  bottom = take(images, y1, x0) * (1 - fx) + take(images, y1, x1) * fx
  return top * (1 - fy) + bottom * fy


def _eye_frames(mesh: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per eye `[B, 2, ...]`: crop centre (x, y), side length and unit x-axis (cos, sin)."""
  corners = jnp.asarray(EYE_CORNERS)
  a, b = mesh[:, corners[:, 0]], mesh[:, corners[:, 1]]
  centre = (a + b) / 2
  d = b - a
  length = jnp.sqrt(jnp.sum(d * d, -1) + 1e-12)
  return centre, _IRIS_SCALE * length, d / length[..., None]  # corners run +x on both eyes


def _iris_crops(images: jax.Array, mesh: jax.Array) -> tuple[jax.Array, tuple[Any, ...]]:
  """The 64x64 eye crops `[B * 2, 64, 64, 3]` (left eye mirrored) and the crop frames."""
  centre, side, axis = _eye_frames(mesh)
  u = (jnp.arange(_IRIS) + 0.5) / _IRIS - 0.5
  mirror = jnp.asarray([1.0, -1.0])  # the left eye's crop runs right to left
  gx = u[None, None, None, :] * mirror[None, :, None, None]  # [1, 2, 1, 64]
  gy = u[None, None, :, None]
  cos, sin = axis[..., 0][..., None, None], axis[..., 1][..., None, None]
  s = side[..., None, None]
  px = centre[..., 0][..., None, None] + s * (gx * cos - gy * sin)
  py = centre[..., 1][..., None, None] + s * (gx * sin + gy * cos)
  crops = _sample(images, jnp.stack([px, py], -1))  # [B, 2, 64, 64, 3]
  return crops.reshape(-1, _IRIS, _IRIS, 3), (centre, side, axis, mirror)


def geometry(models: Mapping[str, Any], params: Mapping[str, Any], images: jax.Array
             ) -> Geometry:
  """Landmarks, irises, selfie mask and face score of `[B, H, W, 3]` images in [-1, 1]."""
  x = (jnp.asarray(images, jnp.float32) + 1.0) / 2.0
  b, h, w, _ = x.shape
  ph, pw = h // _PAD, w // _PAD
  padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge")
  mesh, flag = models["mesh"].apply_fn(params["mesh"], _resize(padded, _MESH, _MESH))
  mesh = mesh.reshape(b, 468, 3)[..., :2]
  scale = jnp.asarray([(w + 2 * pw) / _MESH, (h + 2 * ph) / _MESH])
  mesh = mesh * scale - jnp.asarray([pw, ph], jnp.float32)
  crops, (centre, side, axis, mirror) = _iris_crops(x, mesh)
  _, iris = models["iris"].apply_fn(params["iris"], crops)
  iris = iris.reshape(b, 2, 5, 3)[..., :2] / _IRIS - 0.5  # crop units, centred
  ix, iy = iris[..., 0] * mirror[None, :, None], iris[..., 1]
  cos, sin = axis[..., 0][..., None], axis[..., 1][..., None]
  s = side[..., None]
  pts = jnp.stack([centre[..., 0][..., None] + s * (ix * cos - iy * sin),
                   centre[..., 1][..., None] + s * (ix * sin + iy * cos)], -1)  # [B, 2, 5, 2]
  radius = jnp.mean(jnp.sqrt(jnp.sum((pts[:, :, 1:] - pts[:, :, :1]) ** 2, -1) + 1e-12), -1)
  irises = jnp.concatenate([pts[:, :, 0], radius[..., None]], -1)
  (person,) = models["selfie"].apply_fn(params["selfie"], _resize(x, _SELFIE, _SELFIE))
  person = jax.image.resize(person, (b, h, w, 1), "linear", antialias=True)[..., 0]
  score = jax.nn.sigmoid(flag.reshape(b))
  return Geometry(mesh, irises, jnp.clip(person, 0.0, 1.0), score)


def polygon_distance(vertices: jax.Array, points: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(signed distance `[..., P]`, inside `[..., P]` bool) of `points [..., P, 2]` to the
  polygon `vertices [..., N, 2]`: positive inside by the even-odd rule, negative outside."""
  a = vertices[..., None, :, :]
  b = jnp.roll(vertices, -1, axis=-2)[..., None, :, :]
  p = points[..., :, None, :]
  ab, ap = b - a, p - a
  t = jnp.clip(jnp.sum(ap * ab, -1) / (jnp.sum(ab * ab, -1) + 1e-12), 0.0, 1.0)
  near = a + t[..., None] * ab
  dist = jnp.sqrt(jnp.min(jnp.sum((p - near) ** 2, -1), -1) + 1e-12)
  ay, by, py = a[..., 1], b[..., 1], p[..., 1]
  straddles = (ay > py) != (by > py)
  dy = jnp.where(straddles, by - ay, 1.0)
  cross = a[..., 0] + (py - ay) * ab[..., 0] / dy
  hits = jnp.sum(straddles & (p[..., 0] < cross), -1)
  inside = hits % 2 == 1
  return jnp.where(inside, dist, -dist), inside


def _pixel_centres(h: int, w: int) -> jax.Array:
  ys, xs = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(w) + 0.5, indexing="ij")
  return jnp.stack([xs, ys], -1).reshape(-1, 2)


def rasterize(g: Geometry, softness: float | jax.Array = SOFTNESS,
              threshold: float | jax.Array = THRESHOLD) -> tuple[jax.Array, jax.Array]:
  """(probabilities `[B, H, W, K]`, labels `[B, H, W, 1]` int32) of the parts `g` describes."""
  b, h, w = g.person.shape
  pts = jnp.broadcast_to(_pixel_centres(h, w), (b, h * w, 2))

  def region(loop: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    sd, inside = polygon_distance(g.mesh[:, jnp.asarray(loop)], pts)
    return jax.nn.sigmoid(sd / softness), inside

  def union(*loops: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    masks = [region(loop) for loop in loops]
    return (jnp.maximum(masks[0][0], masks[1][0]), masks[0][1] | masks[1][1])

  oval = region(FACE_OVAL)
  nose = region(NOSE)
  brow = union(RIGHT_BROW, LEFT_BROW)
  eye = union(RIGHT_EYE, LEFT_EYE)
  d_iris = g.irises[:, :, None, 2] - jnp.sqrt(
      jnp.sum((pts[:, None] - g.irises[:, :, None, :2]) ** 2, -1) + 1e-12)  # [B, 2, P]
  iris_soft = jnp.minimum(jnp.max(jax.nn.sigmoid(d_iris / softness), 1), eye[0])
  iris = (iris_soft, jnp.any(d_iris > 0, 1) & eye[1])
  lips, mouth = region(LIPS_OUTER), region(LIPS_INNER)
  person = g.person.reshape(b, h * w)
  layers = [("head", (person, person >= 0.5)), ("skin", oval), ("nose", nose), ("brow", brow),
            ("eye", eye), ("iris", iris), ("lips", lips), ("mouth", mouth)]
  labels = jnp.full((b, h * w), LABEL["background"], jnp.int32)
  for name, (_, hard) in layers:
    labels = jnp.where(hard, LABEL[name], labels)
  probs = [jnp.zeros_like(person)] * len(CONCEPTS)
  remaining = jnp.ones_like(person)
  for name, (soft, _) in reversed(layers):  # topmost first
    probs[LABEL[name]] = remaining * soft
    remaining = remaining * (1 - soft)
  probs[LABEL["background"]] = remaining
  probs = jnp.stack(probs, -1)
  face = (g.face_score >= threshold)[:, None]
  unknown = jax.nn.one_hot(LABEL["unknown"], len(CONCEPTS), dtype=probs.dtype)
  probs = jnp.where(face[..., None], probs, unknown)
  labels = jnp.where(face, labels, LABEL["unknown"])
  return probs.reshape(b, h, w, -1), labels.reshape(b, h, w, 1)


def make_segmenter(models: Mapping[str, tflite_graph.TFLiteModel] | None = None,
                   threshold: float = THRESHOLD, softness: float = SOFTNESS) -> Segmenter:
  """The face-parts segmenter: `segment_fn(params, images) -> [B, H, W, 11]` probabilities,
  `label_fn(params, images) -> [B, H, W, 1]` int32 labels (`CONCEPTS` order), images in
  [-1, 1] at their own size (square images of at least 16 pixels, e.g. the face GAN's 64x64)."""
  if not 0.0 < threshold < 1.0:
    raise ValueError(f"threshold is {threshold}, expected a face score in (0, 1)")
  if not softness > 0:
    raise ValueError(f"softness is {softness}, expected a positive number of pixels")
  models = load_models() if models is None else models
  params = {"mesh": models["mesh"].params, "iris": models["iris"].params,
            "selfie": models["selfie"].params,
            "threshold": jnp.asarray(threshold, jnp.float32),
            "softness": jnp.asarray(softness, jnp.float32)}

  def _check(images: jax.Array) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] < 16 or images.shape[2] < 16:
      raise ValueError(f"images have shape {list(images.shape)}, expected [B, H, W, 3] with H "
                       "and W at least 16")

  @jax.jit
  def both(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    _check(images)
    g = geometry(models, params, images)
    return rasterize(g, params["softness"], params["threshold"])

  # One compiled function serves both (the models dominate; labels and probs are a few ops).
  def segment_fn(params: Any, images: jax.Array) -> jax.Array:
    return both(params, images)[0]

  def label_fn(params: Any, images: jax.Array) -> jax.Array:
    return both(params, images)[1]

  return Segmenter(segment_fn, label_fn, params, CONCEPTS)


def count_unknown(labels: jax.Array) -> int:
  """How many images of a `[B, H, W, 1]` labelling had no detectable face (all `unknown`)."""
  return int(jnp.sum(jnp.all(labels == LABEL["unknown"], axis=(1, 2, 3))))


def load(threshold: float = THRESHOLD, softness: float = SOFTNESS) -> Segmenter:
  """The face-parts segmenter with the installed mediapipe wheel's models."""
  return make_segmenter(None, threshold, softness)
