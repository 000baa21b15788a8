"""The scene world's default segmenter: a small Flax U-Net trained on rendered scenes.

Dissection scores a unit by how well its activation map overlaps a concept's segmentation, so the
segmenter *is* the measuring instrument: its errors become every unit's errors. Scenes from
`render` have exact labels, which lets us train a segmenter that is nearly exact too (held-out mean
IoU and per-concept floors are recorded in `weights/segmenter_eval.json`) and then use it on
generated images, where no labels exist.

The network (`SceneUNet`) is a four-level U-Net whose downsampling folds pixels into channels
rather than pooling them away, with a full-resolution head (windows are 2x3 pixels and trunks two
pixels wide, so nothing may be lost on the way down) and two outputs, as in the original's unified
object/part segmenter:
  * an object head: a softmax over the 8 objects (concept indices 1..8), exactly one per pixel;
  * a part head: a softmax over {no part, roof, window, door, trunk} (concepts 0, 9, 10, 11, 12).

`segment_fn` returns `[B, H, W, 13]` per-concept probabilities in `CONCEPTS` order:
  * columns 1..8 are the object softmax (they sum to 1 at every pixel);
  * columns 9..12 are the part softmax for roof, window, door and trunk, and column 0 is the part
    softmax's "no part" probability, so columns {0, 9..12} also sum to 1. Column 0 is therefore
    P(no part), not P(no label at all): every pixel has an object.
`label_fn` returns `[B, H, W, 2]` int32: channel 0 the argmax object's concept index (1..8),
channel 1 the argmax part's concept index (9..12) or 0 for no part, matching `render`'s labels.

The trained weights ship in `weights/segmenter` (float32 parameters only) and are made by
`python -m experiments.train_scene_segmenter`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import checkpoint
from jaxdissect.model import Segmenter
from jaxdissect.sceneworld.render import CONCEPTS, render

DEFAULT_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights",
                                 "segmenter")
EVAL_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights",
                              "segmenter_eval.json")
REMAKE: str = "python -m experiments.train_scene_segmenter"

WIDTHS: tuple[int, ...] = (24, 48, 64, 96)   # channels at 1/2, 1/4, 1/8, 1/16 of the image size
STEM_WIDTH = 8                              # 3x3 full-resolution filters on the raw pixels
FULL_WIDTH = 16                             # channels of the full-resolution head
NUM_OBJECTS = 8                             # object logits i -> concept 1 + i
PART_CONCEPTS: tuple[int, ...] = (0, 9, 10, 11, 12)   # part logits i -> concept index
NUM_PARTS = len(PART_CONCEPTS)
NUM_CONCEPTS = len(CONCEPTS)


def space_to_depth(x: jax.Array) -> jax.Array:
  """`[B, H, W, C] -> [B, H/2, W/2, 4C]`: every 2x2 block of pixels becomes one cell."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def depth_to_space(x: jax.Array) -> jax.Array:
  """`[B, H, W, 4C] -> [B, 2H, 2W, C]`, the inverse of `space_to_depth`."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c // 4)


class _PixelDense(nn.Module):
  """A per-pixel linear map `[..., C_in] -> [..., features]`.

  Applied as one 2-D matmul: XLA's CPU gradient of a dot over several batch axes is several times
  slower than that of the same matmul on a flattened `[N, C]` operand.
  """

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Dense(self.features)(x.reshape(-1, x.shape[-1]))
    return y.reshape(x.shape[:-1] + (self.features,))


def _conv(width: int) -> nn.Conv:
  return nn.Conv(width, (3, 3))


class SceneUNet(nn.Module):
  """U-Net over `[B, H, W, 3]` images in [-1, 1] (H, W divisible by 2**len(widths)).

  Every level halves the resolution by folding 2x2 blocks into channels (`space_to_depth`, then a
  per-pixel linear map), so no pixel is dropped on the way down, and doubles it on the way up by
  the inverse (`depth_to_space`), adding the encoder's map of that level (a U-Net skip). The head
  works at full resolution: the finest decoder map unfolded to one feature vector per pixel,
  concatenated with the pixel's own colour and a few 3x3 filters of the raw image (the
  full-resolution skip that lets 2x3-pixel windows and 2-pixel trunks keep exact edges), then two
  per-pixel layers. Strided folds rather than max
  pooling, and no full-resolution 3x3 convolutions, keep a training step cheap on CPU.

  `__call__` returns object logits `[B, H, W, 8]` and part logits `[B, H, W, 5]`; `features`
  returns the spatially pooled bottleneck `[B, widths[-1]]`.
  """

  widths: Sequence[int] = WIDTHS
  stem_width: int = STEM_WIDTH
  full_width: int = FULL_WIDTH

  def setup(self):
    self.stem = nn.Conv(self.stem_width, (3, 3))
    self.fold = [_PixelDense(w) for w in self.widths]
    self.down = [[_conv(w), _conv(w)] for w in self.widths]
    self.unfold = [_PixelDense(4 * w) for w in self.widths[:-1]]
    self.up = [_conv(w) for w in self.widths[:-1]]
    self.unfold_full = _PixelDense(4 * self.full_width)
    self.full = _PixelDense(self.full_width)
    self.heads = _PixelDense(NUM_OBJECTS + NUM_PARTS)

  def _encode(self, x: jax.Array) -> list[jax.Array]:
    """The encoder's maps at every level, finest (1/2 resolution) first."""
    skips = []
    for fold, convs in zip(self.fold, self.down):
      x = nn.relu(fold(space_to_depth(x)))
      for conv in convs:
        x = nn.relu(conv(x))
      skips.append(x)
    return skips

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    skips = self._encode(x)
    y = skips[-1]
    for unfold, conv, skip in zip(self.unfold[::-1], self.up[::-1], skips[-2::-1]):
      y = nn.relu(conv(depth_to_space(unfold(y)) + skip))
    y = jnp.concatenate([nn.relu(depth_to_space(self.unfold_full(y))), nn.relu(self.stem(x)), x],
                        axis=-1)
    logits = self.heads(nn.relu(self.full(y)))
    return logits[..., :NUM_OBJECTS], logits[..., NUM_OBJECTS:]

  def features(self, x: jax.Array) -> jax.Array:
    return jnp.mean(self._encode(x)[-1], axis=(1, 2))


_NET = SceneUNet()
_PART_TO_CONCEPT = np.array(PART_CONCEPTS, np.int32)


def _check_images(images: jax.Array) -> None:
  """Raises ValueError unless `images` is `[B, H, W, 3]` with H, W divisible by the pooling."""
  step = 2 ** len(WIDTHS)
  shape = tuple(images.shape)
  if len(shape) != 4 or shape[-1] != 3 or shape[1] % step or shape[2] % step:
    raise ValueError(f"images have shape {list(shape)}, expected [B, H, W, 3] in [-1, 1] with H "
                     f"and W multiples of {step} (the scene world renders 64x64)")


def init_params(key: jax.Array) -> Any:
  """Fresh parameters of the segmenter network (a pytree of float32 arrays)."""
  return _NET.init(key, jnp.zeros((1, 64, 64, 3), jnp.float32))["params"]


def logits_fn(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Object logits `[B, H, W, 8]` and part logits `[B, H, W, 5]` of `images [B, H, W, 3]`."""
  _check_images(images)
  return _NET.apply({"params": params}, images)


def segment_fn(params: Any, images: jax.Array) -> jax.Array:
  """Per-concept probabilities `[B, H, W, 13]` (see the module docstring for column 0)."""
  obj, part = logits_fn(params, images)
  obj, part = jax.nn.softmax(obj, axis=-1), jax.nn.softmax(part, axis=-1)
  return jnp.concatenate([part[..., :1], obj, part[..., 1:]], axis=-1)


def label_fn(params: Any, images: jax.Array) -> jax.Array:
  """Labels `[B, H, W, 2]` int32: argmax object concept (1..8), argmax part concept or 0."""
  obj, part = logits_fn(params, images)
  objects = jnp.argmax(obj, axis=-1).astype(jnp.int32) + 1
  parts = jnp.asarray(_PART_TO_CONCEPT)[jnp.argmax(part, axis=-1)]
  return jnp.stack([objects, parts], axis=-1)


def features_fn(params: Any, images: jax.Array) -> jax.Array:
  """Pooled bottleneck features `[B, WIDTHS[-1]]` = `[B, 96]` (for Frechet distances between
  real and generated scene sets)."""
  _check_images(images)
  return _NET.apply({"params": params}, images, method=SceneUNet.features)


def make_segmenter(params: Any) -> Segmenter:
  """The segmenter protocol object for `params`."""
  return Segmenter(segment_fn=segment_fn, label_fn=label_fn, params=params, concepts=CONCEPTS)


def load_segmenter(path: str = DEFAULT_PATH) -> Segmenter:
  """The trained segmenter saved at `path`; raises `checkpoint.CheckpointError` naming the path
  and the command that regenerates it when the checkpoint is missing or unreadable."""
  like = jax.eval_shape(init_params, jax.random.key(0))
  params = checkpoint.load(path, like, remake=REMAKE)
  return make_segmenter(params)


@jax.jit
def _tally(params: Any, images: jax.Array, truth: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-concept intersection and union pixel counts `[K]` int32 of one batch."""
  return _intersection_union(label_fn(params, images), truth)


def _intersection_union(pred: jax.Array, truth: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Counts for `[B, H, W, D]` label maps; a pixel has c if any channel equals c."""
  concepts = jnp.arange(NUM_CONCEPTS, dtype=jnp.int32)
  has_pred = jnp.any(pred[..., None] == concepts, axis=-2)     # [B, H, W, K]
  has_true = jnp.any(truth[..., None] == concepts, axis=-2)
  inter = jnp.sum(has_pred & has_true, axis=(0, 1, 2), dtype=jnp.int32)
  union = jnp.sum(has_pred | has_true, axis=(0, 1, 2), dtype=jnp.int32)
  return inter, union


def iou_counts(segmenter: Segmenter, n: int, seed: int, batch_size: int = 100
               ) -> tuple[np.ndarray, np.ndarray]:
  """Intersection and union pixel counts `[13]` int64 over scenes `0 .. n` of sample `seed`."""
  if segmenter.concepts != CONCEPTS:
    raise ValueError("mean_iou measures against the scene world's labels; the segmenter's "
                     f"concepts {segmenter.concepts} are not sceneworld.CONCEPTS")
  fn = _tally if segmenter.label_fn is label_fn else jax.jit(
      lambda p, x, t: _intersection_union(segmenter.label_fn(p, x), t))
  inter = np.zeros(NUM_CONCEPTS, np.int64)
  union = np.zeros(NUM_CONCEPTS, np.int64)
  for start in range(0, n, batch_size):
    images, truth = render(min(batch_size, n - start), seed=seed, start=start)
    i, u = fn(segmenter.params, images, truth)
    inter += np.asarray(i)
    union += np.asarray(u)
  return inter, union


def mean_iou(segmenter: Segmenter, n: int, seed: int, batch_size: int = 100
             ) -> tuple[np.ndarray, float]:
  """IoU per concept `[13]` and its mean over concepts 1..12, on scenes `0 .. n` of `seed`.

  Measured at the rendered 64x64 resolution against the exact labels, with intersections and
  unions summed over all pixels of all images; a pixel has concept c (in the prediction or the
  truth) if any label channel equals c. Entry 0 ('-') is NaN: no pixel lacks an object in either.
  A concept absent from both prediction and truth is NaN too and left out of the mean.
  """
  inter, union = iou_counts(segmenter, n, seed, batch_size)
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
  iou[0] = np.nan
  return iou, float(np.nanmean(iou[1:]))
