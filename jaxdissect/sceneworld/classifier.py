"""The scene world's classifier: a small VGG trained on the scene classes of `scenes`.

The PNAS paper dissects a VGG-16 trained on Places365 and ablates units of its `conv5_3` to see
which units each scene class needs. This is the same experiment in miniature and in a world with
exact labels: a VGG-style network (five stages of 3x3 convs with ReLU, named `conv1_1` ..
`conv5_3` as in VGG-16, max pooling between the first four stages, then a global average pool
and one linear layer) that tells the classes of `scenes.CLASSES` apart on 64x64 scenes. Stage 5
keeps stage 4's resolution (8x8, not VGG's 4x4 at this image size) so that `conv5_3` units still
have maps worth segmenting. It is small enough to train in under an hour on 2 CPU cores
(`experiments/train_scene_classifier.py`); the shipped float32 parameters live in
`weights/classifier` and its held-out accuracy in `weights/classifier_eval.json`.

It implements the classifier protocol: `apply_fn(params, images, edits=None, capture=None) ->
(logits, acts)`, activations captured after each conv's ReLU and before its edit.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdissect import checkpoint
from jaxdissect.classifier import Classifier, check_images
from jaxdissect.model import ApplyFn, Edit, apply_edit, check_edits, check_layers
from jaxdissect.sceneworld.scenes import CLASSES

DEFAULT_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights",
                                 "classifier")
EVAL_PATH: str = DEFAULT_PATH + "_eval.json"
REMAKE: str = "python -m experiments.train_scene_classifier"

IMAGE_SHAPE: tuple[int, int, int] = (64, 64, 3)
# (convs, channels) of each stage; a 2x2 max pool follows stages 1 .. POOLED_STAGES.
STAGES: tuple[tuple[int, int], ...] = ((1, 16), (2, 32), (2, 64), (2, 96), (3, 128))
POOLED_STAGES = 3


def layer_names(stages: Sequence[tuple[int, int]] = STAGES) -> tuple[str, ...]:
  """`conv<stage>_<i>` for every conv, in order (`conv1_1` .. `conv5_3` for `STAGES`)."""
  return tuple(f"conv{s}_{i}" for s, (convs, _) in enumerate(stages, 1)
               for i in range(1, convs + 1))


LAYERS: tuple[str, ...] = layer_names()
_HE = nn.initializers.he_normal()


class SceneVGG(nn.Module):
  """VGG-style convs over `[B, H, W, 3]` images in [-1, 1]; returns logits and captured acts."""

  stages: tuple[tuple[int, int], ...] = STAGES
  pooled: int = POOLED_STAGES
  num_classes: int = len(CLASSES)

  @nn.compact
  def __call__(self, x: jax.Array, edits: Mapping[str, Edit], capture: tuple[str, ...]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    acts = {}
    for s, (convs, width) in enumerate(self.stages, 1):
      for i in range(1, convs + 1):
        name = f"conv{s}_{i}"
        x = nn.relu(nn.Conv(width, (3, 3), kernel_init=_HE, name=name)(x))
        if name in capture:
          acts[name] = x
        x = apply_edit(x, edits.get(name), name)
      if s <= self.pooled:
        x = nn.max_pool(x, (2, 2), (2, 2))
    logits = nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))
    return logits, acts


def make_apply_fn(stages: Sequence[tuple[int, int]] = STAGES, pooled: int = POOLED_STAGES
                  ) -> ApplyFn:
  """The protocol `apply_fn(params, images, edits=None, capture=None) -> (logits, acts)`."""
  module = SceneVGG(tuple(stages), pooled, len(CLASSES))
  layers = layer_names(stages)

  def apply_fn(params: Any, images: jax.Array, edits: Mapping[str, Edit] | None = None,
               capture: Sequence[str] | str | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits `[B, len(CLASSES)]` of `images [B, 64, 64, 3]` and the captured activations."""
    images = check_images(images, IMAGE_SHAPE)
    edits = check_edits(edits, layers)
    names = check_layers(capture, layers)
    return module.apply({"params": params}, images, edits, names)

  return apply_fn


def init_params(key: jax.Array, stages: Sequence[tuple[int, int]] = STAGES,
                pooled: int = POOLED_STAGES) -> Any:
  """Fresh parameters (He-normal conv kernels for the ReLUs, zero biases)."""
  return _init(key, tuple(map(tuple, stages)), pooled)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init(key: jax.Array, stages: tuple[tuple[int, int], ...], pooled: int) -> Any:
  """One compiled initialisation (eagerly, every kernel's sampler would compile on its own)."""
  module = SceneVGG(stages, pooled, len(CLASSES))
  return module.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), {}, ())["params"]


def make_classifier(params: Any, stages: Sequence[tuple[int, int]] = STAGES,
                    pooled: int = POOLED_STAGES) -> Classifier:
  """The protocol `Classifier` for `params`."""
  return Classifier(make_apply_fn(stages, pooled), params, layer_names(stages), CLASSES,
                    IMAGE_SHAPE)


def load_classifier(path: str = DEFAULT_PATH) -> Classifier:
  """The trained scene classifier saved at `path`; raises `checkpoint.CheckpointError` naming the
  path and the command that regenerates it when the checkpoint is missing or unreadable."""
  like = jax.eval_shape(init_params, jax.random.key(0))
  return make_classifier(checkpoint.load(path, like, remake=REMAKE))
