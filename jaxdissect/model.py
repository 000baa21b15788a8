"""The model protocol: generators and segmenters as pure functions plus pytrees.

Everything in jaxdissect talks to models only through these types, so a Flax port, a hand-built
test model and a user's own network are interchangeable. Interventions are data (`Edit`), not
hooks: they go into `apply_fn` as an argument, which makes `vmap` over edits a batch of
counterfactual worlds and `grad` with respect to a soft `alpha` a search for causal units.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxdissect.errors import check_choice, check_shape


class Edit(NamedTuple):
  """An edit of one layer's activation `x` (`[B, H, W, C]`): `x * (1 - alpha) + value * alpha`.

  Both fields broadcast to `[B, H, W, C]`: a `[C]` vector edits units everywhere, `[H, W, C]` or
  `[B, H, W, C]` edits inside a spatial mask. Ablation is alpha=1, value=0 on the chosen units;
  insertion is alpha=1 (optionally times a mask) with value = the unit's insertion level.
  """

  alpha: jax.Array
  value: jax.Array


def apply_edit(x: jax.Array, edit: Edit | None, name: str = "layer") -> jax.Array:
  """Applies `edit` to `x`; `None` returns `x` itself (bit-identical, no arithmetic).

  Raises ValueError, naming `name` and its shape, if alpha or value would not broadcast to `x`.
  """
  if edit is None:
    return x
  alpha = jnp.asarray(edit.alpha, x.dtype)
  value = jnp.asarray(edit.value, x.dtype)
  for field, a in (("alpha", alpha), ("value", value)):
    _check_broadcasts(f"edit {field} of {name}", a.shape, x.shape)
  return x * (1 - alpha) + value * alpha


def _check_broadcasts(what: str, shape: tuple[int, ...], target: tuple[int, ...]) -> None:
  """Raises ValueError unless `shape` broadcasts to exactly `target`."""
  ok = len(shape) <= len(target) and all(
      s in (1, t) for s, t in zip(shape[::-1], target[::-1]))
  if not ok:
    raise ValueError(f"{what} has shape {list(shape)}, which does not broadcast to the layer's "
                     f"shape {list(target)} ([B, H, W, C])")


# apply_fn(params, x, edits=None, capture=None) -> (output, acts)
ApplyFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


class Generator(NamedTuple):
  """A generator: `apply_fn(params, z, edits=None, capture=None) -> (image, acts)`.

  `layers` is the published, ordered tuple of layer names; `acts` maps each captured name to its
  `[B, H, W, C]` activation after the layer's nonlinearity and before the edit.
  `latent_shape` is the shape of one latent (`(zdim,)` for the usual `[B, zdim]` batches): the
  generator, not its callers, knows what it takes.
  """

  apply_fn: ApplyFn
  params: Any
  layers: tuple[str, ...]
  latent_shape: tuple[int, ...]

  @property
  def zdim(self) -> int:
    """Numbers per latent (the flat size of `latent_shape`)."""
    return math.prod(self.latent_shape)


class Segmenter(NamedTuple):
  """A segmenter: `segment_fn(params, images) -> probs [B, H, W, K]` (differentiable) and
  `label_fn(params, images) -> labels [B, H, W, D]` int32 (0 = none); `concepts[i]` is the
  `(name, category)` of label index i (index 0 is the '-' no-label entry).

  `segment_fn` may be None (a label-only segmenter, as the original tool's interface): dissection
  counts labels only; what needs probabilities (unit-set optimisation, layout features) calls
  `probabilities_of` and refuses such a segmenter in one line."""

  segment_fn: Callable[[Any, jax.Array], jax.Array] | None
  label_fn: Callable[[Any, jax.Array], jax.Array]
  params: Any
  concepts: tuple[tuple[str, str], ...]


def label_only(label_fn: Callable[[Any, jax.Array], jax.Array], params: Any,
               concepts: Sequence[tuple[str, str]]) -> Segmenter:
  """A segmenter that gives integer labels only (no `segment_fn`); enough to dissect."""
  return Segmenter(None, label_fn, params, tuple(tuple(c) for c in concepts))


def probabilities_of(seg: Segmenter, what: str) -> Callable[[Any, jax.Array], jax.Array]:
  """`seg.segment_fn`, or ValueError naming `what` needs it when `seg` is label-only."""
  if seg.segment_fn is None:
    raise ValueError(f"{what} needs a segmenter's class probabilities (segment_fn); this one "
                     "gives labels only (enough to dissect, not to optimise through)")
  return seg.segment_fn


def check_layers(names: Sequence[str] | str | None, layers: Sequence[str]) -> tuple[str, ...]:
  """Normalises a capture/edit layer selection, raising on names the model does not have."""
  if names is None:
    return ()
  if isinstance(names, str):
    names = (names,)
  for n in names:
    check_choice("layer", n, layers)
  return tuple(names)


def check_edits(edits: Mapping[str, Edit] | None, layers: Sequence[str]) -> Mapping[str, Edit]:
  """Validates the keys of an edits mapping against the model's layer names."""
  edits = {} if edits is None else edits
  for n in edits:
    check_choice("layer", n, layers)
  return edits


def check_latent(z: Any, dim: int) -> jax.Array:
  """Returns `z` as an array after checking that it is a float `[B, dim]` batch of latents."""
  z = jnp.asarray(z)
  check_shape("z", z.shape, (None, dim))
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise ValueError(f"z has dtype {z.dtype} (shape {list(z.shape)}), expected a float array "
                     f"of shape [?, {dim}]")
  return z


def check_call(z: Any, dim: int, edits: Mapping[str, Edit] | None,
               capture: Sequence[str] | str | None, layers: Sequence[str]
               ) -> tuple[jax.Array, Mapping[str, Edit], tuple[str, ...]]:
  """The checks every generator's `apply_fn` starts with: `(z, edits, capture names)`."""
  return check_latent(z, dim), check_edits(edits, layers), check_layers(capture, layers)
