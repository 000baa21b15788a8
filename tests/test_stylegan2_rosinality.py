"""StyleGAN2 from `rosinality/stylegan2-pytorch` state dicts: parity with that code.

`tests/data/stylegan2_rosinality_golden.npz` holds what rosinality's own `Generator` (size 16,
style_dim 32, n_mlp 2: its channel table fixes 512 channels) computed with the weights
`nvlabs_to_rosinality(random_state_dict(CFG, 16))` below, fixed noise buffers and truncation 0.7
towards `latent_avg` (how it was made: `tests/data/stylegan2_golden.md`). The checkpoint goes
through `torch.save` and `ports.stylegan2.load` (no torch in the loader) when torch is installed.
"""

import pathlib

import jax
import numpy as np
import pytest

from ports import stylegan2 as sg

GOLDEN = pathlib.Path(__file__).parent / "data" / "stylegan2_rosinality_golden.npz"
CFG = sg.Config(32, 32, (32, 32, 32), (512, 512, 512))
SEED, PSI, SAMPLE, PRIME = 16, 0.7, 4096, 7919


def nvlabs_to_rosinality(sd):
  """The inverse of `sg.rosinality_to_nvlabs`: `(rosinality state dict, latent_avg)`."""
  out, layers = {}, {"synthesis.b4.conv1": ("conv1", 0), "synthesis.b4.torgb": ("to_rgb1", None)}
  for k, r in enumerate(CFG.resolutions[1:]):
    layers[f"synthesis.b{r}.conv0"] = (f"convs.{2 * k}", 2 * k + 1)
    layers[f"synthesis.b{r}.conv1"] = (f"convs.{2 * k + 1}", 2 * k + 2)
    layers[f"synthesis.b{r}.torgb"] = (f"to_rgbs.{k}", None)
    out[f"convs.{2 * k}.conv.blur.kernel"] = 4 * sg.fir_filter()
    out[f"to_rgbs.{k}.upsample.kernel"] = 4 * sg.fir_filter()
  for i in range(len(CFG.mapping_features) - 1):
    for p in ("weight", "bias"):
      out[f"style.{i + 1}.{p}"] = sd[f"mapping.fc{i}.{p}"]
  out["input.input"] = sd["synthesis.b4.const"][None]
  for nv, (ro, noise) in layers.items():
    w = sd[f"{nv}.weight"]
    scale = 1.0 if ro.startswith("to_rgb") else np.sqrt(np.prod(w.shape[1:]))
    out[f"{ro}.conv.weight"] = (w * np.float32(scale))[None]
    for p in ("weight", "bias"):
      out[f"{ro}.conv.modulation.{p}"] = sd[f"{nv}.affine.{p}"]
    if noise is None:
      out[f"{ro}.bias"] = sd[f"{nv}.bias"].reshape(1, -1, 1, 1)
    else:
      out[f"{ro}.activate.bias"] = sd[f"{nv}.bias"]
      out[f"{ro}.noise.weight"] = sd[f"{nv}.noise_strength"].reshape(1)
      out[f"noises.noise_{noise}"] = sd[f"{nv}.noise_const"][None, None]
  return out, sd["mapping.w_avg"][None]


def _sample(a):
  flat = np.asarray(a).reshape(-1)
  return flat if flat.size <= SAMPLE else flat[(np.arange(SAMPLE) * PRIME) % flat.size]


def test_rosinality_parity(tmp_path):
  with np.load(GOLDEN) as g:
    golden = dict(g)
  sd, latent_avg = nvlabs_to_rosinality(sg.random_state_dict(CFG, SEED))
  torch = pytest.importorskip("torch", reason="torch not installed (test extra)")
  path = tmp_path / "stylegan2-16.pt"
  torch.save({"g_ema": {k: torch.from_numpy(v.copy()) for k, v in sd.items()},
              "latent_avg": torch.from_numpy(latent_avg.copy())}, path)
  gen = sg.load(str(path), truncation_psi=PSI)
  names = tuple(n for n in gen.layers if not n.endswith("torgb")) + sg.style_layers(CFG)
  apply = jax.jit(gen.apply_fn, static_argnames="capture")
  image, acts = apply(gen.params, golden["z"], capture=names)
  errors = {"image": float(np.abs(image - golden["image"]).max())}
  for n in names:
    errors[n] = float(np.abs(_sample(acts[n]) - golden[f"act/{n}"]).max())
  worst = max(errors, key=errors.get)
  assert errors[worst] <= 1e-4, f"{worst} differs by {errors[worst]:.3g}; all: {errors}"
  assert np.std(golden["image"]) > 0.5


def test_rosinality_truncation_needs_latent_avg(tmp_path):
  torch = pytest.importorskip("torch", reason="torch not installed (test extra)")
  sd, _ = nvlabs_to_rosinality(sg.random_state_dict(CFG, SEED))
  path = tmp_path / "bare.pt"
  torch.save({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, path)
  assert sg.load(str(path)).layers[-1] == "b16.torgb"
  with pytest.raises(ValueError, match="no 'latent_avg'"):
    sg.load(str(path), truncation_psi=0.5)
