"""Artifact units: units whose top images look least real, and what ablating them does.

Command (about 3 minutes on 2 CPU cores for the scene GAN's layer4):

  python -m experiments.artifacts --dissection results/dissect-sceneworld --layer layer4

Every image is described by a feature vector of the dissection's segmenter (`--features`:
`bottleneck`, the scene segmenter's pooled bottleneck, or `layout`, any segmenter's class
probabilities averaged over a 2x2 grid). Real images come from the scene world's renderer
(`--real_n` scenes of render seed `--real_seed`). For each unit of `--layer`, its `--top` images
with the largest activation among `--n` generated ones (z seed `--seed`) are compared with the
real scenes by the Frechet distance of their features (`jaxdissect.realism`): the larger, the
less realistic what the unit makes. Then, on `--eval_n` held-out images (z seed `--eval_seed`),
it ablates the `k` worst units for each k in `--ablate` and measures the Frechet distance of the
whole sample to the real scenes, next to ablating k randomly chosen units (`--control_seed`) and
to a second real sample (the floor). Writes `artifacts-<layer>.json` (scores, ranking, every
distance) and `artifacts-<layer>.svg` into the dissection folder. Whatever happens is reported:
the distance may fall, or not.
"""

from __future__ import annotations

from typing import Callable

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from experiments.cli import UsageError
from experiments.dissection_io import header, open_dissection, pick_layer, result_stem
from experiments.progress import progress_hook
from jaxdissect import intervene, realism
from jaxdissect.latents import seeded
from jaxdissect.model import Generator, Segmenter, probabilities_of
from jaxdissect.report import svg

_DISSECTION = flags.DEFINE_string("dissection", "results/dissect-sceneworld",
                                  "Output folder of experiments.dissect.")
_LAYER = flags.DEFINE_string("layer", "layer4", "Layer whose units are scored.")
_FEATURES = flags.DEFINE_enum("features", "bottleneck", ["bottleneck", "layout"],
                              "Image features: the scene segmenter's bottleneck, or any "
                              "segmenter's 2x2 layout of class probabilities.")
_N = flags.DEFINE_integer("n", 2000, "Generated images scored per unit.")
_SEED = flags.DEFINE_integer("seed", 8, "z seed of the scored images.")
_TOP = flags.DEFINE_integer("top", 100, "Top images per unit compared with real scenes.")
_REAL_N = flags.DEFINE_integer("real_n", 2000, "Real (rendered) scenes.")
_REAL_SEED = flags.DEFINE_integer("real_seed", 7, "Render seed of the real scenes.")
_EVAL_N = flags.DEFINE_integer("eval_n", 1000, "Held-out images for the ablation check.")
_EVAL_SEED = flags.DEFINE_integer("eval_seed", 9, "z seed of the held-out images.")
_ABLATE = flags.DEFINE_list("ablate", ["0", "1", "2", "5", "10", "20"],
                            "Numbers of worst units ablated.")
_CONTROL_SEED = flags.DEFINE_integer("control_seed", 0, "Seed of the random-units control.")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars.")


def feature_fn(kind: str, model: str, seg: Segmenter) -> Callable[[jax.Array], jax.Array]:
  """`images [B, H, W, 3] -> [B, F]` features of the chosen kind (jitted)."""
  if kind == "bottleneck":
    if model != "sceneworld":
      raise UsageError(f"--features bottleneck needs the scene segmenter; the dissection used "
                       f"{model!r}; pass --features layout")
    from jaxdissect.sceneworld import segmenter as scene  # pylint: disable=g-import-not-at-top
    return jax.jit(lambda images: scene.features_fn(seg.params, images))
  segment_fn = cli.checked(probabilities_of, seg, "--features layout")
  return jax.jit(lambda images: realism.layout_features(segment_fn(seg.params, images)))


def real_features(features: Callable, n: int, seed: int, batch_size: int) -> np.ndarray:
  """Features of `n` rendered scene-world scenes of render seed `seed`."""
  from jaxdissect.sceneworld.render import render  # pylint: disable=g-import-not-at-top
  out = []
  for start in range(0, n, batch_size):
    images, _ = render(min(batch_size, n - start), seed=seed, start=start)
    out.append(np.asarray(features(jnp.asarray(images))))
  return np.concatenate(out)


def scored_sample(gen: Generator, layer: str, features: Callable, n: int, seed: int,
                  batch_size: int, progress: Callable[[str, int, int], None]
                  ) -> tuple[np.ndarray, np.ndarray]:
  """`([n, C] spatial max of each unit, [n, F] features)` of the first n images of `seed`."""
  @jax.jit
  def forward(z):
    image, acts = gen.apply_fn(gen.params, z, None, capture=(layer,))
    return jnp.max(acts[layer], axis=(1, 2)), image

  maxima, feats = [], []
  for first, z in seeded(seed).batches(n, batch_size, gen.latent_shape):
    m, image = forward(jnp.asarray(z))
    maxima.append(np.asarray(m))
    feats.append(np.asarray(features(image)))
    progress("score", first + len(z), n)
  return np.concatenate(maxima), np.concatenate(feats)


def ablated_features(gen: Generator, layer: str, features: Callable, units: np.ndarray,
                     num_units: int, n: int, seed: int, batch_size: int
                     ) -> np.ndarray:
  """Features of the first n images of `seed` with `units` ablated everywhere."""
  edit = intervene.ablation(jnp.asarray(units, jnp.int32), num_units)
  image_fn = jax.jit(lambda z: gen.apply_fn(gen.params, z, {layer: edit}, capture=())[0])
  return np.concatenate([np.asarray(features(image_fn(jnp.asarray(z))))
                         for _, z in seeded(seed).batches(n, batch_size, gen.latent_shape)])


def _counts(num_units: int) -> list[int]:
  counts = []
  for item in _ABLATE.value:
    try:
      k = int(item)
    except ValueError:
      raise UsageError(f"--ablate: {item!r} is not a number of units") from None
    if not 0 <= k <= num_units:
      raise UsageError(f"--ablate: {k} units asked for; the layer has {num_units}")
    counts.append(k)
  return sorted(set(counts))


def run_artifacts() -> str:
  dissection, models = open_dissection(_DISSECTION.value)
  layer = pick_layer(dissection, "", _LAYER.value)
  for name, value in (("n", _N.value), ("real_n", _REAL_N.value), ("eval_n", _EVAL_N.value),
                      ("batch_size", _BATCH.value)):
    if value < 2:
      raise UsageError(f"--{name}={value}; expected at least 2")
  if not 2 <= _TOP.value <= _N.value:
    raise UsageError(f"--top={_TOP.value}; expected between 2 and --n={_N.value}")
  num_units = layer.shape[2]
  counts = _counts(num_units)
  gen, seg = models.generator, models.segmenter
  features = feature_fn(_FEATURES.value, dissection.segmenter, seg)
  real = real_features(features, _REAL_N.value, _REAL_SEED.value, _BATCH.value)
  floor = realism.frechet_distance(
      real_features(features, _REAL_N.value, _REAL_SEED.value + 1, _BATCH.value), real)
  maxima, feats = scored_sample(gen, layer.layer, features, _N.value, _SEED.value, _BATCH.value,
                                progress_hook(_QUIET.value))
  scores = realism.unit_scores(maxima, feats, real, _TOP.value)
  worst = np.argsort(-scores, kind="stable")
  control = np.random.RandomState(_CONTROL_SEED.value).permutation(num_units)
  common = dict(num_units=num_units, n=_EVAL_N.value, seed=_EVAL_SEED.value,
                batch_size=_BATCH.value)
  check = {"worst": [], "random": []}
  for k in counts:
    for name, order in (("worst", worst), ("random", control)):
      fd = realism.frechet_distance(
          ablated_features(gen, layer.layer, features, order[:k], **common), real)
      check[name].append(fd)
      logging.info("ablating %d %s units: Frechet distance to real %.4g", k, name, fd)
  out = {**header(dissection, layer),
         "settings": {"features": _FEATURES.value, "n": _N.value, "seed": _SEED.value,
                      "top": _TOP.value, "real_n": _REAL_N.value, "real_seed": _REAL_SEED.value,
                      "eval_n": _EVAL_N.value, "eval_seed": _EVAL_SEED.value,
                      "control_seed": _CONTROL_SEED.value},
         "unit_scores": scores.tolist(), "ranking": [int(u) for u in worst],
         "labels": {int(u): layer.units[u].label for u in worst[:20]},
         "real_vs_real": floor,
         "ablation": {"units": counts, "frechet_worst": check["worst"],
                      "frechet_random": check["random"],
                      "worst_units": [int(u) for u in worst[:max(counts)]],
                      "random_units": [int(u) for u in control[:max(counts)]]}}
  stem = result_stem(_DISSECTION.value, "artifacts", layer.layer)
  cli.write_json(stem + ".json", out)
  zeros = [0.0] * len(counts)
  series = {name: (counts, [fd / floor for fd in check[key]], zeros)
            for name, key in (("worst units", "worst"), ("random units", "random"))}
  with open(stem + ".svg", "w") as f:
    f.write(svg.line_chart(series, "units ablated", "Frechet distance / real-vs-real",
                           f"Ablating artifact units of {layer.layer} ({dissection.model})"))
  logging.info("worst units by score: %s", ", ".join(f"{u}:{scores[u]:.3g}" for u in worst[:10]))
  logging.info("wrote %s.json and .svg", stem)
  return stem


def main(argv):
  cli.run_main("artifacts", run_artifacts, argv)


if __name__ == "__main__":
  app.run(main)
