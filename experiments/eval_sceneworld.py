"""Checks the scene GAN against rendered scenes, as seen by the scene segmenter.

Commands (about 1 min on 2 CPU cores each):

  python -m experiments.eval_sceneworld --n 2000
  python -m experiments.eval_sceneworld --n 2000 --arch stylegan2

The GAN is what jaxdissect dissects by default, so it must draw the scene world's concepts about
as often and as large as the world itself does; the segmenter is the instrument that says what
was drawn. On `n` generated images (`standard_z(n, seed, zdim)`) and `n` rendered ones
(`render(n, real_seed)`), both segmented by the shipped segmenter, it measures:

  * pixel fractions `p[c]`, c = 1..12: the mean over images of the fraction of an image's pixels
    that have concept c in either label channel (object or part);
  * `tv`: the total-variation distance `0.5 * sum_c |p_gen[c] / P_gen - p_real[c] / P_real|`
    with `P = sum_{c=1..12} p[c]` (every pixel has one object, parts count again, so `P` is 1
    plus the part coverage; normalising makes each vector a distribution over concepts);
  * image frequency `f[c]`: the fraction of images in which at least `--min_pixels` pixels have
    concept c, and the ratio `f_gen[c] / f_real[c]`;
  * the Frechet distance between Gaussian fits of the segmenter's pooled features of generated
    and real images, next to the same distance between two disjoint real sets (`render(n,
    real_seed, start=n)`), the noise floor at this `n`.

Quality gates: `tv <= 0.05` and every ratio `>= 0.5`. `--arch stylegan2` measures the scene
StyleGAN2 (`jaxdissect.sceneworld.stylegan`) against the same gates. Writes `--out` (JSON, default
`jaxdissect/sceneworld/weights/eval.json`, `stylegan2_eval.json` for the StyleGAN2), an 8x8 grid
of generated images to `--samples` (`samples.png`, `stylegan2_samples.png`), and
logs a Markdown table. Exits 1 if a gate fails (`--nofail_on_gate` to only report).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from experiments.progress import progress
from jaxdissect.realism import frechet_distance
from jaxdissect.sceneworld import gan, render, stylegan
from jaxdissect.sceneworld import segmenter as scene_segmenter
from jaxdissect.sceneworld.render import CONCEPTS
from jaxdissect.zsample import z_batches

_WEIGHTS = os.path.dirname(gan.DEFAULT_PATH)

_N = flags.DEFINE_integer("n", 2000, "Generated images, and real images per real set.")
_SEED = flags.DEFINE_integer("seed", 1, "standard_z seed of the generated images.")
_REAL_SEED = flags.DEFINE_integer("real_seed", 2, "render seed of the real images.")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
_MIN_PIXELS = flags.DEFINE_integer("min_pixels", 4, "Pixels a concept needs to count as present.")
_ARCH = flags.DEFINE_enum("arch", "proggan", ["proggan", "stylegan2"], "Which scene GAN.")
_GENERATOR = flags.DEFINE_string("generator", None, "Generator checkpoint (default: the shipped "
                                 "weights of --arch).")
_SEGMENTER = flags.DEFINE_string("segmenter", scene_segmenter.DEFAULT_PATH, "Segmenter checkpoint.")
_OUT = flags.DEFINE_string("out", None, "JSON output (default weights/eval.json, "
                           "weights/stylegan2_eval.json).")
_SAMPLES = flags.DEFINE_string("samples", None, "PNG grid of 64 generated images (default "
                               "weights/samples.png, weights/stylegan2_samples.png).")
_FAIL = flags.DEFINE_boolean("fail_on_gate", True, "Exit 1 when a quality gate fails.")
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bar.")

TV_GATE = 0.05
RATIO_GATE = 0.5
NUM_CONCEPTS = len(CONCEPTS)
# --arch: (loader of a checkpoint path, default path, default output prefix).
_ARCHS = {"proggan": (gan.load_generator, gan.DEFAULT_PATH, ""),
          "stylegan2": (stylegan.load_generator, stylegan.DEFAULT_PATH, "stylegan2_")}


def concept_pixel_counts(labels: jax.Array) -> jax.Array:
  """`[B, K]` number of pixels of each image having concept k in any channel of `labels`."""
  concepts = jnp.arange(NUM_CONCEPTS, dtype=labels.dtype)
  has = jnp.any(labels[..., None] == concepts, axis=-2)        # [B, H, W, K]
  return jnp.sum(has, axis=(1, 2), dtype=jnp.int32)


def make_measure(seg_params: Any) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
  """A jitted `images -> (pixel counts [B, K], segmenter features [B, F])`."""
  @jax.jit
  def measure(images):
    labels = scene_segmenter.label_fn(seg_params, images)
    return concept_pixel_counts(labels), scene_segmenter.features_fn(seg_params, images)
  return measure


def measure_stream(batches, measure, n: int, desc: str, quiet: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Concatenated pixel counts `[n, K]` and features `[n, F]` over an iterator of image batches."""
  counts, feats = [], []
  for images in progress(batches, total=n, desc=desc, unit="img", scale=_BATCH.value,
                         quiet=quiet):
    c, f = measure(images)
    counts.append(np.asarray(c))
    feats.append(np.asarray(f, np.float64))
  return np.concatenate(counts), np.concatenate(feats)


def pixel_fractions(counts: np.ndarray, pixels: int) -> np.ndarray:
  """`[K]` mean over images of the fraction of pixels having each concept."""
  return counts.mean(axis=0) / pixels


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
  """`0.5 * L1` between `p[1:]` and `q[1:]`, each normalised to sum to 1."""
  p, q = p[1:] / p[1:].sum(), q[1:] / q[1:].sum()
  return float(0.5 * np.abs(p - q).sum())


def image_frequency(counts: np.ndarray, min_pixels: int) -> np.ndarray:
  """`[K]` fraction of images with at least `min_pixels` pixels of each concept."""
  return (counts >= min_pixels).mean(axis=0)


def generated_batches(generator, n: int, seed: int, batch_size: int):
  """Yields generated image batches for `standard_z(n, seed, generator.zdim)` in order."""
  apply = jax.jit(lambda p, z: generator.apply_fn(p, z)[0])
  for _, z in z_batches(n, seed, batch_size, generator.zdim):
    yield apply(generator.params, z)


def real_batches(n: int, seed: int, start: int, batch_size: int, truth: list[np.ndarray]):
  """Yields rendered image batches `start .. start + n` of `seed`; appends their exact labels'
  pixel counts to `truth`."""
  for s in range(0, n, batch_size):
    images, labels = render(min(batch_size, n - s), seed=seed, start=start + s)
    truth.append(np.asarray(concept_pixel_counts(jnp.asarray(labels))))
    yield images


def summarize(gen: np.ndarray, real: np.ndarray, truth: np.ndarray, pixels: int,
              min_pixels: int) -> dict[str, Any]:
  """The per-concept figures and the TV distance from pixel counts `[n, K]` of each set."""
  p_gen, p_real, p_true = (pixel_fractions(c, pixels) for c in (gen, real, truth))
  f_gen, f_real, f_true = (image_frequency(c, min_pixels) for c in (gen, real, truth))
  concepts = []
  for k in range(1, NUM_CONCEPTS):
    ratio = float(f_gen[k] / f_real[k]) if f_real[k] > 0 else float("nan")
    concepts.append({"index": k, "name": CONCEPTS[k][0], "category": CONCEPTS[k][1],
                     "pixel_fraction_real": float(p_real[k]),
                     "pixel_fraction_generated": float(p_gen[k]),
                     "pixel_fraction_real_exact_labels": float(p_true[k]),
                     "frequency_real": float(f_real[k]), "frequency_generated": float(f_gen[k]),
                     "frequency_real_exact_labels": float(f_true[k]),
                     "frequency_ratio": ratio})
  return {"concepts": concepts, "tv_distance": tv_distance(p_gen, p_real),
          "tv_distance_segmented_vs_exact_real": tv_distance(p_real, p_true),
          "min_frequency_ratio": min(c["frequency_ratio"] for c in concepts)}


def markdown_table(result: dict[str, Any]) -> str:
  """The per-concept figures and the headline numbers as Markdown."""
  lines = ["| concept | px frac real (exact) | px frac real | px frac gen | freq real (exact) | "
           "freq real | freq gen | gen/real |", "|---|---|---|---|---|---|---|---|"]
  for c in result["concepts"]:
    lines.append(f"| {c['name']} | {c['pixel_fraction_real_exact_labels']:.4f} | "
                 f"{c['pixel_fraction_real']:.4f} | {c['pixel_fraction_generated']:.4f} | "
                 f"{c['frequency_real_exact_labels']:.3f} | {c['frequency_real']:.3f} | "
                 f"{c['frequency_generated']:.3f} | {c['frequency_ratio']:.2f} |")
  fd = result["frechet"]
  lines += ["", f"TV distance (gate <= {TV_GATE}): {result['tv_distance']:.4f}; min frequency "
            f"ratio (gate >= {RATIO_GATE}): {result['min_frequency_ratio']:.3f}; Frechet "
            f"distance gen-vs-real {fd['generated_vs_real']:.4g}, real-vs-real "
            f"{fd['real_vs_real']:.4g} (ratio {fd['ratio']:.1f})"]
  return "\n".join(lines)


def main(argv):
  del argv
  n, bs = _N.value, _BATCH.value
  load, default_path, prefix = _ARCHS[_ARCH.value]
  path = _GENERATOR.value or default_path
  out = _OUT.value or os.path.join(_WEIGHTS, f"{prefix}eval.json")
  samples = _SAMPLES.value or os.path.join(_WEIGHTS, f"{prefix}samples.png")
  generator = load(path)
  seg = scene_segmenter.load_segmenter(_SEGMENTER.value)
  measure = make_measure(seg.params)
  truth: list[np.ndarray] = []
  gen_counts, gen_feats = measure_stream(generated_batches(generator, n, _SEED.value, bs),
                                         measure, n, "generated", _QUIET.value)
  real_counts, real_feats = measure_stream(real_batches(n, _REAL_SEED.value, 0, bs, truth),
                                           measure, n, "real", _QUIET.value)
  _, real2_feats = measure_stream(real_batches(n, _REAL_SEED.value, n, bs, []), measure, n,
                                  "real (2nd set)", _QUIET.value)
  result = summarize(gen_counts, real_counts, np.concatenate(truth), 64 * 64, _MIN_PIXELS.value)
  fd_gen = frechet_distance(gen_feats, real_feats)
  fd_real = frechet_distance(real2_feats, real_feats)
  result["frechet"] = {"generated_vs_real": fd_gen, "real_vs_real": fd_real,
                       "ratio": fd_gen / fd_real if fd_real > 0 else float("inf"),
                       "features": f"segmenter features_fn, {gen_feats.shape[1]} dims"}
  result["gates"] = {"tv_distance_max": TV_GATE, "frequency_ratio_min": RATIO_GATE,
                     "tv_ok": result["tv_distance"] <= TV_GATE,
                     "frequency_ok": result["min_frequency_ratio"] >= RATIO_GATE}
  result["settings"] = {"n": n, "seed": _SEED.value, "real_seed": _REAL_SEED.value,
                        "min_pixels": _MIN_PIXELS.value, "arch": _ARCH.value, "generator": path,
                        "segmenter": _SEGMENTER.value,
                        "generated": "generator(standard_z(n, seed, zdim))",
                        "real": "render(n, real_seed); second real set render(n, real_seed, "
                                "start=n)"}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  z = next(z_batches(64, _SEED.value, 64, generator.zdim))[1]
  grid = gan.image_grid(np.asarray(generator.apply_fn(generator.params, z)[0]))
  Image.fromarray(grid).save(samples, optimize=True)
  logging.info("scene %s vs rendered scenes, n=%d:\n%s\nwrote %s and %s", _ARCH.value, n,
               markdown_table(result), out, samples)
  if _FAIL.value and not (result["gates"]["tv_ok"] and result["gates"]["frequency_ok"]):
    raise SystemExit(f"quality gate failed: {result['gates']}")


if __name__ == "__main__":
  app.run(main)
