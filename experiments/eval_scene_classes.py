"""How hard are the scene classes? Linear models on exact concept areas and on colour histograms.

Command (about 3 minutes of CPU time on 2 cores; 6 minutes of wall time while sharing them):

  python -m experiments.eval_scene_classes --out results/scene_classes.json

A classifier of `sceneworld.scenes` should have to look at objects and their layout, not at a
colour. This script measures both sides with multinomial logistic regression (full batch, Adam,
features standardized on the training set, a small L2 penalty), trained on `--n_train` scenes of
`--seed` and tested on `--n_test` scenes of `--test_seed`:
  * a ceiling from the exact labels: the fraction of the image each concept covers (`areas`);
    those and the fraction of columns and of rows each concept reaches (`areas_extent`: how wide
    and tall it spreads); the fractions in each cell of a 4x4 grid (`areas_grid4`, the layout);
    and, as the one nonlinear model, a 256-unit ReLU layer under the logistic regression on grid
    and extent features together (`areas_grid4_extent_mlp`);
  * colour baselines: a 4x4x4 RGB histogram (`colour_hist4`) and an 8x8x8 one (`colour_hist8`),
    with the lighting change of the scenes (what the classifier sees) and without it
    (`..._unlit`, render's colours).
It writes one JSON with every setting, and per feature set the train and held-out accuracy and the
held-out accuracy per class.

Figures of the default run (held-out accuracy, 3000 scenes of seed 999, chance 0.111): areas
0.953 (lakeside and riverside are the confusions: same areas, different shapes); areas_extent
0.998; areas_grid4 0.955; areas_grid4_extent_mlp 0.997; colour_hist4 0.573 and colour_hist8 0.688
with the lighting change (0.829 and 0.875 without it). The trained VGG (`train_scene_classifier`)
sees only pixels and reaches the accuracy recorded in `weights/classifier_eval.json`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect.sceneworld import scenes
from jaxdissect.sceneworld.concepts import CONCEPTS

_N_TRAIN = flags.DEFINE_integer("n_train", 8000, "Training scenes.")
_N_TEST = flags.DEFINE_integer("n_test", 3000, "Held-out scenes.")
_SEED = flags.DEFINE_integer("seed", 1000, "Sample of the training scenes.")
_TEST_SEED = flags.DEFINE_integer("test_seed", 999, "Sample of the held-out scenes.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Full-batch Adam steps per model.")
_LR = flags.DEFINE_float("lr", 0.05, "Adam learning rate.")
_L2 = flags.DEFINE_float("l2", 1e-4, "L2 penalty on the weights.")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "ReLU units of the one nonlinear ceiling model.")
_OUT = flags.DEFINE_string("out", "results/scene_classes.json", "Where the JSON goes.")

NUM_CONCEPTS = len(CONCEPTS)


def area_features(labels: np.ndarray, grid: int = 1) -> np.ndarray:
  """`[n, grid * grid * K]`: per cell of a `grid x grid` split, the fraction of its pixels that
  have each concept (in any label channel)."""
  n, h, w, _ = labels.shape
  onehot = np.zeros((n, h, w, NUM_CONCEPTS), np.float32)
  for d in range(labels.shape[-1]):
    np.put_along_axis(onehot, labels[..., d:d + 1], 1.0, axis=-1)
  onehot[..., 0] = 0
  cells = onehot.reshape(n, grid, h // grid, grid, w // grid, NUM_CONCEPTS).mean(axis=(2, 4))
  return cells.reshape(n, -1)


def extent_features(labels: np.ndarray) -> np.ndarray:
  """`[n, 2K]`: the fraction of the image's columns, then of its rows, that hold each concept (how
  wide and how tall it spreads: a river crosses the image, a pond does not)."""
  onehot = np.stack([(labels == c).any(axis=-1) for c in range(NUM_CONCEPTS)], axis=-1)
  return np.concatenate([onehot.any(axis=1).mean(axis=1), onehot.any(axis=2).mean(axis=1)],
                        axis=1).astype(np.float32)


def colour_features(images: np.ndarray, bins: int) -> np.ndarray:
  """`[n, bins**3]`: the normalized joint RGB histogram of each image."""
  q = np.clip(((images + 1) * 0.5 * bins).astype(np.int32), 0, bins - 1)
  code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
  code = code.reshape(len(images), -1)
  hist = np.zeros((len(images), bins ** 3), np.float32)
  np.add.at(hist, (np.arange(len(images))[:, None], code), 1.0)
  return hist / code.shape[1]


def fit_logistic(x: np.ndarray, y: np.ndarray, k: int, steps: int, lr: float, l2: float,
                 hidden: int = 0) -> Callable[[np.ndarray], np.ndarray]:
  """Trains multinomial logistic regression (on a ReLU layer of `hidden` units if `hidden`);
  returns `predict(x) -> [n]` class indices."""
  mean, std = x.mean(0), x.std(0) + 1e-6
  xs = jnp.asarray((x - mean) / std)
  width = hidden or x.shape[1]
  params = {"w": jnp.zeros((width, k)), "b": jnp.zeros(k)}
  if hidden:
    scale = np.sqrt(2 / x.shape[1])
    params.update(h=jax.random.normal(jax.random.key(0), (x.shape[1], hidden)) * scale,
                  c=jnp.zeros(hidden))
  opt = optax.adam(lr / 10 if hidden else lr)

  def logits_of(p, z):
    return (jax.nn.relu(z @ p["h"] + p["c"]) if hidden else z) @ p["w"] + p["b"]

  def loss(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_of(p, xs), jnp.asarray(y)).mean()
    return ce + l2 * sum(jnp.sum(p[w] ** 2) for w in ("w", "h") if w in p)

  @jax.jit
  def run(p):
    def step(carry, _):
      p, s = carry
      g = jax.grad(loss)(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
    return p

  params = run(params)

  def predict(z: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.argmax(logits_of(params, jnp.asarray((z - mean) / std)), axis=1))

  return predict


def score(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
          k: int, hidden: int = 0) -> dict[str, Any]:
  """Train and held-out accuracy (and per class) of logistic regression on one feature set."""
  predict = fit_logistic(*train, k, _STEPS.value, _LR.value, _L2.value, hidden)
  hit_train = predict(train[0]) == train[1]
  hit_test = predict(test[0]) == test[1]
  per_class = {c: float(hit_test[test[1] == i].mean()) for i, c in enumerate(scenes.CLASSES)}
  logging.info("%-16s train %.3f  held-out %.3f", name, hit_train.mean(), hit_test.mean())
  return {"features": int(train[0].shape[1]), "hidden_units": hidden,
          "train_accuracy": float(hit_train.mean()),
          "heldout_accuracy": float(hit_test.mean()), "heldout_per_class": per_class}


def main(argv):
  del argv
  t0 = time.perf_counter()
  k = len(scenes.CLASSES)
  data = {}
  for split, n, seed in (("train", _N_TRAIN.value, _SEED.value),
                         ("test", _N_TEST.value, _TEST_SEED.value)):
    images, labels, classes = scenes.render_scenes(n, seed)
    unlit, _, _ = scenes.render_scenes(n, seed, lighting=False)
    areas, extent, grid = (area_features(labels), extent_features(labels),
                           area_features(labels, 4))
    data[split] = {"areas": areas, "areas_extent": np.concatenate([areas, extent], axis=1),
                   "areas_grid4": grid,
                   "colour_hist4": colour_features(images, 4),
                   "colour_hist8": colour_features(images, 8),
                   "colour_hist4_unlit": colour_features(unlit, 4),
                   "colour_hist8_unlit": colour_features(unlit, 8), "y": classes}
  results = {name: score(name, (data["train"][name], data["train"]["y"]),
                         (data["test"][name], data["test"]["y"]), k)
             for name in data["train"] if name != "y"}
  mlp = {split: (np.concatenate([d["areas_grid4"], d["areas_extent"]], axis=1), d["y"])
         for split, d in data.items()}
  results["areas_grid4_extent_mlp"] = score("areas_grid4_extent_mlp", mlp["train"], mlp["test"],
                                            k, _HIDDEN.value)
  out = {"settings": {"n_train": _N_TRAIN.value, "n_test": _N_TEST.value, "seed": _SEED.value,
                      "test_seed": _TEST_SEED.value, "steps": _STEPS.value, "lr": _LR.value,
                      "l2": _L2.value, "hidden": _HIDDEN.value,
                      "model": "multinomial logistic regression (Adam, full batch)"},
         "classes": list(scenes.CLASSES), "chance": 1 / k, "results": results,
         "seconds": round(time.perf_counter() - t0, 1)}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(out, f, indent=2)
  logging.info("wrote %s (%.0f s)", _OUT.value, out["seconds"])


if __name__ == "__main__":
  app.run(main)
