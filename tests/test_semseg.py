"""CSAIL ADE20K segmenter port: parity with the original PyTorch networks (`mit_semseg`), the
PyTorch-exact resampling helpers, the checkpoint converter's checks, and the segmenter protocol.

Parity tests build the original encoder/decoder with random weights and random BatchNorm
statistics and compare class probabilities on odd-sized images, so any mismatch in padding,
dilation, pooling bins, resize rule or normalisation shows. They skip without torch/mit_semseg.
"""

import functools
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.model import Segmenter
from ports import semseg
from ports.ade20k_names import NAMES

PARITY_ARCHS = (
    "resnet18dilated-ppm_deepsup",
    "resnet50dilated-ppm_deepsup",
    "mobilenetv2dilated-c1_deepsup",
    "resnet101-upernet",
)
PROB_TOL = 1e-4
LOGPROB_TOL = 2e-3
LOGIT_STD = 3.0
ARCH_SEEDS = {arch: i for i, arch in enumerate(PARITY_ARCHS)}
ARCH = "mobilenetv2dilated-c1_deepsup"  # converter and file tests: cheap, depthwise convs
IMAGE_SHAPE = (2, 37, 29, 3)  # -> 19x15 after the stem conv, 10x8 after max-pool, ...


def _torch():
  """torch and the original's model modules, or a skip."""
  torch = pytest.importorskip("torch", reason="parity tests compare against PyTorch")
  models = pytest.importorskip("mit_semseg.models.models",
                               reason="parity tests need the original mit_semseg package")
  nets = importlib.import_module("mit_semseg.models.resnet")
  mobile = importlib.import_module("mit_semseg.models.mobilenet")
  return torch, models, nets, mobile


def _random_images(shape, seed):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# --- Resampling helpers against PyTorch -----------------------------------------------------

@pytest.mark.parametrize("src,dst", [((3, 2), (70, 58)), ((9, 8), (70, 58)), ((6, 6), (3, 2)),
                                     ((70, 58), (9, 13)), ((5, 7), (5, 7)), ((4, 4), (8, 8))])
def test_resize_bilinear_matches_interpolate(src, dst):
  torch, *_ = _torch()
  x = _random_images((2, *src, 3), 0)
  want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=dst,
                                         mode="bilinear", align_corners=False)
  got = semseg.resize_bilinear(jnp.asarray(x), dst)
  np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=2e-6)


@pytest.mark.parametrize("src,dst", [((9, 8), (6, 6)), ((2, 3), (6, 6)), ((7, 5), (3, 2)),
                                     ((9, 8), (1, 1)), ((13, 11), (6, 3))])
def test_adaptive_avg_pool_matches_torch(src, dst):
  torch, *_ = _torch()
  x = _random_images((2, *src, 4), 1)
  want = torch.nn.AdaptiveAvgPool2d(dst)(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  got = semseg.adaptive_avg_pool(jnp.asarray(x), dst)
  np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=2e-6)


# --- Whole-network parity ------------------------------------------------------------------

def _original(arch, torch, models, nets, mobile):
  """The original encoder and decoder for `arch`, built without any download."""
  enc_name, dec_name = arch.split("-")
  if enc_name == "mobilenetv2dilated":
    encoder = models.MobileNetV2Dilated(mobile.mobilenetv2(pretrained=False), dilate_scale=8)
    fc_dim = 320
  else:
    depth = enc_name.removeprefix("resnet").removesuffix("dilated")
    orig = getattr(nets, f"resnet{depth}")(pretrained=False)
    dilated = enc_name.endswith("dilated")
    encoder = models.ResnetDilated(orig, dilate_scale=8) if dilated else models.Resnet(orig)
    fc_dim = 512 if depth == "18" else 2048
  decoder = models.ModelBuilder.build_decoder(dec_name, fc_dim=fc_dim, num_class=150,
                                              use_softmax=True)
  return encoder, decoder


def _to_nchw(torch, images):
  """Our [-1, 1] NHWC images as the original's normalised NCHW input, computed independently."""
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  return torch.from_numpy((((images + 1) / 2 - mean) / std).transpose(0, 3, 1, 2).copy())


def _randomize(torch, encoder, decoder, seed):
  """Random conv weights and BN affines; BN statistics measured on random images (so activations
  stay O(1) through 100 layers), then perturbed so they are not the test batch's statistics; the
  classifier scaled to logits of standard deviation LOGIT_STD, so the softmax is neither flat
  (errors hidden in tiny probabilities) nor saturated (errors hidden in 0 and 1)."""
  g = torch.Generator().manual_seed(seed)
  bns = []
  with torch.no_grad():
    for m in list(encoder.modules()) + list(decoder.modules()):
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        m.weight.normal_(0, math.sqrt(2 / fan_in), generator=g)
        if m.bias is not None:
          m.bias.normal_(0, 0.3, generator=g)
      elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.3, generator=g)
        m.momentum = 1.0  # running stats := this batch's stats
        bns.append(m)
    for m in encoder.modules():  # small residual branches keep 33 blocks well conditioned
      last_bn = {"Bottleneck": "bn3", "BasicBlock": "bn2"}.get(type(m).__name__)
      if last_bn:
        getattr(m, last_bn).weight.uniform_(0.1, 0.4, generator=g)
    encoder.train(), decoder.train()
    calib = _to_nchw(torch, _random_images((2, 40, 32, 3), seed + 1))
    decoder(encoder(calib, return_feature_maps=True), segSize=(40, 32))
    for m in bns:  # floor: a channel that was ~constant on the few calibration pixels would
      var = m.running_var  # otherwise be divided by sqrt(eps) and turn float noise into signal
      var.clamp_(min=0.25 * var.mean().item() + 1e-3)
      m.running_mean.add_(0.2 * var.sqrt() * torch.randn(m.num_features, generator=g))
      var.mul_(torch.empty(m.num_features).uniform_(0.7, 1.4, generator=g))
    encoder.eval(), decoder.eval()
    last = decoder.conv_last
    classifier = last[-1] if isinstance(last, torch.nn.Sequential) else last
    seen = []
    hook = classifier.register_forward_hook(lambda m, i, out: seen.append(out))
    decoder(encoder(calib, return_feature_maps=True), segSize=(40, 32))
    hook.remove()
    factor = LOGIT_STD / seen[0].std().item()
    classifier.weight.mul_(factor), classifier.bias.mul_(factor)


@functools.lru_cache(maxsize=None)
def _random_original(arch):
  """The original encoder and decoder of `arch` with random weights (built once per arch)."""
  torch, models, nets, mobile = _torch()
  torch.manual_seed(0)
  encoder, decoder = _original(arch, torch, models, nets, mobile)
  _randomize(torch, encoder, decoder, seed=ARCH_SEEDS[arch])
  return encoder, decoder


@functools.lru_cache(maxsize=None)
def _jit_logits(arch):
  """One compiled `semseg.logits` per arch, shared by the tests that use the same shapes."""
  return jax.jit(functools.partial(semseg.logits, arch=arch))


def _state_dict(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _original_probs(torch, encoder, decoder, images):
  """The original's inference (SegmentationModule with segSize): NHWC probabilities."""
  with torch.no_grad():
    x = _to_nchw(torch, images)
    probs = decoder(encoder(x, return_feature_maps=True), segSize=images.shape[1:3])
  return probs.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("arch", PARITY_ARCHS)
def test_parity_with_original(arch):
  torch, *_ = _torch()
  encoder, decoder = _random_original(arch)
  images = _random_images(IMAGE_SHAPE, 7)  # odd sizes: uneven pools, non-integer resizes
  want = _original_probs(torch, encoder, decoder, images)

  params = semseg.convert(_state_dict(encoder), _state_dict(decoder), arch)
  scores = _jit_logits(arch)(params, jnp.asarray(images))
  got = np.asarray(jax.nn.softmax(scores, axis=-1))
  log_got = np.asarray(jax.nn.log_softmax(scores, axis=-1))

  # The comparison must be able to fail: the reference is neither flat nor one-hot.
  peak = want.max(-1)
  assert 0.15 < peak.mean() < 0.95, f"reference softmax too flat or too sharp: {peak.mean()}"
  assert len(np.unique(want.argmax(-1))) > 3
  assert got.shape == want.shape == (*IMAGE_SHAPE[:3], 150)
  prob_err = np.abs(got - want).max()
  log_err = np.abs(log_got - np.log(np.maximum(want, 1e-30))).max()
  assert prob_err <= PROB_TOL and log_err <= LOGPROB_TOL, (prob_err, log_err)


# --- Converter ------------------------------------------------------------------------------

def _synthetic_state_dicts(arch, seed=0):
  """State dicts with every expected key, random values, plus deep-sup and BN extra keys."""
  rng = np.random.default_rng(seed)
  shapes = semseg.state_dict_shapes(arch)
  enc, dec = ({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes[p].items()}
              for p in ("encoder", "decoder"))
  enc["features.0.1.num_batches_tracked"] = np.array(3)
  enc["features.0.1._running_iter"] = np.ones(1, np.float32)
  dec["cbr_deepsup.0.weight"] = np.zeros((80, 160, 3, 3), np.float32)
  dec["conv_last_deepsup.bias"] = np.zeros(150, np.float32)
  return enc, dec


def test_convert_layout_prefix_and_ignored_keys():
  enc, dec = _synthetic_state_dicts(ARCH)
  params = semseg.convert(enc, dec, ARCH)
  prefixed = semseg.convert({"module." + k: v for k, v in enc.items()},
                            {"module." + k: v for k, v in dec.items()}, ARCH)
  jax.tree.map(np.testing.assert_array_equal, params, prefixed)
  dw = params["encoder"]["features.7"]["conv.3"]["kernel"]  # depthwise: torch (C, 1, 3, 3)
  np.testing.assert_array_equal(dw, enc["features.7.conv.3.weight"].transpose(2, 3, 1, 0))
  bn = params["decoder"]["cbr.1"]
  np.testing.assert_array_equal(bn["var"], dec["cbr.1.running_var"])
  np.testing.assert_array_equal(bn["scale"], dec["cbr.1.weight"])


def test_convert_names_missing_unexpected_and_misshaped_keys():
  enc, dec = _synthetic_state_dicts(ARCH)
  with pytest.raises(ValueError, match=r"missing key\(s\) 'cbr\.1\.running_mean'"):
    semseg.convert(enc, {k: v for k, v in dec.items() if k != "cbr.1.running_mean"}, ARCH)
  with pytest.raises(ValueError, match=r"unexpected key\(s\) 'features\.18\.0\.weight'"):
    semseg.convert({**enc, "features.18.0.weight": np.zeros(1)}, dec, ARCH)
  with pytest.raises(ValueError, match=r"'conv_last\.weight' has shape \[151, 80, 1, 1\]"):
    semseg.convert(enc, {**dec, "conv_last.weight": np.zeros((151, 80, 1, 1))}, ARCH)
  with pytest.raises(ValueError, match="resnet50dilated-ppm_deepsup"):
    semseg.convert(enc, dec, "resnet50-ppm")


# --- Protocol -------------------------------------------------------------------------------

def test_names_and_concepts():
  assert len(NAMES) == len(set(NAMES)) == 150
  assert NAMES[:3] == ("wall", "building", "sky") and NAMES[-1] == "flag"
  assert semseg.CONCEPTS[0] == ("-", "-")
  assert semseg.CONCEPTS[1:] == tuple((n, "object") for n in NAMES)


def test_segmenter_protocol_and_seg_size():
  arch = "resnet18dilated-c1_deepsup"
  enc, dec = _synthetic_state_dicts(arch, seed=1)
  for sd in (enc, dec):  # fan-in scaled kernels and positive variances: finite, varied logits
    for k, v in sd.items():
      if v.ndim == 4:
        sd[k] = v / np.sqrt(np.prod(v.shape[1:]))
      elif k.endswith("running_var"):
        sd[k] = np.abs(v) + 0.5
  seg = semseg.make_segmenter(semseg.convert(enc, dec, arch), arch, seg_size=(20, 12))
  assert isinstance(seg, Segmenter) and len(seg.concepts) == 151
  images = jnp.asarray(_random_images((2, 40, 24, 3), 3))
  probs = jax.jit(seg.segment_fn)(seg.params, images)
  labels = jax.jit(seg.label_fn)(seg.params, images)
  assert probs.shape == (2, 20, 12, 151) and labels.shape == (2, 20, 12, 1)
  assert labels.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(probs[..., 0]), 0.0)
  np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(labels[..., 0]), np.asarray(probs.argmax(-1)))
  assert int(labels.min()) >= 1 and len(np.unique(np.asarray(labels))) > 1
  with pytest.raises(ValueError, match="images has shape"):
    seg.segment_fn(seg.params, images[..., :1])
  with pytest.raises(ValueError, match="seg_size"):
    semseg.make_segmenter(seg.params, arch, seg_size=(20,))


# --- File round trip ------------------------------------------------------------------------

def test_load_from_pth_files(tmp_path):
  torch, *_ = _torch()
  try:
    importlib.import_module("ports.pth")
  except ImportError as e:
    pytest.skip(f"ports.pth is not importable yet ({e})")
  encoder, decoder = _random_original(ARCH)
  paths = [str(tmp_path / f"{part}_epoch_20.pth") for part in ("encoder", "decoder")]
  torch.save(encoder.state_dict(), paths[0])
  torch.save(decoder.state_dict(), paths[1])
  seg = semseg.load(*paths, ARCH)
  assert seg.concepts == semseg.CONCEPTS
  images = _random_images(IMAGE_SHAPE, 5)
  want = _original_probs(torch, encoder, decoder, images)
  got = np.asarray(jax.nn.softmax(_jit_logits(ARCH)(seg.params, jnp.asarray(images)), axis=-1))
  assert np.abs(got - want).max() <= PROB_TOL
