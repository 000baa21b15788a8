"""Model specs: the one resolver behind every experiment script's `--model` and `--segmenter`.

Scripts, tests and libraries built on jaxdissect name models with a *spec* string, and this module
is the only place that turns a spec into a protocol `Generator`, `Segmenter` or `Classifier`. It
sits above both the core and the ports (it imports ports lazily, inside loaders), so the core never
depends on a port and asking for one model never loads another's weights.

A spec is one of (tried in this order):

  1. A registered name: generators `sceneworld` (the default: its trained weights ship inside the
     package, so a first run needs no files and no network), `sceneworld-stylegan2` (a StyleGAN2
     trained on the same scenes, also shipped; `args` truncation_psi, noise, noise_seed,
     latent_space), `planted` and `facegan` (a real 64x64
     face DCGAN whose weights come with `pip install --no-deps gan-face-generate`); segmenters
     `sceneworld`, `planted`, `color` (weightless, for any generator's images) and `faceparts`
     (face parts from the trained models of `pip install --no-deps mediapipe==0.10.21`);
     classifiers `sceneworld` (a small VGG of the scene world's scene classes, weights in the
     package). Libraries add names with `register_generator` / `register_segmenter`.
  2. `KIND:ARGS`, a port's checkpoint, where KIND is registered in `KINDS` (`register_kind`):
     `proggan:PATH.pth`, `facegan:PATH`, `stylegan2:PATH.pkl` (an NVlabs StyleGAN2-ADA snapshot,
     read without running its embedded code), `semseg:ENC.pth,DEC.pth,ARCH`, `upp:FOLDER`; for
     classifiers (`load_classifier`) `vgg16:PATH`, `vgg16_places365:PATH` (365 classes),
     `resnet18:PATH`, `resnet50:PATH` (torchvision or Places365 `.pth` layouts).
  3. `package.module:factory` (any other `PREFIX:NAME` whose parts are dotted Python names): the
     module is imported, `factory` looked up and called; it must return a Generator (Segmenter,
     Classifier).

`args` (from the repeatable `--model_arg key=value` flag, see `parse_args`) are passed as keyword
arguments to whatever loads the spec: the factory, the kind's loader (e.g. `hardtanh=true` for
`proggan:`) or a registered loader that accepts them. User text is never evaluated: values are
JSON literals or plain strings. Every failure is a `SpecError`, one line naming the spec and what
is accepted.

The registries are plain module-level dicts (`GENERATORS`, `SEGMENTERS`, `CLASSIFIERS`,
`DEFAULT_SEGMENTERS`, `KINDS`): the library's only global state, explicit so that a library can
extend the flags of every script by registering.
"""

from __future__ import annotations

import importlib
import inspect
import json
import keyword
import os
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from jaxdissect.classifier import Classifier
from jaxdissect.model import Generator, Segmenter


class SpecError(ValueError):
  """A model or segmenter spec that does not resolve; one line naming it and what is accepted."""


class World(NamedTuple):
  """A generator and a segmenter for its images (the generator knows its `latent_shape`)."""

  generator: Generator
  segmenter: Segmenter


class Kind(NamedTuple):
  """How `KIND:ARGS` specs of one checkpoint format load.

  Each loader is called as `loader(ARGS, **args)` with the text after the colon; it raises
  ValueError or OSError (e.g. FileNotFoundError) with a message for a bad ARGS or file.
  """

  usage: str  # how the spec is written, e.g. "proggan:PATH.pth"
  generator: Callable[..., Generator] | None = None
  segmenter: Callable[..., Segmenter] | None = None
  default_segmenter: str | None = None  # for a generator kind's images (None: "color")
  classifier: Callable[..., Classifier] | None = None


# --- Built-in loaders (ports and worlds imported only when asked for) ---------------------------

def _sceneworld_generator() -> Generator:
  from jaxdissect.sceneworld import gan  # pylint: disable=g-import-not-at-top
  return gan.load_generator()


def _sceneworld_segmenter() -> Segmenter:
  from jaxdissect.sceneworld import segmenter  # pylint: disable=g-import-not-at-top
  return segmenter.load_segmenter()


def _sceneworld_stylegan2_generator(truncation_psi: float = 1.0, noise: str = "const",
                                    noise_seed: int = 0, latent_space: str = "z") -> Generator:
  from jaxdissect.sceneworld import stylegan  # pylint: disable=g-import-not-at-top
  return stylegan.load_generator(truncation_psi=truncation_psi, noise=noise,
                                 noise_seed=noise_seed, latent_space=latent_space)


def _planted_generator() -> Generator:
  from jaxdissect import planted  # pylint: disable=g-import-not-at-top
  return planted.make_planted_generator()


def _planted_segmenter() -> Segmenter:
  from jaxdissect import planted  # pylint: disable=g-import-not-at-top
  return planted.make_oracle_segmenter()


def _facegan_generator() -> Generator:
  from ports import facegan  # pylint: disable=g-import-not-at-top
  return facegan.load()


def _color_segmenter() -> Segmenter:
  from jaxdissect import colorseg  # pylint: disable=g-import-not-at-top
  return colorseg.make_segmenter()


def _faceparts_segmenter(threshold: float = 0.5, softness: float = 0.5) -> Segmenter:
  from ports import faceparts  # pylint: disable=g-import-not-at-top
  return faceparts.load(threshold=threshold, softness=softness)


def _sceneworld_classifier() -> Classifier:
  from jaxdissect.sceneworld import classifier  # pylint: disable=g-import-not-at-top
  return classifier.load_classifier()


class _BadArgs(ValueError):
  """The ARGS of a `KIND:ARGS` spec are malformed; the message says how, without a type name."""


def _file(path: str) -> str:
  """`path` (with `~` expanded) if it is an existing file; raises _BadArgs otherwise."""
  full = os.path.expanduser(path)
  if not os.path.isfile(full):
    raise _BadArgs(f"no such file {path!r}")
  return full


def _folder(path: str) -> str:
  """`path` (with `~` expanded) if it is an existing directory; raises _BadArgs otherwise."""
  full = os.path.expanduser(path)
  if not os.path.isdir(full):
    raise _BadArgs(f"no such folder {path!r}")
  return full


def _proggan_kind(path: str, *, hardtanh: bool = False) -> Generator:
  full = _file(path)
  from ports import proggan  # pylint: disable=g-import-not-at-top
  return proggan.load(full, hardtanh=hardtanh)


def _facegan_kind(path: str) -> Generator:
  full = _file(path)
  from ports import facegan  # pylint: disable=g-import-not-at-top
  return facegan.load(full)


def _stylegan2_kind(path: str, **options: Any) -> Generator:
  full = _file(path)
  from ports import stylegan2  # pylint: disable=g-import-not-at-top
  return stylegan2.load(full, **options)


def _semseg_kind(args: str, **options: Any) -> Segmenter:
  parts = args.split(",")
  if len(parts) != 3:
    raise _BadArgs(f"expected 3 comma-separated parts ENC.pth,DEC.pth,ARCH, got {len(parts)}")
  from ports import semseg  # pylint: disable=g-import-not-at-top
  encoder, decoder, arch = parts
  if arch not in semseg.ARCHS:
    raise _BadArgs(f"unknown arch {arch!r}; valid archs are: {', '.join(semseg.ARCHS)}")
  return semseg.load(_file(encoder), _file(decoder), arch, **options)


def _upp_kind(folder: str, **options: Any) -> Segmenter:
  full = _folder(folder)
  from ports import upp  # pylint: disable=g-import-not-at-top
  return upp.load(full, **options)


def _vgg16_kind(path: str, **options: Any) -> Classifier:
  full = _file(path)
  from ports import vgg  # pylint: disable=g-import-not-at-top
  return vgg.load_vgg16(full, **options)


def _vgg16_places365_kind(path: str, **options: Any) -> Classifier:
  model = _vgg16_kind(path, **options)
  if len(model.classes) != _PLACES365_CLASSES:
    raise _BadArgs(f"{path!r} has {len(model.classes)} classes, not Places365's "
                   f"{_PLACES365_CLASSES}; use vgg16:PATH for other VGG-16s")
  return model


def _resnet_kind(depth: int) -> Callable[..., Classifier]:
  def load(path: str, **options: Any) -> Classifier:
    full = _file(path)
    from ports import resnet_classifier  # pylint: disable=g-import-not-at-top
    return resnet_classifier.load_resnet(full, depth, **options)
  return load


_PLACES365_CLASSES = 365


# --- The registries ----------------------------------------------------------------------------

# Registered names: zero-argument loaders (or loaders whose keyword arguments come from `args`).
GENERATORS: dict[str, Callable[..., Generator]] = {
    "sceneworld": _sceneworld_generator,
    "sceneworld-stylegan2": _sceneworld_stylegan2_generator,
    "planted": _planted_generator,
    "facegan": _facegan_generator,
}
SEGMENTERS: dict[str, Callable[..., Segmenter]] = {
    "sceneworld": _sceneworld_segmenter,
    "planted": _planted_segmenter,
    "color": _color_segmenter,
    "faceparts": _faceparts_segmenter,
}
CLASSIFIERS: dict[str, Callable[..., Classifier]] = {
    "sceneworld": _sceneworld_classifier,
}
# The segmenter a registered generator's images are labelled with by default. A generator not
# listed here uses the segmenter of its own name if there is one, else "color".
DEFAULT_SEGMENTERS: dict[str, str] = {
    "sceneworld": "sceneworld",
    "sceneworld-stylegan2": "sceneworld",
    "planted": "planted",
    "facegan": "color",
}
# Checkpoint formats, the KIND of `KIND:ARGS` specs.
KINDS: dict[str, Kind] = {
    "proggan": Kind("proggan:PATH.pth", generator=_proggan_kind),
    "facegan": Kind("facegan:PATH", generator=_facegan_kind, default_segmenter="color"),
    "stylegan2": Kind("stylegan2:PATH.pkl", generator=_stylegan2_kind),
    "semseg": Kind("semseg:ENC.pth,DEC.pth,ARCH", segmenter=_semseg_kind),
    "upp": Kind("upp:FOLDER", segmenter=_upp_kind),
    "vgg16": Kind("vgg16:PATH", classifier=_vgg16_kind),
    "vgg16_places365": Kind("vgg16_places365:PATH", classifier=_vgg16_places365_kind),
    "resnet18": Kind("resnet18:PATH", classifier=_resnet_kind(18)),
    "resnet50": Kind("resnet50:PATH", classifier=_resnet_kind(50)),
}

_FALLBACK_SEGMENTER = "color"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_KIND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*\Z")


def _check_new(what: str, name: str, pattern: re.Pattern[str], table: Mapping[str, Any],
               replace: bool) -> None:
  """Raises ValueError for a malformed name, or one already in `table` unless `replace`."""
  if not isinstance(name, str) or not pattern.match(name):
    raise ValueError(f"cannot register {what} {name!r}: names must match {pattern.pattern!r} "
                     "(no ':', ',', '=' or spaces)")
  if name in table and not replace:
    raise ValueError(f"{what} {name!r} is already registered; pass replace=True to replace it")


def _check_loader(what: str, name: str, loader: Any) -> None:
  if not callable(loader):
    raise TypeError(f"cannot register {what} {name!r}: its loader {loader!r} is not callable")


def register_generator(name: str, loader: Callable[..., Generator], *,
                       default_segmenter: str | None = None, replace: bool = False) -> None:
  """Makes `name` a `--model` spec that loads `loader()` (called with `args` as keywords).

  `default_segmenter` names the segmenter its images are labelled with by default (see
  `default_segmenter`). Raises ValueError if `name` is taken, unless `replace`.
  """
  _check_new("generator", name, _NAME, GENERATORS, replace)
  _check_loader("generator", name, loader)
  GENERATORS[name] = loader
  if default_segmenter is None:
    DEFAULT_SEGMENTERS.pop(name, None)
  else:
    DEFAULT_SEGMENTERS[name] = default_segmenter


def register_segmenter(name: str, loader: Callable[..., Segmenter], *,
                       replace: bool = False) -> None:
  """Makes `name` a `--segmenter` spec that loads `loader()`. Raises ValueError if `name` is
  taken, unless `replace`."""
  _check_new("segmenter", name, _NAME, SEGMENTERS, replace)
  _check_loader("segmenter", name, loader)
  SEGMENTERS[name] = loader


def register_classifier(name: str, loader: Callable[..., Classifier], *,
                        replace: bool = False) -> None:
  """Makes `name` a classifier spec that loads `loader()`. Raises ValueError if `name` is taken,
  unless `replace`."""
  _check_new("classifier", name, _NAME, CLASSIFIERS, replace)
  _check_loader("classifier", name, loader)
  CLASSIFIERS[name] = loader


def register_kind(kind: str, *, usage: str, generator: Callable[..., Generator] | None = None,
                  segmenter: Callable[..., Segmenter] | None = None,
                  default_segmenter: str | None = None, replace: bool = False,
                  classifier: Callable[..., Classifier] | None = None) -> None:
  """Makes `KIND:ARGS` specs load with `generator(ARGS, **args)` / `segmenter(ARGS, **args)` /
  `classifier(ARGS, **args)`.

  `usage` shows how the spec is written (e.g. "stylegan2:PATH.pkl") in help and errors. A kind
  shadows any top-level Python package of the same name in `package.module:factory` specs.
  Raises ValueError if `kind` is taken, unless `replace`, or if no loader is given.
  """
  _check_new("kind", kind, _KIND_NAME, KINDS, replace)
  if generator is None and segmenter is None and classifier is None:
    raise ValueError(f"cannot register kind {kind!r}: give a generator or a segmenter loader "
                     "(or a classifier loader)")
  for loader in (generator, segmenter, classifier):
    if loader is not None:
      _check_loader("kind", kind, loader)
  KINDS[kind] = Kind(usage, generator, segmenter, default_segmenter, classifier)


# --- Resolution --------------------------------------------------------------------------------

class _Role(NamedTuple):
  """What a spec is resolved to: the noun in messages, its registry, type and Kind field."""

  noun: str
  registry: dict[str, Callable[..., Any]]
  type: type
  kind_field: str


_GENERATOR = _Role("model", GENERATORS, Generator, "generator")
_SEGMENTER = _Role("segmenter", SEGMENTERS, Segmenter, "segmenter")
_CLASSIFIER = _Role("classifier", CLASSIFIERS, Classifier, "classifier")
_ROLES = {"model": _GENERATOR, "generator": _GENERATOR, "segmenter": _SEGMENTER,
          "classifier": _CLASSIFIER}


# The other roles of each role's noun, in the order messages name them.
_OTHER_ROLES = {"model": (_SEGMENTER, _CLASSIFIER), "segmenter": (_GENERATOR, _CLASSIFIER),
                "classifier": (_GENERATOR, _SEGMENTER)}


def _role(role: str) -> _Role:
  if role not in _ROLES:
    raise ValueError(f"unknown spec role {role!r}; valid roles are: "
                     f"{', '.join(map(repr, _ROLES))}")
  return _ROLES[role]


def _kinds(role: _Role) -> list[str]:
  """The kinds that load `role`."""
  return [k for k, kind in KINDS.items() if getattr(kind, role.kind_field) is not None]


def describe_specs(role: str) -> str:
  """One line listing the specs accepted for `role` ("model" / "generator", "segmenter" or
  "classifier")."""
  r = _role(role)
  names = ", ".join(map(repr, r.registry))
  registered = f"a registered name ({names}), " if names else ""
  usages = ", ".join(KINDS[k].usage for k in _kinds(r))
  checkpoints = f"a checkpoint ({usages}), " if usages else ""
  return (f"{registered}{checkpoints}or package.module:factory "
          "(key=value args passed as keywords)")


def _fail(role: _Role, spec: Any, problem: str) -> SpecError:
  """The one-line SpecError for `spec`: the problem, then what is accepted."""
  text = f"{role.noun} {spec!r}: {problem}; valid {role.noun}s: {describe_specs(role.noun)}"
  return SpecError(_one_line(text))


def _one_line(text: str) -> str:
  return re.sub(r"\s*\n\s*", " ", text)


def _show(kwargs: Mapping[str, Any]) -> str:
  """`a=1, b='x'` (or 'no args')."""
  return ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no args"


def _call(role: _Role, spec: str, what: str, fn: Callable[..., Any], positional: tuple[Any, ...],
          kwargs: Mapping[str, Any]) -> Any:
  """`fn(*positional, **kwargs)`, with argument mismatches and loading errors as SpecError."""
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):  # some builtins and C callables have none
    signature = None
  if signature is not None:
    try:
      signature.bind(*positional, **kwargs)
    except TypeError as e:
      raise _fail(role, spec, f"{what} does not accept the args passed ({_show(kwargs)}): {e}; "
                  f"its parameters are {_bare(signature)}") from None
  try:
    return fn(*positional, **kwargs)
  except SpecError:
    raise
  except _BadArgs as e:
    raise _fail(role, spec, str(e)) from e
  except (TypeError, ValueError, OSError) as e:
    passed = f" (args passed: {_show(kwargs)})" if kwargs else ""
    raise _fail(role, spec, f"{what} failed: {type(e).__name__}: {e}{passed}") from e


def _bare(signature: inspect.Signature) -> str:
  """`signature` without annotations: `(width=8, seed=0)`."""
  params = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
  return str(signature.replace(parameters=params, return_annotation=signature.empty))


def _is_dotted(text: str) -> bool:
  """Whether `text` is a dotted Python name such as `package.module`."""
  return bool(text) and all(p.isidentifier() and not keyword.iskeyword(p)
                            for p in text.split("."))


def _public_callables(module: Any) -> list[str]:
  """Up to 10 public callables defined in `module` (for 'no such attribute' hints)."""
  name = getattr(module, "__name__", None)
  found = [k for k, v in vars(module).items()
           if not k.startswith("_") and callable(v) and getattr(v, "__module__", None) == name]
  return found[:10]


def _load_import(role: _Role, spec: str, module_name: str, attr: str,
                 kwargs: Mapping[str, Any]) -> Any:
  """Imports `module_name`, looks up the dotted `attr` and calls it with `kwargs`."""
  kinds = ", ".join(_kinds(role)) or "none"
  if not _is_dotted(module_name):
    raise _fail(role, spec, f"unknown kind {module_name!r} (kinds: {kinds}), and not a "
                "package.module:factory import")
  if not _is_dotted(attr):
    raise _fail(role, spec, f"{attr!r} after ':' is not a factory name (a Python name, "
                f"optionally dotted), and {module_name!r} is not a kind (kinds: {kinds})")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise _fail(role, spec, f"cannot import {module_name!r} ({type(e).__name__}: {e}); it is not "
                f"a kind either (kinds: {kinds})") from e
  obj = module
  for part in attr.split("."):
    if not hasattr(obj, part):
      public = _public_callables(module)
      hint = f"; it defines: {', '.join(public)}" if public else ""
      raise _fail(role, spec, f"module {module_name!r} has no attribute {attr!r}{hint}")
    obj = getattr(obj, part)
  if not callable(obj):
    raise _fail(role, spec, f"{module_name}.{attr} is a {type(obj).__name__}, not a callable "
                "factory")
  return _call(role, spec, f"{module_name}.{attr}()", obj, (), kwargs)


def keyword_args(args: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
  """Keyword arguments from a mapping or from `key=value` items (see `parse_args`)."""
  if args is None:
    return {}
  if isinstance(args, Mapping):
    bad = [k for k in args if not (isinstance(k, str) and k.isidentifier())]
    if bad:
      raise SpecError(f"args have key(s) {', '.join(map(repr, bad))} that are not Python "
                      "identifiers, so cannot be passed as keyword arguments")
    return dict(args)
  if isinstance(args, str):
    raise TypeError(f"args is the string {args!r}; pass a mapping or a list of key=value items")
  return parse_args(args)


def _resolve(role: _Role, spec: str, args: Mapping[str, Any] | Sequence[str] | None) -> Any:
  """The model `spec` names, checked to be of the role's type."""
  if not isinstance(spec, str) or not spec:
    raise _fail(role, spec, "empty spec" if spec == "" else f"a spec is a string, not a "
                f"{type(spec).__name__}")
  kwargs = keyword_args(args)
  if spec in role.registry:
    what = f"the loader of {spec!r}"
    model = _call(role, spec, what, role.registry[spec], (), kwargs)
  elif ":" in spec:
    prefix, rest = spec.split(":", 1)
    kind = KINDS.get(prefix)
    if kind is None:
      what = f"{prefix}.{rest}()"
      model = _load_import(role, spec, prefix, rest, kwargs)
    else:
      loader = getattr(kind, role.kind_field)
      if loader is None:
        others = " or ".join(f"{r.noun}s" for r in _OTHER_ROLES[role.noun]
                             if getattr(kind, r.kind_field) is not None)
        raise _fail(role, spec, f"{prefix}: checkpoints are {others}, not {role.noun}s")
      if not rest:
        raise _fail(role, spec, f"missing ARGS after '{prefix}:'; write {kind.usage}")
      what = f"the {prefix} loader"
      model = _call(role, spec, what, loader, (rest,), kwargs)
  else:
    raise _unknown_name(role, spec)
  if not isinstance(model, role.type):
    t = type(model)
    raise _fail(role, spec, f"{what} returned a {t.__module__}.{t.__qualname__}, expected a "
                f"jaxdissect.model.{role.type.__name__}")
  return model


def _unknown_name(role: _Role, spec: str) -> SpecError:
  """'unknown model ...' listing what is accepted, with a hint for near misses."""
  hint = ""
  if spec in KINDS and getattr(KINDS[spec], role.kind_field) is not None:
    hint = f" (a checkpoint kind: write {KINDS[spec].usage})"
  else:
    for other in _OTHER_ROLES[role.noun]:
      if spec in other.registry:
        hint = f" (that is a {other.noun} name)"
        break
  return SpecError(_one_line(f"unknown {role.noun} {spec!r}{hint}; valid {role.noun}s: "
                             f"{describe_specs(role.noun)}"))


def parse_args(items: Sequence[str] | None) -> dict[str, Any]:
  """`["width=8", "name=x", "sizes=[1, 2]"]` -> `{"width": 8, "name": "x", "sizes": [1, 2]}`.

  Values that are JSON literals (numbers, true/false/null, "quoted strings", lists, objects)
  are converted; any other text stays a string. Keys must be Python identifiers and appear
  once. Raises SpecError for a malformed item. Nothing is evaluated.
  """
  out: dict[str, Any] = {}
  for item in items or ():
    if not isinstance(item, str):
      raise SpecError(f"arg {item!r} is a {type(item).__name__}, expected a key=value string")
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier() or keyword.iskeyword(key):
      raise SpecError(_one_line(f"malformed arg {item!r}: expected key=value with a Python "
                                "identifier as key, e.g. width=8 or name=\"x\""))
    if key in out:
      raise SpecError(_one_line(f"arg {key!r} given twice ({key}={out[key]!r} and {item!r})"))
    out[key] = _value(text)
  return out


def _value(text: str) -> Any:
  """A JSON literal's value, or `text` itself."""
  try:
    return json.loads(text)
  except ValueError:
    return text


# --- Public entry points -----------------------------------------------------------------------

def load_generator(spec: str = "sceneworld",
                   args: Mapping[str, Any] | Sequence[str] | None = None) -> Generator:
  """The generator `spec` names (see the module docstring); `args` become keyword arguments
  (a mapping, or `key=value` items as for `parse_args`). Raises SpecError."""
  return _resolve(_GENERATOR, spec, args)


def load_segmenter(spec: str = "sceneworld",
                   args: Mapping[str, Any] | Sequence[str] | None = None) -> Segmenter:
  """The segmenter `spec` names (see the module docstring); `args` as for `load_generator`.
  Raises SpecError."""
  return _resolve(_SEGMENTER, spec, args)


def load_classifier(spec: str, args: Mapping[str, Any] | Sequence[str] | None = None
                    ) -> Classifier:
  """The classifier `spec` names (e.g. `vgg16_places365:PATH`, with `args` such as
  `classes=categories_places365.txt` or `image_size=224`); `args` as for `load_generator`.
  Raises SpecError."""
  return _resolve(_CLASSIFIER, spec, args)


def default_segmenter(model_spec: str) -> str:
  """The segmenter spec that `model_spec`'s images are labelled with by default.

  A registered generator's default (`DEFAULT_SEGMENTERS`, else the segmenter of the same name);
  a kind's (`facegan:PATH` -> "color"). Specs with no known default (other checkpoints, import
  specs, registered generators without one) get "color", the weightless colour segmenter that
  works on any images. Raises SpecError for a name that is neither registered nor `X:Y`.
  """
  if model_spec in GENERATORS:
    if model_spec in DEFAULT_SEGMENTERS:
      return DEFAULT_SEGMENTERS[model_spec]
    return model_spec if model_spec in SEGMENTERS else _FALLBACK_SEGMENTER
  if isinstance(model_spec, str) and ":" in model_spec:
    kind = KINDS.get(model_spec.split(":", 1)[0])
    if kind is not None and kind.default_segmenter is not None:
      return kind.default_segmenter
    return _FALLBACK_SEGMENTER
  raise _unknown_name(_GENERATOR, model_spec)


def load_world(name: str = "sceneworld") -> World:
  """A generator spec's generator with its default segmenter, e.g. 'sceneworld', 'planted' or
  'facegan' (with the 'color' segmenter)."""
  return World(load_generator(name), load_segmenter(default_segmenter(name)))
