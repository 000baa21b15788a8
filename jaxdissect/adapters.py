"""Adapters: unmodified Flax Linen / NNX modules and plain functions as protocol models.

Dissection needs a model that captures named activations and applies edits as data. Rewriting a
user's network to thread `edits` and `capture` through it is tedious and error-prone, so these
adapters wrap the network as it is:

* `from_linen` intercepts submodule `__call__`s with `flax.linen.intercept_methods`;
* `from_nnx` runs a merged copy of the module (local to the call) whose tapped submodules are
  swapped for wrappers that capture and edit;
* `from_function` hands the user's function a `tap(name, x)` to mark its layers with.

Layer names are module paths joined with '.' ('block1.conv', 'blocks.0'). A layer's activation
is its submodule's output, so a Conv followed by a plain `nn.relu` gives the pre-activation: wrap
conv and nonlinearity in a block module to dissect after the nonlinearity. A submodule called
more than once per forward pass gives one layer per call: 'path', 'path#2', 'path#3', ...
Calls made inside a transform of the model's own (`nn.remat`, `nn.scan`, `nnx.scan`,
`jax.checkpoint`, ...) are not layers: their values belong to that transform's trace.

Every returned `apply_fn` takes latents `[B, zdim]` (or `[B, *latent_shape]`), reshapes them to
`[B, *latent_shape]` for the model, is pure, and works under `jit` and `vmap` (over edits too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core as jex_core

from jaxdissect.errors import check_choice, check_shape
from jaxdissect.model import Edit, Generator, Segmenter, apply_edit, check_call

Output = Callable[[Any], jax.Array] | str | int | None


class _Taps:
  """Per-call recorder: names each tapped call, captures before and applies edits after."""

  def __init__(self, capture: Sequence[str] = (), edits: Mapping[str, Edit] | None = None,
               repeat: str = "number", probe: bool = False):
    self.capture, self.edits, self.repeat = set(capture), dict(edits or {}), repeat
    self.probe = probe  # a discovery trace: every submodule is tapped
    self.trace = None  # the model's own trace; calls inside nested transforms are not tapped
    self.acts: dict[str, jax.Array] = {}
    self.calls: dict[str, int] = {}
    self.order: list[tuple[str, bool]] = []  # (name, output is a [B, H, W, C] array), call order

  def __call__(self, base: str, run: Callable[[], Any]) -> Any:
    count = self.calls[base] = self.calls.get(base, 0) + 1
    if count > 1 and self.repeat == "error":
      raise ValueError(f"tap {base!r} was called {count} times in one forward pass; give each "
                       "tap its own name")
    name = base if count == 1 else f"{base}#{count}"
    if jex_core.get_opaque_trace_state(convention="jaxdissect") != self.trace:
      return run()  # inside the model's own remat / scan / ...: its values cannot leave it
    slot = len(self.order)
    self.order.append((name, False))
    out = run()
    self.order[slot] = (name, isinstance(out, jax.Array) and out.ndim == 4)
    if name in self.capture:
      self.acts[name] = out
    if name in self.edits:
      out = apply_edit(out, self.edits[name], name)
    return out

  def run(self, run: Callable[..., Any], params: Any, z: jax.Array) -> Any:
    """`run(params, z, self)`, remembering the trace the model runs in."""
    self.trace = jex_core.get_opaque_trace_state(convention="jaxdissect")
    return run(params, z, self)

  def result(self) -> dict[str, jax.Array]:
    """The captured activations, raising if a requested layer never ran."""
    ran = [n for n, _ in self.order]
    for name in sorted(self.capture | set(self.edits)):
      if name not in ran:
        raise ValueError(f"layer {name!r} did not run in this forward pass, though it did when "
                         "the model's layers were found; the model's calls must not depend on z")
    return self.acts


def _latent_shape(latent_shape: int | Sequence[int]) -> tuple[int, ...]:
  shape = (latent_shape,) if isinstance(latent_shape, int) else tuple(latent_shape)
  if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
    raise ValueError(f"latent_shape {latent_shape!r} is invalid; expected a tuple of positive "
                     "ints (the shape of one latent, e.g. (128,))")
  return shape


def _output_fn(output: Output) -> Callable[[Any], Any]:
  if output is None:
    return lambda ret: ret
  if callable(output):
    return output
  if isinstance(output, (str, int)):
    return lambda ret: ret[output]
  raise ValueError(f"output {output!r} is invalid; expected None, a key/index into the model's "
                   "return value, or a function of it")


def _generator(run: Callable[[Any, jax.Array, _Taps], Any], params: Any,
               latent_shape: int | Sequence[int], layers: Sequence[str] | None, output: Output,
               repeat: str = "number", source: str = "submodule call") -> Generator:
  """A protocol Generator from `run(params, z [B, *latent_shape], taps) -> model output`.

  Traces once abstractly to find the layers (outputs `[B, H, W, C]`, in call order) and to check
  `layers` and the image.
  """
  shape, pick = _latent_shape(latent_shape), _output_fn(output)
  zdim = math.prod(shape)

  taps = _Taps(repeat=repeat, probe=True)
  z = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  image = jax.eval_shape(lambda p, z: pick(taps.run(run, p, z)), params, z)
  order = taps.order
  if not (isinstance(image, jax.ShapeDtypeStruct) and image.ndim == 4 and image.shape[-1] == 3):
    got = image.shape if isinstance(image, jax.ShapeDtypeStruct) else type(image).__name__
    raise ValueError(f"the model's image is {got}, expected a [B, H, W, 3] array; pass output= "
                     "to pick the image from what the model returns")
  found = tuple(name for name, is_map in order if is_map)
  if layers is None:
    layers = found
  else:
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    if len(set(layers)) != len(layers):
      raise ValueError(f"layers {list(layers)} name a layer twice")
    for name in layers:
      if name not in found:
        raise ValueError(f"unknown layer {name!r}: no {source} with a [B, H, W, C] output has "
                         f"that name; valid layers are: {', '.join(map(repr, found))}")
  if not layers:
    raise ValueError("the model has no layers with [B, H, W, C] outputs to dissect")

  def apply_fn(params, z, edits=None, capture=None):
    z = jnp.asarray(z)
    if len(shape) > 1 and z.ndim == len(shape) + 1 and z.shape[1:] == shape:
      z = z.reshape(z.shape[0], zdim)
    z, edits, names = check_call(z, zdim, edits, capture, layers)
    taps = _Taps(names, edits, repeat)
    image = pick(taps.run(run, params, z.reshape(z.shape[0], *shape)))
    return image, taps.result()

  return Generator(apply_fn, params, layers, shape)


def from_linen(module: nn.Module, variables: Any, latent_shape: int | Sequence[int], *,
               layers: Sequence[str] | None = None, method: Callable | str | None = None,
               output: Output = None, call_kwargs: Mapping[str, Any] | None = None) -> Generator:
  """A Generator from a Linen module computing `module.apply(variables, z, **call_kwargs)`.

  `params` is `variables`. Layers are the submodule calls (by path, e.g. 'block1.conv') that
  return one `[B, H, W, C]` array, in call order; `layers` picks some of them. `method` is
  passed to `apply`; `output` picks the image from the return value (a key, an index or a
  function). `call_kwargs` are extra static arguments (e.g. `{'train': False}`).
  """
  kwargs = dict(call_kwargs or {})

  def run(params, z, taps):
    def interceptor(next_fun, args, kw, context):
      path = context.module.path
      if context.method_name != "__call__" or not path:
        return next_fun(*args, **kw)
      return taps(".".join(map(str, path)), lambda: next_fun(*args, **kw))

    with nn.intercept_methods(interceptor):
      return module.apply(params, z, method=method, **kwargs)

  return _generator(run, variables, latent_shape, layers, output)


class _Tap:
  """Stands in for a submodule inside a merged NNX copy: calls go through the recorder, any
  other attribute access goes to the submodule."""

  def __init__(self, inner: Any, name: str, taps: _Taps):
    self.inner, self.name, self.taps = inner, name, taps

  def __call__(self, *args, **kwargs):
    return self.taps(self.name, lambda: self.inner(*args, **kwargs))

  def __getattr__(self, attr):
    return getattr(self.__dict__["inner"], attr)

  def __getitem__(self, key):
    return self.inner[key]

  def __iter__(self):
    return iter(self.inner)

  def __len__(self):
    return len(self.inner)


def _swap_in_taps(root: nnx.Module, names: Mapping[int, str], taps: _Taps) -> None:
  """Replaces every reference (shared ones too) to the modules `names` keys (ids) by a `_Tap`.

  Each `iter_graph` pass visits a module at its first remaining reference; taps are leaves to it,
  so passes repeat until no reference is left.
  """
  wrappers: dict[int, _Tap] = {}
  while True:
    found = [p for p, node in nnx.iter_graph(root) if p and id(node) in names]
    if not found:
      return
    for path in found:
      parent = root
      for key in path[:-1]:
        parent = _child(parent, key)
        parent = parent.inner if isinstance(parent, _Tap) else parent
      node = _child(parent, path[-1])
      tap = wrappers.setdefault(id(node), _Tap(node, names[id(node)], taps))
      if isinstance(parent, nnx.Module) and isinstance(path[-1], str):
        setattr(parent, path[-1], tap)
      elif hasattr(type(parent), "__setitem__"):
        parent[path[-1]] = tap
      if _child(parent, path[-1]) is not tap:
        raise ValueError(f"cannot tap submodule {'.'.join(map(str, path))!r}: it sits in a "
                         f"{type(parent).__name__}, which cannot be changed; keep submodules in "
                         "attributes, nnx.List, nnx.Dict, lists or dicts")


def _child(parent: Any, key: Any) -> Any:
  if isinstance(parent, nnx.Module) and isinstance(key, str):
    return getattr(parent, key)
  return parent[key]


def from_nnx(module: nnx.Module, latent_shape: int | Sequence[int], *,
             layers: Sequence[str] | None = None, output: Output = None,
             call_kwargs: Mapping[str, Any] | None = None) -> Generator:
  """A Generator from an NNX module computing `module(z, **call_kwargs)`.

  `params` is the module's `nnx.State` (from `nnx.split`); each call merges a fresh copy, so the
  given module is never mutated (put it in eval mode first if it has BatchNorm or Dropout).
  Layers and `output` are as in `from_linen`; names are attribute paths ('blocks.0.conv'), a
  module reachable by several paths being named by the first `nnx.iter_modules` gives.
  """
  graphdef, state = nnx.split(module)
  kwargs = dict(call_kwargs or {})

  def run(params, z, taps):
    copy = nnx.merge(graphdef, params)
    wanted = None if taps.probe else {n.split("#")[0] for n in taps.capture | set(taps.edits)}
    names: dict[int, str] = {}
    for path, sub in nnx.iter_modules(copy):
      name = ".".join(map(str, path))
      if path and callable(sub) and id(sub) not in names and (wanted is None or name in wanted):
        names[id(sub)] = name
    _swap_in_taps(copy, names, taps)
    return copy(z, **kwargs)

  return _generator(run, state, latent_shape, layers, output)


def from_function(fn: Callable[[Any, jax.Array, Callable[[str, jax.Array], jax.Array]], Any],
                  params: Any, latent_shape: int | Sequence[int],
                  layers: Sequence[str]) -> Generator:
  """A Generator from `fn(params, z, tap) -> image`, whose layers are marked `x = tap(name, x)`.

  `tap` returns `x` itself, or `x` edited when the caller edits that layer, and records `x`
  (before the edit) when the caller captures it. `z` arrives as `[B, *latent_shape]`. `layers`
  (ordered) must all be tapped exactly once per call with `[B, H, W, C]` arrays; tapping another
  name, or a name twice, raises ValueError.
  """
  layers = (layers,) if isinstance(layers, str) else tuple(layers)

  def run(params, z, taps):
    def tap(name, x):
      check_choice("tap", name, layers)
      return taps(name, lambda: x)

    return fn(params, z, tap)

  return _generator(run, params, latent_shape, layers, None, repeat="error", source="tap")


def _concepts(concepts: Sequence[Sequence[str]]) -> tuple[tuple[str, str], ...]:
  out = tuple(tuple(c) for c in concepts)
  if len(out) < 2 or not all(len(c) == 2 and all(isinstance(s, str) for s in c) for c in out):
    raise ValueError(f"concepts {list(concepts)!r} are invalid; expected (name, category) string "
                     "pairs in label order, index 0 the no-label entry ('-', 'none')")
  return out


def segmenter_from_logits_fn(fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                             concepts: Sequence[Sequence[str]]) -> Segmenter:
  """A Segmenter from `fn(params, images [B, H, W, 3] in [-1, 1]) -> logits [B, H, W, K]`.

  Probabilities are the softmax over K = len(concepts); labels `[B, H, W, 1]` int32 the argmax
  (0, the first concept, meaning none).
  """
  concepts = _concepts(concepts)

  def logits(params, images):
    images = jnp.asarray(images)
    check_shape("images", images.shape, (None, None, None, 3))
    out = fn(params, images)
    check_shape("segmenter logits", out.shape, (*images.shape[:3], len(concepts)))
    return out

  def segment_fn(params, images):
    return jax.nn.softmax(logits(params, images), axis=-1)

  def label_fn(params, images):
    return jnp.argmax(logits(params, images), axis=-1)[..., None].astype(jnp.int32)

  return Segmenter(segment_fn, label_fn, params, concepts)


def segmenter_from_linen(module: nn.Module, variables: Any, concepts: Sequence[Sequence[str]], *,
                         method: Callable | str | None = None) -> Segmenter:
  """A Segmenter from a Linen module whose `apply(variables, images)` gives `[B, H, W, K]`
  logits (see `segmenter_from_logits_fn`)."""
  return segmenter_from_logits_fn(
      lambda params, images: module.apply(params, images, method=method), variables, concepts)
