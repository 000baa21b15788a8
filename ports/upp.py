"""The unified-parsing segmenter (UPerNet on a ResNet-50) that GAN Dissection labels units with.

GAN Dissection's scene results are measured with CSAIL's "unified perceptual parsing" network
(`upp-resnet50-upernet`): one model that predicts objects, their parts and materials. To reproduce
those numbers the port must compute what the original computes, so it follows netdissect's
`UnifiedParsingSegmenter` (`segmenter.py`) and `upsegmodel` exactly:

  * input: RGB in [-1, 1] -> [0, 255], channels flipped to BGR, minus (102.98, 115.95, 122.77);
  * for each size `s` in `segsizes`: the image as is if it is `s x s`, else its adaptive average
    pool to `s x s`; encoder = the non-dilated deep-stem ResNet-50 (`ports.resnet`); decoder =
    UPerNet whose pyramid pooling uses Precise RoI pooling (`prroi_pool`) over the whole map, a
    feature pyramid, a fusion conv and three heads (object and part on the fused map, material on
    the finest pyramid level); logits resized bilinearly to the output size, softmax per head,
    parts per owner object; the probabilities of all sizes summed;
  * labels (`label_fn`, the original's `segment_batch`): channel 0 the argmax object, channel 1
    the argmax material (renumbered), channel 2 the argmax part of the owner object predicted at
    the pixel; with `quad`, channels 3 and 4 split every connected object region into top/bottom
    and left/right halves of its bounding box.

Params are `{"encoder": ..., "decoder": ...}`; a leaf's path joined with dots, with `kernel`,
`scale`, `bias`, `mean`, `var` read as `weight`, `weight`, `bias`, `running_mean`, `running_var`,
is its PyTorch key (see `ports.semseg`). Layout is NHWC.

This module builds the segmenter and loads and converts checkpoints. The network lives in
`ports.upp_net`, the label vocabulary and its numbering in `ports.upp_labels`, inference and the
soft output (`segment_fn`) in `ports.upp_predict` and the quad split in `ports.upp_quad`; their
public names are importable from here as before.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, Sequence

import flax.traverse_util
import jax
import jax.numpy as jnp

from jaxdissect.model import Segmenter
from ports import pth
from ports import semseg
from ports.upp_labels import (CATEGORIES, DEFAULT_PART_OWNERS, QUAD_SUFFIXES, LabelSpace, Owner,
                              check_labels, label_space, read_labels)
from ports.upp_net import (FPN_DIM, POOL_SCALES, PPM_CHANNELS, Logits, UPerNetUPP, network,
                           prroi_pool, prroi_weights)
from ports.upp_predict import (BGR_MEAN, Prediction, check_options, labels_from_prediction,
                               normalize, part_labels, predict, probabilities_from_prediction)
from ports.upp_quad import connected_components, quad_split

__all__ = [
    "BGR_MEAN", "CATEGORIES", "DECODER_FILE", "DEFAULT_PART_OWNERS", "ENCODER_FILE", "FPN_DIM",
    "IGNORED_PREFIXES", "LABELS_FILE", "POOL_SCALES", "PPM_CHANNELS", "QUAD_SUFFIXES",
    "LabelSpace", "Logits", "Owner", "Prediction", "UPerNetUPP", "connected_components",
    "convert", "head_sizes", "label_space", "labels_from_prediction", "load", "make_segmenter",
    "network", "normalize", "part_labels", "predict", "probabilities_from_prediction",
    "prroi_pool", "prroi_weights", "quad_split", "read_labels", "state_dict_shapes",
]

ENCODER_FILE = "encoder_epoch_40.pth"
DECODER_FILE = "decoder_epoch_40.pth"
LABELS_FILE = "labels.json"

# Checkpoint keys read by nothing here (the original loads with strict=False): the scene
# classifier, an ImageNet classifier a full ResNet state dict would carry, and the BatchNorm
# buffers `ports.semseg` drops (`num_batches_tracked` and synchronized-BN extras).
IGNORED_PREFIXES = {"encoder": ("fc.",), "decoder": ("scene_head.",)}


# --- The segmenter --------------------------------------------------------------------------------

def make_segmenter(params: Any, labels: Mapping[str, Any], *, segsizes: Sequence[int] = (256,),
                   quad: bool = True, all_parts: bool = False, downsample: int = 2,
                   original_quad_quirk: bool = False,
                   precision: str = semseg.DEFAULT_PRECISION) -> Segmenter:
  """The segmenter protocol object for converted `params` and their `labels.json` dict.

  `segment_fn(params, images)` gives the soft `[B, H/ds, W/ds, K]` label probabilities and
  `label_fn` the `[B, H/ds, W/ds, D]` int32 labels (D = 5 with `quad`, else 3) of `[B, H, W, 3]`
  images in [-1, 1]; `concepts[i]` is label i's `(name, category)`. Defaults are GAN
  Dissection's (`segsizes=[256]`, quad, parts of sky/building/person, downsample 2);
  `original_quad_quirk` leaves each image's last component without quad labels, as netdissect
  does; `precision` is the convolutions' matmul precision (see `predict`).
  """
  space = label_space(labels, quad=quad, all_parts=all_parts)
  sizes = check_options(segsizes, downsample)
  _check_heads(params, space)

  options = {"segsizes": sizes, "downsample": downsample, "precision": precision}

  def label_fn(params: Any, images: jax.Array) -> jax.Array:
    pred = predict(params, images, space, **options)
    return labels_from_prediction(pred, space, original_quad_quirk=original_quad_quirk)

  def segment_fn(params: Any, images: jax.Array) -> jax.Array:
    pred = predict(params, images, space, **options)
    quads = None
    if quad:
      objects = jnp.argmax(pred.object, -1).astype(jnp.int32)
      quads = quad_split(objects, space.num_objects, original_quad_quirk=original_quad_quirk)
    return probabilities_from_prediction(pred, space, len(sizes), quads)

  return Segmenter(segment_fn, label_fn, jax.tree.map(jnp.asarray, params), space.concepts)


def _check_heads(params: Any, space: LabelSpace) -> None:
  """Raises ValueError if the params' head sizes disagree with the label set."""
  dec = params["decoder"]
  found = tuple(int(dec[f"{h}_head.1"]["bias"].shape[0]) for h in ("object", "part", "material"))
  if found != space.heads:
    raise ValueError(f"params have object/part/material heads of {found} classes but the labels "
                     f"describe {space.heads}")


def load(directory: str, *, encoder_file: str = ENCODER_FILE, decoder_file: str = DECODER_FILE,
         labels_file: str = LABELS_FILE, **kwargs: Any) -> Segmenter:
  """The segmenter stored in `directory` (the original's `upp-resnet50-upernet` folder).

  Reads the two `.pth` files without torch and `labels.json`; `kwargs` go to `make_segmenter`.
  """
  labels = read_labels(os.path.join(directory, labels_file))
  params = convert(pth.load_state_dict(os.path.join(directory, encoder_file)),
                   pth.load_state_dict(os.path.join(directory, decoder_file)), labels)
  return make_segmenter(params, labels, **kwargs)


# --- Checkpoint conversion ------------------------------------------------------------------------

def head_sizes(labels: Mapping[str, Any]) -> tuple[int, int, int]:
  """Output channels of the object, part and material heads for `labels` (each with '-')."""
  check_labels(labels)
  return (len(labels["object"]), sum(len(p) for p in labels["object_part"].values()),
          len(labels["material"]))


@functools.lru_cache(maxsize=None)
def _template(heads: tuple[int, int, int]) -> Mapping[str, Any]:
  """Parameter shapes of the network with these head sizes (abstract; nothing is computed)."""
  image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(network(*heads).init, jax.random.key(0), image)["params"]


def state_dict_shapes(labels: Mapping[str, Any]) -> dict[str, dict[str, tuple[int, ...]]]:
  """The PyTorch keys and shapes `convert` reads: `{"encoder": {key: shape}, "decoder": ...}`.

  Any other key of a checkpoint must start with an `IGNORED_PREFIXES` entry or be an unused
  BatchNorm buffer.
  """
  layout = semseg.torch_layout
  return {part: dict(layout(path, leaf.shape)
                     for path, leaf in flax.traverse_util.flatten_dict(tree).items())
          for part, tree in _template(head_sizes(labels)).items()}


def convert(encoder_sd: Mapping[str, Any], decoder_sd: Mapping[str, Any],
            labels: Mapping[str, Any]) -> dict[str, Any]:
  """Unified-parsing encoder and decoder state dicts (numpy arrays) to this port's params.

  Every parameter of the ResNet-50 encoder and of the decoder's pyramid pooling, feature pyramid,
  fusion and object/part/material heads must be present with its shape (head sizes come from
  `labels`). Ignored: keys starting with `IGNORED_PREFIXES` (`fc.` in the encoder, `scene_head.`
  in the decoder), BatchNorm `num_batches_tracked` and synchronized-BN buffers, and a leading
  `module.`. Raises ValueError naming any missing, unexpected or mis-shaped key.
  """
  template = _template(head_sizes(labels))
  convert_part = semseg.convert_part
  return {
      "encoder": convert_part(encoder_sd, template["encoder"], "UPP resnet50 encoder",
                              IGNORED_PREFIXES["encoder"]),
      "decoder": convert_part(decoder_sd, template["decoder"], "UPP upernet decoder",
                              IGNORED_PREFIXES["decoder"]),
  }
