"""How good are the face-parts labels on the face GAN's images? Confident faces and part geometry.

A dissection is only as good as its labels. `ports.faceparts` runs MediaPipe's trained face mesh,
iris and selfie models on images they were not trained on (64x64 synthetic GAN faces), and an
image whose face score is below the threshold is labelled `unknown` throughout. This script
measures, on a seeded sample of the face GAN's images, how often the segmenter finds a face, how
much of the image each part covers, and whether the parts sit where faces have them.

Command (1,000 images, z seed 1, the dissection's images: about 2.5 minutes on 2 idle CPU cores,
4.5 minutes on a shared machine; nearly all of it the segmenter, about 0.12 s an image):

  python -m experiments.faceparts_quality

Needs the face GAN's weights (`pip install --no-deps gan-face-generate==1.1.1`) and the face
models (`pip install --no-deps mediapipe==0.10.21`). Writes `OUT.json` and `OUT.png` (`--out`,
default `docs/facegan-faceparts`):
  * JSON: every setting; the face scores (share at or above the threshold, quantiles, a
    histogram) and the indices of the images without a confident face; per part, over the
    confident images, the mean share of the image's pixels and the share of images that show it;
    the geometry checks below as counts and shares of the confident images; the runtime.
  * PNG: the first `--sheet` images, each above its colour-coded part map (face score in the
    corner, `no face` where it is below the threshold), and a legend.

Geometry checks, per confident image, from the labels (not the landmarks) by part centroids
(x right, y down; eye = eye opening + iris, lips = lips + mouth interior). A check fails when a
part it needs is missing (`missing` counts those), so every share is of all confident images:
  * `eyes_above_lips`: the eyes' centroid row is above the lips' (the issue's gate: >= 99%);
  * `brows_above_eyes`: the brows' centroid is above the eyes';
  * `nose_between_eyes_and_lips`: eyes above nose above lips (centroid rows);
  * `eyes_either_side_of_nose`: eye pixels on both sides of the nose's centroid column, each
    side holding at least a fifth of them;
  * `eyes_level`: those two sides' centroid rows differ by less than half their column distance;
  * `lips_under_nose`: the lips' centroid column is within half the eyes' spacing of the nose's;
  * `head_above_face`: head pixels (hair; the selfie model's person outside the face oval) in
    rows above the face oval's (skin's) top row;
  * `mouth_within_lips`: the mouth interior's centroid inside the lips' bounding box (`of` is the
    confident images that show a mouth interior; closed mouths have none).
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from experiments import cli
from experiments.cli import UsageError
from experiments.progress import progress
from jaxdissect import latents, zoo

PARTS = ("background", "head", "skin", "nose", "brow", "eye", "iris", "lips", "mouth")
# Colours of the part maps, by label index of `ports.faceparts.CONCEPTS`.
PALETTE = {"-": (0, 0, 0), "background": (40, 40, 40), "head": (120, 80, 200),
           "skin": (245, 205, 170), "nose": (255, 150, 0), "brow": (40, 150, 60),
           "eye": (255, 255, 255), "iris": (40, 110, 255), "lips": (220, 30, 50),
           "mouth": (100, 0, 30), "unknown": (128, 128, 128)}
GATE = ("eyes_above_lips", 0.99)
SIDE_SHARE = 0.2  # each side of the nose holds at least this share of the eye pixels


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing the module for its
  functions clashes with no other script's flags)."""
  flags.DEFINE_string("model", "facegan", "Generator spec (`jaxdissect.zoo`): the face GAN.")
  flags.DEFINE_integer("n", 1000, "Images.")
  flags.DEFINE_integer("seed", 1, "z seed (1: the dissection's images).")
  flags.DEFINE_integer("batch_size", 50, "Images per segmenter call.")
  flags.DEFINE_float("face_threshold", 0.5, "Face score below which an image is `unknown`.")
  flags.DEFINE_integer("sheet", 16, "Images on the PNG sheet (the first ones of the sample).")
  flags.DEFINE_integer("tile", 128, "Pixel size of each image on the sheet.")
  flags.DEFINE_string("out", "docs/facegan-faceparts", "Output path without extension: writes "
                      "OUT.json and OUT.png.")
  flags.DEFINE_bool("quiet", False, "No progress bar.")


def _centroid(mask: np.ndarray) -> tuple[float, float] | None:
  """(x, y) of a `[H, W]` mask's pixel centres, None if empty."""
  ys, xs = np.nonzero(mask)
  if not len(xs):
    return None
  return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def image_checks(labels: np.ndarray) -> dict[str, bool | None]:
  """The geometry checks of one confident image's `[H, W]` labels (`ports.faceparts` order):
  True / False, or None where a needed part is missing (None for `mouth_within_lips` also when
  the image shows no mouth interior)."""
  from ports import faceparts  # pylint: disable=g-import-not-at-top
  label = faceparts.LABEL
  eye_mask = (labels == label["eye"]) | (labels == label["iris"])
  lips_mask = (labels == label["lips"]) | (labels == label["mouth"])
  brow_mask = labels == label["brow"]
  eye, lips, brow = _centroid(eye_mask), _centroid(lips_mask), _centroid(brow_mask)
  nose = _centroid(labels == label["nose"])
  out: dict[str, bool | None] = {}
  out["eyes_above_lips"] = None if eye is None or lips is None else eye[1] < lips[1]
  out["brows_above_eyes"] = None if brow is None or eye is None else brow[1] < eye[1]
  out["nose_between_eyes_and_lips"] = (None if None in (eye, nose, lips)
                                       else eye[1] < nose[1] < lips[1])
  sides = None
  if eye is not None and nose is not None:
    columns = np.arange(labels.shape[1]) + 0.5
    left, right = eye_mask & (columns < nose[0]), eye_mask & (columns > nose[0])
    total = eye_mask.sum()
    sides = (_centroid(left), _centroid(right)) if min(left.sum(), right.sum()) >= (
        SIDE_SHARE * total) else None
    out["eyes_either_side_of_nose"] = sides is not None
  else:
    out["eyes_either_side_of_nose"] = None
  if sides is not None:
    (lx, ly), (rx, ry) = sides
    out["eyes_level"] = abs(ly - ry) < abs(rx - lx) / 2
    out["lips_under_nose"] = None if lips is None else abs(lips[0] - nose[0]) < abs(rx - lx) / 2
  else:
    out["eyes_level"] = out["lips_under_nose"] = (False if eye is not None and nose is not None
                                                  else None)
  skin_rows = np.nonzero((labels == label["skin"]).any(axis=1))[0]
  out["head_above_face"] = (bool((labels[:skin_rows[0]] == label["head"]).any())
                            if len(skin_rows) else None)
  mouth = labels == label["mouth"]
  if mouth.any() and lips is not None:
    ys, xs = np.nonzero(lips_mask)
    mx, my = _centroid(mouth)
    out["mouth_within_lips"] = bool(xs.min() <= mx <= xs.max() + 1 and
                                    ys.min() <= my <= ys.max() + 1)
  else:
    out["mouth_within_lips"] = None
  return {k: (None if v is None else bool(v)) for k, v in out.items()}


CHECKS = ("eyes_above_lips", "brows_above_eyes", "nose_between_eyes_and_lips",
          "eyes_either_side_of_nose", "eyes_level", "lips_under_nose", "head_above_face",
          "mouth_within_lips")


def summarize(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
  """Everything measured on `[N, H, W]` labels and `[N]` face scores (see the module docstring)."""
  from ports import faceparts  # pylint: disable=g-import-not-at-top
  n = len(labels)
  confident = scores >= threshold
  unknown_labels = np.all(labels == faceparts.LABEL["unknown"], axis=(1, 2))
  if not np.array_equal(unknown_labels, ~confident):
    raise ValueError("labels and face scores disagree on which images have a face")
  k = int(confident.sum())
  face = labels[confident]
  parts = {}
  for name in PARTS:
    has = face == faceparts.LABEL[name]
    parts[name] = {"pixel_share": float(has.mean()) if k else 0.0,
                   "images_with_part": float(has.any(axis=(1, 2)).mean()) if k else 0.0}
  checks = {name: {"passed": 0, "failed": 0, "missing": 0} for name in CHECKS}
  for image in face:
    for name, ok in image_checks(image).items():
      checks[name]["passed" if ok else "missing" if ok is None else "failed"] += 1
  for name, c in checks.items():
    if name == "mouth_within_lips":
      c["of"] = c["passed"] + c["failed"]
      c["note"] = "of the confident images that show a mouth interior"
    else:
      c["of"] = k
    c["share"] = c["passed"] / c["of"] if c["of"] else None
  edges = np.round(np.linspace(0.0, 1.0, 11), 1)
  return {
      "images": n, "confident": k, "share_confident": k / n if n else 0.0,
      "face_score": {"threshold": threshold, "mean": float(scores.mean()),
                     "quantiles": {str(q): float(np.quantile(scores, q))
                                   for q in (0.01, 0.05, 0.1, 0.25, 0.5)},
                     "histogram": {"edges": edges.tolist(),
                                   "counts": np.histogram(scores, edges)[0].tolist()}},
      "unknown_images": [int(i) for i in np.nonzero(~confident)[0]],
      "parts": parts, "checks": checks,
      "gate": {"check": GATE[0], "at_least": GATE[1],
               "share": checks[GATE[0]]["share"],
               "holds": (checks[GATE[0]]["share"] or 0.0) >= GATE[1]}}


def colour_map(labels: np.ndarray) -> np.ndarray:
  """`[..., 3]` uint8 colours of `ports.faceparts` labels."""
  from ports import faceparts  # pylint: disable=g-import-not-at-top
  table = np.asarray([PALETTE[name] for name, _ in faceparts.CONCEPTS], np.uint8)
  return table[labels]


def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1 has one bitmap size
    return ImageFont.load_default()


def sheet(images: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float,
          tile: int = 128, columns: int = 8) -> Image.Image:
  """Each image (`[N, H, W, 3]` in [-1, 1]) above its part map, `columns` per row, a legend."""
  from ports import faceparts  # pylint: disable=g-import-not-at-top
  n = len(images)
  rows = -(-n // columns)
  gap, legend_h = 4, 28
  width = columns * tile + (columns - 1) * gap
  height = rows * (2 * tile + gap) + (rows - 1) * gap * 2 + legend_h
  out = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(out)
  font = _font(max(10, tile // 9))
  pixels = np.clip((images + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
  maps = colour_map(labels)
  for i in range(n):
    x = (i % columns) * (tile + gap)
    y = (i // columns) * (2 * tile + 3 * gap)
    out.paste(Image.fromarray(pixels[i]).resize((tile, tile), Image.NEAREST), (x, y))
    out.paste(Image.fromarray(maps[i]).resize((tile, tile), Image.NEAREST), (x, y + tile + gap))
    text = f"{scores[i]:.2f}" if scores[i] >= threshold else f"{scores[i]:.2f} no face"
    draw.text((x + 3, y + tile + gap + 2), text, fill=(255, 255, 0), font=font,
              stroke_width=1, stroke_fill=(0, 0, 0))
  x, y = 0, height - legend_h + 6
  for name, _ in faceparts.CONCEPTS[1:]:
    draw.rectangle((x, y, x + 14, y + 14), fill=PALETTE[name], outline=(0, 0, 0))
    draw.text((x + 18, y), name, fill=(0, 0, 0), font=font)
    x += 24 + int(draw.textlength(name, font=font)) + 10
  return out


def label_sample(gen: Any, seg_models: Any, n: int, seed: int, batch_size: int,
                 threshold: float, quiet: bool = True, keep: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labels `[n, H, W]` int32, face scores `[n]`, the first `keep` images) of `n` images of
  z seed `seed`, in batches (the last padded, so one compiled function serves all)."""
  from ports import faceparts  # pylint: disable=g-import-not-at-top
  seg = faceparts.make_segmenter(seg_models, threshold=threshold)

  @jax.jit
  def run(gen_params, seg_params, z):
    images, _ = gen.apply_fn(gen_params, z)
    g = faceparts.geometry(seg_models, seg_params, images)
    _, labels = faceparts.rasterize(g, seg_params["softness"], seg_params["threshold"])
    return images, labels[..., 0], g.face_score

  labels, scores, kept = [], [], []
  source = latents.seeded(seed)
  batches = source.batches(n, batch_size, gen.latent_shape)
  for _, z in progress(batches, n, desc="faceparts", unit="img", scale=batch_size,
                       quiet=quiet):
    m = len(z)
    z = latents.pad_rows(np.asarray(z), batch_size)
    images, lab, score = run(gen.params, seg.params, jnp.asarray(z))
    labels.append(np.asarray(lab)[:m])
    scores.append(np.asarray(score)[:m])
    if sum(len(k) for k in kept) < keep:
      kept.append(np.asarray(images)[:m])
  images = np.concatenate(kept)[:keep] if kept else np.zeros((0,))
  return np.concatenate(labels), np.concatenate(scores), images


def run() -> dict[str, Any]:
  """Everything `main` does; returns the JSON document written. Raises UsageError."""
  f = flags.FLAGS
  for name in ("n", "batch_size", "tile"):
    if getattr(f, name) < 1:
      raise UsageError(f"--{name}={getattr(f, name)}; expected a positive integer")
  if not 0 <= f.sheet <= f.n:
    raise UsageError(f"--sheet={f.sheet}; expected 0..--n ({f.n})")
  if not 0.0 < f.face_threshold < 1.0:
    raise UsageError(f"--face_threshold={f.face_threshold}; expected a face score in (0, 1)")
  try:
    gen = zoo.load_generator(f.model)
  except zoo.SpecError as e:
    raise UsageError(str(e)) from None
  from ports import faceparts  # pylint: disable=g-import-not-at-top
  try:
    seg_models = faceparts.load_models()
  except ValueError as e:
    raise UsageError(str(e)) from None
  start = time.perf_counter()
  labels, scores, images = label_sample(gen, seg_models, f.n, f.seed, f.batch_size,
                                        f.face_threshold, quiet=f.quiet, keep=f.sheet)
  seconds = time.perf_counter() - start
  doc = {"model": f.model, "segmenter": "faceparts",
         "settings": {"n": f.n, "seed": f.seed, "batch_size": f.batch_size,
                      "face_threshold": f.face_threshold, "sheet": f.sheet},
         **summarize(labels, scores, f.face_threshold),
         "seconds": round(seconds, 1), "images_per_second": round(f.n / seconds, 2)}
  stem = f.out
  os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
  cli.write_json(stem + ".json", doc)
  if f.sheet:
    sheet(images, labels[:f.sheet], scores[:f.sheet], f.face_threshold, f.tile).save(
        stem + ".png", optimize=True)
  _log(doc)
  logging.info("wrote %s.json%s", stem, " and .png" if f.sheet else "")
  return doc


def _log(doc: dict[str, Any]) -> None:
  logging.info("%d of %d images (%.1f%%) have a confident face (score >= %.2f); %.1f images/s",
               doc["confident"], doc["images"], 100 * doc["share_confident"],
               doc["face_score"]["threshold"], doc["images_per_second"])
  for name, c in doc["checks"].items():
    share = "n/a" if c["share"] is None else f"{100 * c['share']:.1f}%"
    logging.info("%s: %d of %d (%s), %d missing a part", name, c["passed"], c["of"], share,
                 c["missing"])
  parts = ", ".join(f"{k} {100 * v['pixel_share']:.1f}%" for k, v in doc["parts"].items())
  logging.info("pixel shares of confident images: %s", parts)


def main(argv: Sequence[str]) -> None:
  cli.run_main("faceparts_quality", run, list(argv))


if __name__ == "__main__":
  define_flags()
  app.run(main)
