"""Model specs (`jaxdissect.zoo`): registered names, `KIND:ARGS` checkpoints, `module:factory`
imports with `key=value` args, registration, and one-line errors that name the spec."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import test_pth  # the torch-free writer of torch-format files (tests/ is on sys.path)
from jaxdissect import zoo
from jaxdissect.model import Generator, Segmenter
from ports import proggan

ROOT = pathlib.Path(__file__).resolve().parent.parent
FACTORY = "tests.factory_models"
TINY_SIZES = [16, 16, 8, 8]  # zdim 16; 4x4: 16 ch, 8x8: 8 ch, 16x16: 8 ch


@pytest.fixture
def importable_tests(monkeypatch):
  """The repo root on sys.path, as under `python -m ...` from the root (plain `pytest` lacks it)."""
  monkeypatch.syspath_prepend(str(ROOT))


@pytest.fixture
def registries():
  """Restores the zoo's registries after a test that registers."""
  tables = (zoo.GENERATORS, zoo.SEGMENTERS, zoo.DEFAULT_SEGMENTERS, zoo.KINDS)
  saved = [dict(t) for t in tables]
  yield
  for table, copy in zip(tables, saved):
    table.clear()
    table.update(copy)


def _factory():
  import tests.factory_models  # pylint: disable=g-import-not-at-top
  return tests.factory_models


@pytest.fixture(scope="module")
def proggan_file(tmp_path_factory):
  """A tiny ProgGAN in the netdissect key layout, random weights and biases, and its dict."""
  path = tmp_path_factory.mktemp("specs") / "tiny.pth"
  return str(path), test_pth.write_proggan(path, TINY_SIZES)


# --- Registered names ---------------------------------------------------------------------------

def test_registered_names_load_and_pair_with_their_segmenters():
  gen = zoo.load_generator("planted")
  assert isinstance(gen, Generator) and gen.latent_shape == (gen.zdim,)
  assert isinstance(zoo.load_segmenter("color"), Segmenter)
  assert isinstance(zoo.load_segmenter("planted"), Segmenter)
  world = zoo.load_world("planted")
  assert world._fields == ("generator", "segmenter") and world.generator.zdim == gen.zdim
  assert [zoo.default_segmenter(m) for m in ("sceneworld", "planted", "facegan")] == [
      "sceneworld", "planted", "color"]


@pytest.mark.parametrize("spec", ["facegan:/some/weights.tar", "proggan:x.pth",
                                  f"{FACTORY}:make_generator"])
def test_default_segmenter_of_other_specs(spec):
  assert zoo.default_segmenter(spec) == "color"


def test_describe_specs_lists_names_kinds_and_imports():
  model, seg = zoo.describe_specs("model"), zoo.describe_specs("segmenter")
  assert zoo.describe_specs("generator") == model and "\n" not in model + seg
  assert "'sceneworld', 'sceneworld-stylegan2', 'planted', 'facegan'" in model and "proggan:PATH.pth" in model
  assert "facegan:PATH" in model and "package.module:factory" in model and "upp:" not in model
  assert "'color'" in seg and "semseg:ENC.pth,DEC.pth,ARCH" in seg and "upp:FOLDER" in seg
  assert "proggan:" not in seg
  assert "vgg16:PATH" not in model + seg and "vgg16:PATH" in zoo.describe_specs("classifier")
  with pytest.raises(ValueError, match="unknown spec role 'discriminator'"):
    zoo.describe_specs("discriminator")


def test_zoo_imports_no_port_until_asked(importable_tests):
  code = ("import sys; from jaxdissect import zoo; "
          "assert not [m for m in sys.modules if m.split('.')[0] == 'ports'], 'ports imported'; "
          f"g = zoo.load_generator('{FACTORY}:make_generator', ['width=4']); print(g.zdim)")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "4"


# --- Registration -------------------------------------------------------------------------------

def test_register_and_replace_a_generator(registries, importable_tests):
  make = _factory().make_generator
  zoo.register_generator("tiny", lambda: make(4), default_segmenter="planted")
  assert zoo.load_generator("tiny").zdim == 4
  assert zoo.default_segmenter("tiny") == "planted" and "'tiny'" in zoo.describe_specs("model")
  with pytest.raises(ValueError, match="'tiny' is already registered; pass replace=True"):
    zoo.register_generator("tiny", lambda: make(5))
  with pytest.raises(ValueError, match="'planted' is already registered"):
    zoo.register_generator("planted", lambda: make(5))
  zoo.register_generator("tiny", make, replace=True)  # a loader that takes args
  assert zoo.load_generator("tiny", {"width": 6}).zdim == 6
  assert zoo.default_segmenter("tiny") == "color"  # the replaced default is gone
  with pytest.raises(ValueError, match="cannot register generator 'a:b'"):
    zoo.register_generator("a:b", make)
  with pytest.raises(TypeError, match="not callable"):
    zoo.register_generator("c", 3)


def test_register_segmenter_and_kind(registries, importable_tests):
  factory = _factory()
  zoo.register_segmenter("tinyseg", factory.make_segmenter)
  assert isinstance(zoo.load_segmenter("tinyseg", ["downsample=2"]), Segmenter)
  with pytest.raises(ValueError, match="already registered"):
    zoo.register_segmenter("color", factory.make_segmenter)
  zoo.register_kind("tinykind", usage="tinykind:WIDTH",
                    generator=lambda width, seed=0: factory.make_generator(int(width), seed))
  assert "tinykind:WIDTH" in zoo.describe_specs("model")
  assert "tinykind" not in zoo.describe_specs("segmenter")
  assert zoo.load_generator("tinykind:5", {"seed": 2}).zdim == 5
  with pytest.raises(zoo.SpecError, match="tinykind: checkpoints are models, not segmenters"):
    zoo.load_segmenter("tinykind:5")
  with pytest.raises(ValueError, match="'proggan' is already registered"):
    zoo.register_kind("proggan", usage="proggan:X", generator=factory.make_generator)
  with pytest.raises(ValueError, match="give a generator or a segmenter"):
    zoo.register_kind("empty", usage="empty:X")


# --- Checkpoint kinds ---------------------------------------------------------------------------

def test_proggan_spec_loads_the_pth_file(proggan_file):
  path, sd = proggan_file
  gen = zoo.load_generator(f"proggan:{path}")
  direct = proggan.load(path)
  assert gen.layers == direct.layers and gen.latent_shape == (16,)
  z = np.asarray(jax.random.normal(jax.random.key(0), (2, 16)))
  image, acts = gen.apply_fn(gen.params, z, capture="layer4")
  ref_image, ref_acts = direct.apply_fn(direct.params, z, capture="layer4")
  assert image.shape == (2, 16, 16, 3) and float(np.std(image)) > 0.1
  np.testing.assert_array_equal(np.asarray(image), np.asarray(ref_image))
  np.testing.assert_array_equal(np.asarray(acts["layer4"]), np.asarray(ref_acts["layer4"]))
  np.testing.assert_array_equal(gen.params["layer2"]["bias"], sd["layer2.wscale.b"])
  clipped = zoo.load_generator(f"proggan:{path}", ["hardtanh=true"])  # args reach the port
  np.testing.assert_array_equal(np.asarray(clipped.apply_fn(clipped.params, z)[0]),
                                np.clip(np.asarray(image), -1, 1))


# --- Import specs -------------------------------------------------------------------------------

def test_import_spec_with_args(importable_tests):
  factory = _factory()
  gen = zoo.load_generator(f"{FACTORY}:make_generator", zoo.parse_args(["width=4", "seed=3"]))
  ref = factory.make_generator(width=4, seed=3)
  assert gen.zdim == 4 and gen.layers == ref.layers
  np.testing.assert_array_equal(np.asarray(gen.params["layer1"]["kernel"]),
                                np.asarray(ref.params["layer1"]["kernel"]))
  assert zoo.load_generator(f"{FACTORY}:make_generator").zdim == 8  # the factory's defaults
  assert zoo.load_generator(f"{FACTORY}:make_generator", ["width=2"]).zdim == 2  # raw items
  assert isinstance(zoo.load_segmenter(f"{FACTORY}:make_segmenter"), Segmenter)
  world = zoo.load_world(f"{FACTORY}:make_generator")
  assert world.generator.zdim == 8 and world.segmenter.concepts == factory.make_segmenter().concepts


# --- parse_args ---------------------------------------------------------------------------------

@pytest.mark.parametrize("items, expected", [
    (None, {}),
    ([], {}),
    (["width=8"], {"width": 8}),
    (["x=1.5", "n=-3", "big=1e3"], {"x": 1.5, "n": -3, "big": 1000.0}),
    (["flag=true", "off=false", "none=null"], {"flag": True, "off": False, "none": None}),
    (['name="quoted text"', "plain=some text"], {"name": "quoted text", "plain": "some text"}),
    (["sizes=[16, 16, 8]", 'opts={"a": 1}'], {"sizes": [16, 16, 8], "opts": {"a": 1}}),
    (["path=/a/b=c.pth", "pair=1,2", "empty=", "word=True"],
     {"path": "/a/b=c.pth", "pair": "1,2", "empty": "", "word": "True"}),
    ([" padded =7"], {"padded": 7}),
    (["code=__import__('os')"], {"code": "__import__('os')"}),  # text, never evaluated
])
def test_parse_args(items, expected):
  assert zoo.parse_args(items) == expected


@pytest.mark.parametrize("items, match", [
    (["width"], "malformed arg 'width'"),
    (["=3"], "malformed arg '=3'"),
    (["1x=3"], "malformed arg '1x=3'"),
    (["class=3"], "malformed arg 'class=3'"),
    (["a b=1"], "malformed arg 'a b=1'"),
    (["a=1", "a=2"], "arg 'a' given twice"),
    ([3], "arg 3 is a int"),
])
def test_parse_args_rejects_malformed_items(items, match):
  with pytest.raises(zoo.SpecError, match=match) as e:
    zoo.parse_args(items)
  assert "\n" not in str(e.value)


# --- Errors: one line, naming the spec and what is accepted -------------------------------------

_MODEL, _SEG = zoo.load_generator, zoo.load_segmenter
_BAD_SPECS = [
    (_MODEL, "progan", None, "unknown model 'progan'"),
    (_MODEL, "color", None, "that is a segmenter name"),
    (_SEG, "upp", None, "a checkpoint kind: write upp:FOLDER"),
    (_SEG, "facegan", None, r"unknown segmenter 'facegan' \(that is a model name\)"),
    (_MODEL, "", None, "empty spec"),
    (_MODEL, "proggan:/no/such/x.pth", None, "no such file '/no/such/x.pth'"),
    (_MODEL, "proggan:", None, "missing ARGS after 'proggan:'; write proggan:PATH.pth"),
    (_MODEL, "facegan:/no/such/weights.tar", None, "no such file"),
    (_MODEL, "upp:/tmp", None, "upp: checkpoints are segmenters, not models"),
    (_SEG, "semseg:enc.pth,dec.pth", None, "expected 3 comma-separated parts"),
    (_SEG, "semseg:a,b,c,d", None, "got 4"),
    (_SEG, "semseg:e.pth,d.pth,resnet99", None, "unknown arch 'resnet99'; valid archs are"),
    (_SEG, "semseg:/no/e.pth,/no/d.pth,resnet50-upernet", None, "no such file '/no/e.pth'"),
    (_SEG, "upp:/no/such/folder", None, "no such folder '/no/such/folder'"),
    (_MODEL, "no-kind:x", None, "unknown kind 'no-kind'"),
    (_MODEL, "stylegan9:x.pkl", None,
     r"cannot import 'stylegan9' \(ModuleNotFoundError: No module .*not a kind either"),
    (_MODEL, "upp", None, "unknown model 'upp'; valid models"),
    (_MODEL, "tests.factory_models:", None, "'' after ':' is not a factory name"),
    (_MODEL, "tests.no_such_module:f", None, "No module named 'tests.no_such_module'"),
    (_MODEL, "tests.factory_models:nope", None,
     "no attribute 'nope'; it defines: make_generator, make_segmenter, not_a_model"),
    (_MODEL, "tests.factory_models:NOT_CALLABLE", None, "is a int, not a callable factory"),
    (_MODEL, "tests.factory_models:make_generator", {"depth": 3},
     r"does not accept the args passed \(depth=3\).*its parameters are \(width=8, seed=0\)"),
    (_MODEL, "tests.factory_models:make_generator", ["width=-1"],
     r"failed: ValueError: width is -1, expected a positive int \(args passed: width=-1\)"),
    (_MODEL, "tests.factory_models:make_generator", ["seed=[1, 2]"],
     r"failed: TypeError: .*\(args passed: seed=\[1, 2\]\)"),
    (_MODEL, "tests.factory_models:not_a_model", None,
     "returned a builtins.dict, expected a jaxdissect.model.Generator"),
    (_MODEL, "tests.factory_models:make_segmenter", None,
     "returned a jaxdissect.model.Segmenter, expected a jaxdissect.model.Generator"),
    (_SEG, "tests.factory_models:make_generator", None, "expected a jaxdissect.model.Segmenter"),
    (_MODEL, "planted", {"width": 4}, "does not accept the args passed"),
]


@pytest.mark.parametrize("load, spec, args, match", _BAD_SPECS)
def test_bad_spec_is_one_line_naming_it(importable_tests, load, spec, args, match):
  with pytest.raises(zoo.SpecError, match=match) as e:
    load(spec, args)
  message = str(e.value)
  assert "\n" not in message and repr(spec) in message, message
  noun = "model" if load is _MODEL else "segmenter"
  assert message.endswith(zoo.describe_specs(noun)), message


def test_bad_checkpoint_file_is_wrapped(tmp_path, proggan_file):
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a checkpoint\n" * 4)
  with pytest.raises(zoo.SpecError, match=r"the proggan loader failed: PthError: .*not a PyTorch "
                     "checkpoint") as e:
    zoo.load_generator(f"proggan:{garbage}")
  assert "\n" not in str(e.value) and str(garbage) in str(e.value)
  wrong = tmp_path / "wrong.pth"  # a readable file with the wrong keys (a ValueError of the port)
  test_pth.write_state_dict(wrong, {"layer1.conv.weight": proggan_file[1]["layer1.conv.weight"]})
  with pytest.raises(zoo.SpecError, match="failed: ValueError: expected an even, nonzero number"):
    zoo.load_generator(f"proggan:{wrong}")
  with pytest.raises(zoo.SpecError, match=r"does not accept the args passed \(depth=2\)"):
    zoo.load_generator(f"proggan:{proggan_file[0]}", {"depth": 2})


def test_default_segmenter_of_an_unknown_name():
  with pytest.raises(zoo.SpecError, match="unknown model 'progan'"):
    zoo.default_segmenter("progan")
