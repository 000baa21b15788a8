"""Style channels dissected like units: StyleSpace's gradient maps as capturable layers.

A style channel (one entry of a StyleGAN2 layer's style vector, `b16.conv0.style` unit c) has no
spatial extent: it is one number per image. StyleSpace (Wu, Lischinski and Shechtman, CVPR 2021)
localises it by its *gradient map*: where in the image changing the channel changes the picture.
`with_style_maps` wraps a generator that captures and edits style layers as `[B, 1, 1, C]`
vectors into one whose layer `NAME` (the same name) captures, per image, the map

    G[b, y, x, c] = sum over RGB of | d image[b, y, x, :] / d s[b, c] |

(`s` the layer's style vector as it enters the convolution, i.e. after any edit of it), average-
pooled to `size` x `size` when asked. The maps are forward-mode derivatives (`jax.linearize` once
per layer, then one Jacobian-vector product per channel with a one-hot tangent, `chunk` channels
at a time), so a layer of C channels costs about C / 2 to C forward passes per image. Everything
the dissection engine does with a feature map (quantile thresholds, upsampling, IoU against the
segmenter's concepts, labels, top images, the report) then applies to the maps unchanged: a style
channel is labelled with the concept whose pixels best coincide with the top `q` of its gradient
magnitudes. Edits of a style layer pass through to the wrapped generator (they edit the style
values themselves), so ablating "unit c of `b16.conv0.style`" sets style channel c.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxdissect.errors import check_choice
from jaxdissect.model import Edit, Generator, apply_edit, check_layers

DESCRIPTION = ("style channel c of layer L is dissected by its gradient map "
               "sum_rgb |d image / d s_c| (StyleSpace), thresholded and compared with the "
               "segmenter's concepts like a feature map")


def style_shapes(gen: Generator, names: Sequence[str]) -> dict[str, int]:
  """The channel count of each style layer in `names`, checked by an abstract call of `gen`:
  ValueError unless `gen.apply_fn` captures each as `[B, 1, 1, C]` (and it is not already one of
  `gen.layers`)."""
  names = tuple(names)
  for name in names:
    if name in gen.layers:
      raise ValueError(f"{name} is a feature-map layer of the generator, not a style layer")
  z = jax.ShapeDtypeStruct((1, *gen.latent_shape), jnp.float32)
  try:
    _, acts = jax.eval_shape(lambda z: gen.apply_fn(gen.params, z, capture=names), z)
  except ValueError as e:
    raise ValueError(f"layer(s) {', '.join(names)}: not all are feature-map layers "
                     f"({', '.join(gen.layers)}) or style layers of the generator: {e}") from None
  out = {}
  for name in names:
    shape = tuple(acts[name].shape)
    if len(shape) != 4 or shape[1:3] != (1, 1):
      raise ValueError(f"{name} is captured as {list(shape)}, not as a style vector "
                       "[B, 1, 1, C]")
    out[name] = int(shape[3])
  return out


def gradient_maps(gen: Generator, params: Any, z: jax.Array, layer: str, style: jax.Array,
                  edits: Mapping[str, Edit] | None = None, *, chunk: int = 16,
                  size: int | None = None) -> jax.Array:
  """`[B, H, W, C]`: per image and style channel c of `layer`, `sum_rgb |d image / d s_c|` at
  the style values `style` (`[B, 1, 1, C]`, as they enter the layer), the other `edits` held.

  `chunk` channels' Jacobian-vector products run at once (memory ~ chunk x one image's
  tangents); `size` average-pools the maps to `size` x `size` (it must divide the image size).
  """
  edits = dict(edits or {})

  def image_of(s):
    return gen.apply_fn(params, z, {**edits, layer: Edit(1.0, s)})[0]

  image, tangent_of = jax.linearize(image_of, style)
  b, h, w, _ = image.shape
  _check_size(size, h, w)
  out_h, out_w = (h, w) if size is None else (size, size)
  c = style.shape[-1]
  chunk = max(1, min(int(chunk), c))
  count = -(-c // chunk)

  def one(channel):
    onehot = jax.nn.one_hot(channel, c, dtype=style.dtype)
    tangent = style * 0 + onehot  # derived from `style`, so it varies as it does under shard_map
    d = jnp.sum(jnp.abs(tangent_of(tangent)), axis=-1)
    return d.reshape(b, out_h, h // out_h, out_w, w // out_w).mean(axis=(2, 4))

  channels = jnp.arange(count * chunk).reshape(count, chunk) % c  # pad by repeating channels
  maps = jax.lax.map(jax.vmap(one), channels)  # [count, chunk, B, h, w]
  maps = maps.reshape(count * chunk, b, out_h, out_w)[:c]
  return jnp.transpose(maps, (1, 2, 3, 0)).astype(jnp.float32)


def _check_size(size: int | None, h: int, w: int) -> None:
  """ValueError unless `size` (None: the image's) average-pools an `h` x `w` map evenly."""
  if size is not None and (size < 1 or h % size or w % size):
    raise ValueError(f"style map size {size} does not divide the image size {h}x{w}")


def with_style_maps(gen: Generator, style_layers: Sequence[str], *, chunk: int = 16,
                    size: int | None = None) -> Generator:
  """`gen` with `style_layers` (names it captures as `[B, 1, 1, C]` style vectors) added to its
  layers as capturable `[B, H, W, C]` gradient maps (`gradient_maps`; H = W = `size`, or the
  image's). Other captures, the image and every edit are `gen`'s own. ValueError for a name
  that is not a style layer of `gen`."""
  style_layers = tuple(style_layers)
  style_shapes(gen, style_layers)
  z = jax.ShapeDtypeStruct((1, *gen.latent_shape), jnp.float32)
  h, w = jax.eval_shape(lambda z: gen.apply_fn(gen.params, z)[0], z).shape[1:3]
  _check_size(size, h, w)
  layers = tuple(gen.layers) + style_layers

  def apply_fn(params, z, edits=None, capture=None):
    edits, captured = dict(edits or {}), check_layers(capture, layers)
    styles = tuple(n for n in captured if n in style_layers)
    image, acts = gen.apply_fn(params, z, edits, captured)
    for name in styles:
      style = apply_edit(acts[name], edits.get(name), name)
      acts[name] = gradient_maps(gen, params, z, name, style, edits, chunk=chunk, size=size)
    return image, acts

  return gen._replace(apply_fn=apply_fn, layers=layers)


def split_layers(names: Sequence[str], gen: Generator, suffix: str = ".style"
                 ) -> tuple[str, ...]:
  """The names among `names` that are not `gen.layers` but end in `suffix` (style layers to
  wrap); other unknown names raise ValueError listing the valid layers."""
  out = []
  for name in names:
    if name not in gen.layers:
      if not name.endswith(suffix):
        check_choice("layer", name, gen.layers)
      out.append(name)
  return tuple(out)
