"""VGG-16 and ResNet-18/50 classifier ports (`ports.vgg`, `ports.resnet_classifier`) against torch.

The reference networks are written here with `torch.nn` in torchvision's structure (torchvision is
not installed), so their `state_dict()` has torchvision's keys; the VGG-16 can also be built with
the research names of davidbau/dissect's `oldvgg16.py` (`features.conv5_3`, `classifier.fc8a`).
Weights are random with He-scaled convs and random BatchNorm statistics, so activations stay of
order one through every layer; files go through `torch.save` and back as released weights would.
The VGG-16s are narrow (the widths are read from the checkpoint) to keep the file fast; one test
loads a full-width one. Images are 32x32 or 64x64 (any size works: `AdaptiveAvgPool2d((7, 7))`).
"""

import collections
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (parity extra)")
nn = torch.nn

from jaxdissect import zoo  # noqa: E402
from jaxdissect.classifier import Classifier  # noqa: E402
from jaxdissect.model import Edit  # noqa: E402
from ports import classifiers, pth, resnet_classifier, vgg  # noqa: E402

TOL = 1e-4
BATCH = 2
# torchvision's VGG-16 ("D"), and a narrow one of the same structure for speed.
CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
NARROW = 8  # channels divided by this
NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1",
         "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")


# --- Reference networks -------------------------------------------------------------------------

def _randomize(model, seed):
  """He-normal conv and linear weights, small random biases, random BatchNorm statistics."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(0.3 + 0.4 * torch.rand(m.weight.shape, generator=gen))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
  return model.eval()


class TorchVGG16(nn.Module):
  """torchvision's `vgg16` (eval); `named` gives oldvgg16's research names to the children."""

  def __init__(self, narrow=1, hidden=4096, classes=1000, named=False, seed=0):
    super().__init__()
    layers, c_in, block, within = [], 3, 1, 0
    for item in CFG:
      if item == "M":
        layers.append((f"pool{block}", nn.MaxPool2d(2, 2)))
        block, within = block + 1, 0
      else:
        within += 1
        layers += [(f"conv{block}_{within}", nn.Conv2d(c_in, item // narrow, 3, padding=1)),
                   (f"relu{block}_{within}", nn.ReLU(inplace=True))]
        c_in = item // narrow
    heads = [("fc6", nn.Linear(c_in * 49, hidden)), ("relu6", nn.ReLU(True)),
             ("drop6", nn.Dropout()), ("fc7", nn.Linear(hidden, hidden)),
             ("relu7", nn.ReLU(True)), ("drop7", nn.Dropout()),
             ("fc8a", nn.Linear(hidden, classes))]
    if named:
      self.features = nn.Sequential(collections.OrderedDict(layers))
      self.classifier = nn.Sequential(collections.OrderedDict(heads))
    else:
      self.features = nn.Sequential(*[m for _, m in layers])
      self.classifier = nn.Sequential(*[m for _, m in heads])
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    _randomize(self, seed)

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  def relus(self):
    """{layer name: the ReLU module whose output is that layer's activation}."""
    feats = [m for m in self.features if isinstance(m, nn.ReLU)]
    return {**dict(zip(NAMES, feats)), "fc6": self.classifier[1], "fc7": self.classifier[4]}


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, c_in, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, c_in, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchResNet(nn.Module):
  """torchvision's `resnet18` / `resnet50` (eval)."""

  def __init__(self, depth, classes=1000, seed=0):
    super().__init__()
    block, counts = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}[depth]
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    c_in = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts), start=1):
      stride = 1 if i == 1 else 2
      down = None
      if stride != 1 or c_in != planes * block.expansion:
        down = nn.Sequential(nn.Conv2d(c_in, planes * block.expansion, 1, stride, bias=False),
                             nn.BatchNorm2d(planes * block.expansion))
      blocks = [block(c_in, planes, stride, down)]
      c_in = planes * block.expansion
      blocks += [block(c_in, planes) for _ in range(1, n)]
      setattr(self, f"layer{i}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(c_in, classes)
    _randomize(self, seed)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))

  def taps(self):
    return {"conv1": self.relu, **{f"layer{i}": getattr(self, f"layer{i}") for i in range(1, 5)}}


def _torch_run(model, images, taps, ablate=None):
  """Logits and `{name: NHWC activation}` of torchvision-normalised `images` (NHWC, [-1, 1]);
  `ablate = (module, units)` zeroes those channels of the module's output with a hook."""
  acts, hooks = {}, []
  for name, module in taps.items():
    hooks.append(module.register_forward_hook(
        lambda m, i, out, n=name: acts.__setitem__(n, out.clone())))
  if ablate is not None:
    module, units = ablate

    def zero(m, i, out):
      out = out.clone()
      out[:, units] = 0
      return out
    hooks.append(module.register_forward_hook(zero))
  x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  with torch.no_grad():
    logits = model(((x + 1) / 2 - mean) / std)
  for h in hooks:
    h.remove()
  nhwc = {n: (a.permute(0, 2, 3, 1) if a.ndim == 4 else a[:, None, None]).numpy()
          for n, a in acts.items()}
  return logits.numpy(), nhwc


def _images(size, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32)


def _save(tmp_path, name, obj):
  path = tmp_path / name
  torch.save(obj, path)
  return str(path)


def _close(ours, ref):
  ours = np.asarray(ours)
  assert ours.shape == ref.shape
  scale = max(1.0, float(np.abs(ref).max()))
  np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL * scale)


# --- VGG-16 -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def narrow_vgg(tmp_path_factory):
  """A narrow Places365-shaped VGG-16 (365 classes) saved in torchvision's layout."""
  model = TorchVGG16(NARROW, hidden=64, classes=365, seed=1)
  path = _save(tmp_path_factory.mktemp("vgg"), "vgg.pth", model.state_dict())
  return model, path


@pytest.mark.parametrize("size", [32, 64])
def test_vgg16_logits_and_activations_match_torch(narrow_vgg, size):
  model, path = narrow_vgg
  clf = vgg.load_vgg16(path, image_size=size)
  assert isinstance(clf, Classifier) and clf.image_shape == (size, size, 3)
  assert clf.layers == NAMES + ("fc6", "fc7") and clf.classes == tuple(map(str, range(365)))
  images = _images(size)
  capture = ("conv1_2", "conv3_3", "conv5_3", "fc6", "fc7")
  ref_logits, ref_acts = _torch_run(model, images, {n: model.relus()[n] for n in capture})
  logits, acts = clf.apply_fn(clf.params, images, capture=capture)
  _close(logits, ref_logits)
  assert set(acts) == set(capture)
  for name in capture:
    _close(acts[name], ref_acts[name])
  assert acts["fc7"].shape == (BATCH, 1, 1, 64) and acts["conv5_3"].shape[1:] == (
      size // 16, size // 16, 64)


def test_vgg16_places365_layouts_load_the_same(narrow_vgg, tmp_path):
  """dissect's named keys, DataParallel's `module.` prefix and a `state_dict` wrapper."""
  model, _ = narrow_vgg
  named = TorchVGG16(NARROW, hidden=64, classes=365, named=True, seed=1)
  assert "features.conv5_3.weight" in named.state_dict()
  assert "classifier.fc8a.weight" in named.state_dict()
  images = _images(32, seed=3)
  ref, _ = _torch_run(model, images, {})
  ref_named, _ = _torch_run(named, images, {})
  np.testing.assert_array_equal(ref, ref_named)  # the same random weights, other names
  prefixed = {"state_dict": collections.OrderedDict(
      ("module." + k, v) for k, v in named.state_dict().items()), "epoch": 90, "arch": "vgg16"}
  for sd in (named.state_dict(), prefixed):
    clf = vgg.load_vgg16(_save(tmp_path, "layout.pth", sd), image_size=32)
    _close(clf.apply_fn(clf.params, images)[0], ref)


def test_vgg16_conv5_3_ablation_matches_a_torch_hook(narrow_vgg):
  model, path = narrow_vgg
  clf = vgg.load_vgg16(path, image_size=32)
  units = [0, 5, 17, 63]
  images = _images(32, seed=4)
  alpha = jnp.zeros(64).at[jnp.asarray(units)].set(1.0)
  edit = {"conv5_3": Edit(alpha, jnp.zeros(64))}
  ref, ref_acts = _torch_run(model, images, {"conv5_3": model.relus()["conv5_3"]},
                             ablate=(model.relus()["conv5_3"], units))
  plain, _ = clf.apply_fn(clf.params, images)
  logits, acts = clf.apply_fn(clf.params, images, edits=edit, capture="conv5_3")
  _close(logits, ref)
  assert float(jnp.abs(logits - plain).max()) > 100 * TOL  # the ablation matters
  _close(acts["conv5_3"], ref_acts["conv5_3"])  # captured before the edit
  assert float(np.abs(ref_acts["conv5_3"][..., units]).max()) > 0


def test_full_width_vgg16_matches_torch(tmp_path):
  model = TorchVGG16(classes=1000, seed=2)
  path = _save(tmp_path, "vgg16.pth", model.state_dict())
  clf = vgg.load_vgg16(path, image_size=32)
  images = _images(32, seed=5)
  ref, _ = _torch_run(model, images, {})
  _close(clf.apply_fn(clf.params, images)[0], ref)
  assert clf.params["classifier.0"]["kernel"].shape == (7, 7, 512, 4096)


# --- ResNet -------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_matches_torch_in_the_places365_layout(tmp_path, depth):
  model = TorchResNet(depth, classes=365, seed=depth)
  sd = {"epoch": 45, "arch": f"resnet{depth}", "best_prec1": 54.7, "state_dict":
        collections.OrderedDict(("module." + k, v) for k, v in model.state_dict().items())}
  clf = resnet_classifier.load_resnet(_save(tmp_path, "r.pth.tar", sd), depth, image_size=64)
  assert clf.layers == ("conv1", "layer1", "layer2", "layer3", "layer4")
  assert len(clf.classes) == 365
  images = _images(64, seed=depth)
  capture = ("conv1", "layer1", "layer4")
  ref_logits, ref_acts = _torch_run(model, images, {n: model.taps()[n] for n in capture})
  logits, acts = clf.apply_fn(clf.params, images, capture=capture)
  _close(logits, ref_logits)
  for name in capture:
    _close(acts[name], ref_acts[name])
  width = 512 * (4 if depth == 50 else 1)
  assert acts["conv1"].shape == (BATCH, 32, 32, 64) and acts["layer4"].shape == (
      BATCH, 2, 2, width)


def test_resnet18_torchvision_layout_and_layer_edit(tmp_path):
  model = TorchResNet(18, classes=1000, seed=7)
  path = _save(tmp_path, "resnet18.pth", model.state_dict())  # has num_batches_tracked
  clf = resnet_classifier.load_resnet(path, 18, image_size=32)
  images = _images(32, seed=8)
  units = [1, 2, 300]
  ref, _ = _torch_run(model, images, {}, ablate=(model.layer4, units))
  alpha = jnp.zeros(512).at[jnp.asarray(units)].set(1.0)
  logits, _ = clf.apply_fn(clf.params, images, edits={"layer4": Edit(alpha, 0.0)})
  _close(logits, ref)


# --- Errors -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def narrow_sd(narrow_vgg):
  return pth.load_state_dict(narrow_vgg[1])


def test_missing_key_is_named(narrow_sd):
  sd = dict(narrow_sd)
  del sd["features.28.bias"]
  with pytest.raises(classifiers.ClassifierWeightsError, match="missing key.*'features.28.bias'"):
    vgg.from_state_dict(sd)
  del sd["classifier.6.weight"]
  with pytest.raises(classifiers.ClassifierWeightsError,
                     match="missing key.*'classifier.6.weight'.*named keys"):
    vgg.from_state_dict(sd)


def test_wrong_shapes_are_named(narrow_sd):
  sd = dict(narrow_sd, **{"features.28.bias": np.zeros(5, np.float32)})
  with pytest.raises(classifiers.ClassifierWeightsError,
                     match=r"'features.28.bias' has shape \[5\], expected \[64\]"):
    vgg.from_state_dict(sd)
  sd = dict(narrow_sd, **{"classifier.0.weight": np.zeros((64, 100), np.float32)})
  with pytest.raises(classifiers.ClassifierWeightsError,
                     match=r"'classifier.0.weight' has shape \[64, 100\], expected \[64, 3136\]"):
    vgg.from_state_dict(sd)


def test_wrong_depth_and_extra_keys_are_named(tmp_path):
  sd = {k: v.numpy() for k, v in TorchResNet(18, classes=10).state_dict().items()}
  with pytest.raises(classifiers.ClassifierWeightsError, match="missing key.*conv3"):
    resnet_classifier.from_state_dict(sd, 50)
  with pytest.raises(classifiers.ClassifierWeightsError, match="unexpected key.*'extra.weight'"):
    resnet_classifier.from_state_dict(dict(sd, **{"extra.weight": np.zeros(3)}), 18)
  with pytest.raises(ValueError, match="unknown ResNet depth 34"):
    resnet_classifier.from_state_dict(sd, 34)


def test_garbage_file_is_a_pth_error(tmp_path):
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"definitely not a checkpoint" * 10)
  with pytest.raises(pth.PthError, match="not a PyTorch checkpoint"):
    vgg.load_vgg16(garbage)
  with pytest.raises(pth.PthError):
    resnet_classifier.load_resnet(garbage, 18)


def test_bad_images_and_layers_are_refused(narrow_vgg):
  clf = vgg.load_vgg16(narrow_vgg[1], image_size=32)
  with pytest.raises(ValueError, match=r"images has shape \[2, 64, 64, 3\], expected \[\?, 32"):
    clf.apply_fn(clf.params, _images(64))
  with pytest.raises(ValueError, match="unknown layer 'pool5'.*'conv5_3', 'fc6', 'fc7'"):
    clf.apply_fn(clf.params, _images(32), capture="pool5")
  with pytest.raises(ValueError, match="unknown layer 'fc8'"):
    clf.apply_fn(clf.params, _images(32), edits={"fc8": Edit(1.0, 0.0)})
  with pytest.raises(ValueError, match="image_size 16"):
    vgg.load_vgg16(narrow_vgg[1], image_size=16)


# --- Class names --------------------------------------------------------------------------------

def test_class_names_in_both_formats(tmp_path, narrow_vgg):
  places = tmp_path / "categories_places365.txt"
  lines = [f"/{n[0]}/{n} {i}" for i, n in enumerate(["airfield", "apartment_building/outdoor"] +
                                                    [f"class{i}" for i in range(2, 365)])]
  places.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n\n")
  clf = vgg.load_vgg16(narrow_vgg[1], places, image_size=32)
  assert clf.classes[:3] == ("airfield", "apartment_building/outdoor", "class2")
  plain = tmp_path / "names.txt"
  plain.write_text("\n".join(f"tench, Tinca tinca {i}x" for i in range(365)))
  assert classifiers.read_class_names(plain)[4] == "tench, Tinca tinca 4x"
  assert vgg.load_vgg16(narrow_vgg[1], [f"c{i}" for i in range(365)]).classes[-1] == "c364"


@pytest.mark.parametrize("text, match", [
    ("", "no class names"),
    ("a\n\nb\n", "line 2 is blank"),
    ("/a/abbey 0\n/b/bar 2\n", "line 2 has index 2.*0 .. 1 once each"),
    ("/a/abbey 0\n/a/abbey 0\n", "line 2 has index 0"),
    ("/a/abbey 0\nbar\n", "line 2 'bar' is not 'NAME INDEX'"),
    ("a\nb\n", "2 class names, but the checkpoint's last layer has 365 outputs"),
])
def test_bad_class_names_are_one_line(tmp_path, narrow_vgg, text, match):
  path = tmp_path / "names.txt"
  path.write_text(text)
  with pytest.raises(classifiers.ClassNamesError, match=match) as e:
    vgg.load_vgg16(narrow_vgg[1], path)
  assert "\n" not in str(e.value)


def test_unreadable_class_names(tmp_path, narrow_vgg):
  with pytest.raises(classifiers.ClassNamesError, match="cannot read class names"):
    vgg.load_vgg16(narrow_vgg[1], tmp_path / "absent.txt")
  binary = tmp_path / "binary.txt"
  binary.write_bytes(b"\xff\xfe\x00garbage")
  with pytest.raises(classifiers.ClassNamesError, match="cannot read class names"):
    vgg.load_vgg16(narrow_vgg[1], binary)


# --- Specs --------------------------------------------------------------------------------------

def test_classifier_specs(tmp_path, narrow_vgg):
  clf = zoo.load_classifier(f"vgg16_places365:{narrow_vgg[1]}", ["image_size=32"])
  assert isinstance(clf, Classifier) and clf.image_shape == (32, 32, 3)
  assert len(zoo.load_classifier(f"vgg16:{narrow_vgg[1]}").classes) == 365
  small = _save(tmp_path, "r18.pth", TorchResNet(18, classes=10).state_dict())
  assert zoo.load_classifier(f"resnet18:{small}").classes == tuple(map(str, range(10)))
  with pytest.raises(zoo.SpecError, match="the resnet50 loader failed: ClassifierWeightsError"):
    zoo.load_classifier(f"resnet50:{small}")
  imagenet_like = _save(tmp_path, "v.pth", TorchVGG16(NARROW, hidden=16, classes=10).state_dict())
  with pytest.raises(zoo.SpecError, match="has 10 classes, not Places365's 365"):
    zoo.load_classifier(f"vgg16_places365:{imagenet_like}")
  with pytest.raises(zoo.SpecError, match="no such file"):
    zoo.load_classifier("vgg16:/no/such/file.pth")
  with pytest.raises(zoo.SpecError, match="vgg16: checkpoints are classifiers, not models"):
    zoo.load_generator(f"vgg16:{small}")
  with pytest.raises(zoo.SpecError, match="upp: checkpoints are segmenters, not classifiers"):
    zoo.load_classifier("upp:/x")
  spec = zoo.describe_specs("classifier")
  assert "a checkpoint (" in spec and "'sceneworld'" in spec and "vgg16_places365:PATH" in spec
  assert "resnet50:PATH" in spec and "vgg16" not in zoo.describe_specs("model")


def test_register_a_classifier_name(narrow_vgg, monkeypatch):
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))  # for tests.*
  zoo.register_classifier("tinyvgg", lambda image_size=224: vgg.load_vgg16(
      narrow_vgg[1], image_size=image_size))
  try:
    assert zoo.load_classifier("tinyvgg", {"image_size": 64}).image_shape == (64, 64, 3)
    assert "'tinyvgg'" in zoo.describe_specs("classifier")
    with pytest.raises(ValueError, match="'tinyvgg' is already registered"):
      zoo.register_classifier("tinyvgg", vgg.load_vgg16)
  finally:
    zoo.CLASSIFIERS.pop("tinyvgg", None)
  with pytest.raises(zoo.SpecError, match=r"unknown classifier 'planted' \(that is a model name"):
    zoo.load_classifier("planted")
  with pytest.raises(zoo.SpecError, match="returned a .*Generator, expected a .*Classifier"):
    zoo.load_classifier("tests.factory_models:make_generator")
