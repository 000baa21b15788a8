"""Running a generator or segmenter in a lower precision (bfloat16) with float32 at the boundary.

On GPUs and TPUs the networks are most of a dissection's cost, and bfloat16 halves their memory
traffic and runs on the matrix units; the statistics must stay exact, so they keep seeing
float32 activations, images and probabilities. These wrappers cast the parameters once and the
inputs on every call, and cast what comes out back to float32, so any model that follows the
protocol (and computes in the dtype of its inputs and parameters, as Flax modules do) runs in
the chosen precision with no change to its code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdissect.classifier import Classifier
from jaxdissect.errors import check_choice
from jaxdissect.model import Generator, Segmenter

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def cast_floats(tree: Any, dtype: Any) -> Any:
  """`tree` with every floating-point leaf cast to `dtype` (integer leaves untouched)."""
  def cast(x):
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)


def _dtype(name: str) -> Any:
  check_choice("dtype", name, DTYPES)
  return DTYPES[name]


def generator_in(gen: Generator, dtype: str) -> Generator:
  """`gen` computing in `dtype` ("float32" returns it unchanged); image and activations come
  back as float32."""
  if dtype == "float32":
    return gen
  low = _dtype(dtype)

  def apply_fn(params, z, edits=None, capture=None):
    edits = None if edits is None else cast_floats(edits, low)
    image, acts = gen.apply_fn(params, jnp.asarray(z).astype(low), edits, capture)
    return image.astype(jnp.float32), {k: v.astype(jnp.float32) for k, v in acts.items()}

  return gen._replace(apply_fn=apply_fn, params=cast_floats(gen.params, low))


def classifier_in(classifier: Classifier, dtype: str) -> Classifier:
  """`classifier` computing in `dtype`; logits and activations come back as float32. (Cast it
  before `imagesource.as_generator`, so a dataset's label channels stay exact float32.)"""
  return generator_in(classifier, dtype)  # the same protocol: apply_fn and params


def segmenter_in(seg: Segmenter, dtype: str) -> Segmenter:
  """`seg` computing in `dtype`; probabilities come back as float32, labels as they were."""
  if dtype == "float32":
    return seg
  low = _dtype(dtype)

  def segment_fn(params, images):
    return seg.segment_fn(params, jnp.asarray(images).astype(low)).astype(jnp.float32)

  def label_fn(params, images):
    return seg.label_fn(params, jnp.asarray(images).astype(low))

  return Segmenter(None if seg.segment_fn is None else segment_fn, label_fn,
                   cast_floats(seg.params, low), seg.concepts)
