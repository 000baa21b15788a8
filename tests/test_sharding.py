"""Data-parallel dissection: 4 devices give exactly what 1 device gives, in the library and CLI.

Batches are split over the forced host CPU devices (conftest makes four) and the per-device
tallies merged with collectives; counts are integers and top-k ranks by (value, global index),
so every result must be bit-identical to the single-device run's. The planted world's generator
is batch-invariant; the scene GAN's convolutions round differently for other batch shapes on
CPU, so its runs fix `forward_chunk` (the documented way to make device counts agree).
"""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdissect import dissect, latents, planted, sharding, steps, warmup
from jaxdissect.stats import upsampled_kernels

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 180

pytestmark = pytest.mark.skipif(len(jax.devices()) < 4, reason="needs four (forced) devices")


def _config(model, layers, n, **kw):
  return dissect.Config(layers=tuple(layers), n=n, batch_size=20,
                        warmup=40, **kw)


def _assert_identical(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for layer in a:
    for name, x, y in zip(a[layer]._fields, a[layer], b[layer], strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{layer}.{name}")


def _assert_alike(a: dict, b: dict) -> None:
  """Dissections whose brackets differ in a value's last bit (the device ranks XLA's upsampled
  values, which may fuse a multiply-add; the host's compiled loops do not): the same labels
  and top images, thresholds to float32 rounding, IoU within the reported bound."""
  assert a.keys() == b.keys()
  for layer in a:
    x, y = a[layer], b[layer]
    for name in ("shape", "label", "top_values", "top_indices"):
      np.testing.assert_array_equal(np.asarray(getattr(x, name)), np.asarray(getattr(y, name)),
                                    err_msg=f"{layer}.{name}")
    np.testing.assert_allclose(x.thresholds, y.thresholds, rtol=1e-6, err_msg=layer)
    bound = np.maximum(x.iou_bound, y.iou_bound)[:, None] + 1e-6
    assert np.all(np.abs(x.iou - y.iou) <= bound), layer


def test_planted_on_four_devices_equals_one(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  config = _config("planted", ["layer1", "layer2"], 80)
  single = dissect.dissect(gen, seg, config)
  one = dissect.dissect(gen, seg, config, mesh=sharding.data_mesh(1))
  four = dissect.dissect(gen, seg, config, mesh=sharding.data_mesh(4))
  _assert_identical(one, single)
  _assert_identical(four, single)
  names = [name for name, _ in planted.CONCEPTS]
  for concept, (layer, unit) in planted.PLANTED.items():
    assert names[four[layer].label[unit]] == concept
  top = four["layer2"].top_indices
  assert top.min() >= 0 and top.max() >= 60, "top images must carry global indices"


def test_short_last_batch_is_tallied_once(planted_world):
  # n = 90: the last batch of 10 is padded to 20 for the models, then its 10 rows are re-split
  # as 2 per device and device 0 alone tallies the 2 left over.
  gen, seg = planted_world.generator, planted_world.segmenter
  config = _config("planted", ["layer2"], 90)
  one = dissect.dissect(gen, seg, config, mesh=sharding.data_mesh(1))
  four = dissect.dissect(gen, seg, config, mesh=sharding.data_mesh(4))
  _assert_identical(four, one)
  assert four["layer2"].top_indices.max() >= 80, "the short batch's images are ranked"


def test_scene_world_on_four_devices_equals_one(scene_world):
  gen, seg = scene_world.generator, scene_world.segmenter
  config = _config("sceneworld", ["layer6"], 80, forward_chunk=5)
  one = dissect.dissect(gen, seg, config, mesh=sharding.data_mesh(1))
  four = dissect.dissect(gen, seg, config, mesh=sharding.data_mesh(4))
  _assert_identical(four, one)
  assert four["layer6"].best_iou.max() > 0.04


@pytest.mark.parametrize("devices", [None, 4])
def test_device_warmup_finds_the_host_warmup_brackets(scene_world, devices, monkeypatch):
  # 50 warmup images in batches of 20: the last batch is short (padded on the mesh).
  gen, seg = scene_world.generator, scene_world.segmenter
  config = _config("sceneworld", ["layer4", "layer6"], 60)._replace(warmup=50)
  run = dissect.prepare(gen, seg, config, None if devices is None else sharding.data_mesh(devices))
  zs = [z for _, z in config.source.batches(50, config.batch_size, run.latent_shape)]
  shapes = run.shapes
  acts = [run.generate(sharding.shard_rows(run.mesh, latents.pad_rows(z, config.batch_size)))
          for z in zs]
  on_device = warmup.device_brackets(run.rule, shapes.layers, shapes.seg_size, run.mesh,
                                     [(len(z), a) for z, a in zip(zs, acts)])
  on_host = warmup.host_brackets(run.rule, shapes.layers, shapes.seg_size,
                                 [warmup.gathered(a, len(z)) for z, a in zip(zs, acts)],
                                 rows=50)
  # The same with a running top-k over one image at a time.
  small = warmup.host_brackets(run.rule, shapes.layers, shapes.seg_size,
                               [warmup.gathered(a, len(z)) for z, a in zip(zs, acts)],
                               rows=50, chunk_bytes=1)
  for layer in config.layers:
    for got, want in zip(small[layer], on_host[layer], strict=True):
      np.testing.assert_array_equal(got, want, err_msg=layer)
  # The host's compiled loops round a value's last bit apart from XLA's upsampling (a fused
  # multiply-add), so they agree to float32 rounding; ranking XLA's values on the host agrees
  # exactly.
  for layer in config.layers:
    np.testing.assert_allclose(on_device[layer], on_host[layer], rtol=1e-6, err_msg=layer)
  monkeypatch.setattr(upsampled_kernels, "fuses", lambda *args: False)
  unfused = warmup.host_brackets(run.rule, shapes.layers, shapes.seg_size,
                                 [warmup.gathered(a, len(z)) for z, a in zip(zs, acts)], rows=50)
  for layer in config.layers:
    for got, want in zip(on_device[layer], unfused[layer], strict=True):
      np.testing.assert_array_equal(got, want, err_msg=layer)


def test_device_warmup_dissects_alike_and_reports_non_finite(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  config = _config("planted", ["layer1", "layer2"], 80)
  host = dissect.dissect(gen, seg, config._replace(warmup_on="host"), mesh=sharding.data_mesh(4))
  device = dissect.dissect(gen, seg, config._replace(warmup_on="device"),
                           mesh=sharding.data_mesh(4))
  _assert_alike(device, host)

  def broken(params, z, edits=None, capture=None):
    image, acts = gen.apply_fn(params, z, edits, capture)
    acts["layer2"] = acts["layer2"].at[:, 0, 0, 4].set(np.inf)
    return image, acts

  with pytest.raises(FloatingPointError, match="layer2.*units \\[4\\]"):
    dissect.dissect(gen._replace(apply_fn=broken), seg, config._replace(warmup_on="device"))
  with pytest.raises(ValueError, match="warmup_on.*'gpu'.*auto"):
    dissect.dissect(gen, seg, config._replace(warmup_on="gpu"))


def test_merge_over_devices_equals_host_merge(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  config = _config("planted", ["layer2"], 40)
  run = dissect.prepare(gen, seg, config, sharding.data_mesh(4))
  state = dissect.start(run)
  for first, z in dissect.remaining(run, state):
    state = run.step(state, z, np.int32(first))
  per_device = [jax.tree.map(lambda x, i=i: np.asarray(x)[i], state) for i in range(4)]
  units = {layer: s[2] for layer, s in run.shapes.layers.items()}
  merge = steps.merge_fn(run.rule, units, run.num_concepts, config.topk)
  expected = per_device[0]
  for other in per_device[1:]:
    expected = merge(expected, other)
  got = dissect.gather_state(run, state)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(x, np.asarray(y))
  assert dissect.images_tallied(state) == 40 == int(got.images)
  assert int(got.stats["layer2"].pixels[0]) == 40 * 32 * 32


def test_batch_that_does_not_split_is_refused(planted_world):
  with pytest.raises(ValueError, match=r"batch_size 30 .* 4 devices.*multiple of 4 \(e\.g\. 32\)"):
    dissect.prepare(planted_world.generator, planted_world.segmenter,
                    _config("planted", ["layer2"], 40)._replace(batch_size=30),
                    sharding.data_mesh(4))
  with pytest.raises(ValueError, match=r"devices is 9; .* from 1 to 4"):
    sharding.data_mesh(9)


def test_default_device_count_is_the_most_that_splits_the_batch():
  assert jax.local_device_count() == 4
  got = {b: sharding.devices_for_batch(b) for b in (20, 10, 50, 30, 7, 1)}
  assert got == {20: 4, 10: 2, 50: 2, 30: 3, 7: 1, 1: 1}


def _env():
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=4")


def _cli(args, outdir, tmp_path):
  env = _env()
  cmd = [sys.executable, "-m", "experiments.dissect", "--quiet", "--images=false",
         "--outdir", str(outdir), *map(str, args)]
  proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT)
  assert proc.returncode == 0, f"{args} failed:\n{proc.stderr[-3000:]}"
  return (outdir / "dissect.json").read_bytes()


def test_cli_four_devices_writes_what_one_writes(tmp_path):
  args = ["--model", "planted", "--layers", "layer2", "--n", 80, "--batch_size", 20]
  four = _cli([*args, "--devices", 4], tmp_path / "four", tmp_path)
  one = _cli([*args, "--devices", 1], tmp_path / "one", tmp_path)
  assert four == one
  bad = subprocess.run([sys.executable, "-m", "experiments.dissect", "--quiet", "--model",
                        "planted", "--batch_size", "10", "--devices", "4", "--outdir", str(tmp_path / "bad")],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
  assert bad.returncode == 2 and "multiple of 4" in bad.stderr.strip().splitlines()[-1], (
      bad.stderr[-2000:])
  assert not (tmp_path / "bad" / "checkpoint").exists()
