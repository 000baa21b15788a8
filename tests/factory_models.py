"""Factories for `package.module:factory` model specs in tests (`tests.factory_models:...`).

Small enough to build in milliseconds; importable from the repo root, as scripts run with
`python -m experiments.<script> --model tests.factory_models:make_generator`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdissect import colorseg
from jaxdissect.classifier import Classifier, check_images
from jaxdissect.model import Generator, Segmenter, apply_edit, check_edits, check_layers
from ports import proggan


def make_generator(width: int = 8, seed: int = 0) -> Generator:
  """A random ProgGAN with `width` channels everywhere: latents `[width]`, images 8x8."""
  if not isinstance(width, int) or width < 1:
    raise ValueError(f"width is {width!r}, expected a positive int")
  return proggan.make_generator([width, width, width], jax.random.key(seed))


def make_segmenter(downsample: int = 1) -> Segmenter:
  """The weightless colour segmenter."""
  return colorseg.make_segmenter(downsample)


def not_a_model() -> dict[str, int]:
  """Not a model: for the wrong-return-type error."""
  return {"width": 8}


NOT_CALLABLE = 3


CLASSIFIER_LAYERS = ("conv1", "conv2", "fc")


def make_classifier(width: int = 4, size: int = 16, classes: int = 3, seed: int = 0
                    ) -> Classifier:
  """A random classifier of `size`x`size` images: conv1 (full size), conv2 (stride 2, half
  size), both ReLU, then fc on the mean of conv2 (`[B, 1, 1, classes]`, the logits)."""
  if not isinstance(size, int) or size < 2 or size % 2:
    raise ValueError(f"size is {size!r}, expected an even int >= 2")
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = {"conv1": jax.random.normal(k1, (3, 3, 3, width)) / 3.0,
            "conv2": jax.random.normal(k2, (3, 3, width, width)) / (3.0 * width ** 0.5),
            "bias": jnp.full((width,), 0.1), "fc": jax.random.normal(k3, (width, classes))}
  shape = (size, size, 3)

  def conv(x, w, stride):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def apply_fn(params, images, edits=None, capture=None):
    images = check_images(images, shape)
    edits, names = check_edits(edits, CLASSIFIER_LAYERS), check_layers(capture, CLASSIFIER_LAYERS)
    acts = {}

    def tap(name, x):
      if name in names:
        acts[name] = x
      return apply_edit(x, edits.get(name), name)

    x = tap("conv1", jax.nn.relu(conv(images, params["conv1"], 1)))
    x = tap("conv2", jax.nn.relu(conv(x, params["conv2"], 2) + params["bias"]))
    logits = tap("fc", jnp.mean(x, axis=(1, 2), keepdims=True) @ params["fc"])
    return logits[:, 0, 0], acts

  return Classifier(apply_fn, params, CLASSIFIER_LAYERS, tuple(f"class{i}" for i in range(classes)),
                    shape)


def face_gan_images(n: int, seed: int) -> jax.Array:
  """`n` images of the trained face GAN (`gan-face-generate`), in [-1, 1]; skips the calling
  test when the package or its weights are not installed."""
  import pytest  # pylint: disable=g-import-not-at-top (only the face tests need it)
  facegan = pytest.importorskip("ports.facegan")
  from jaxdissect import zsample  # pylint: disable=g-import-not-at-top
  try:
    gen = facegan.load()
  except (ValueError, OSError) as e:
    pytest.skip(f"the face GAN's weights are not installed: {e}")
  images, _ = jax.jit(gen.apply_fn)(gen.params, zsample.standard_z(n, seed=seed, dim=facegan.ZDIM))
  return images
