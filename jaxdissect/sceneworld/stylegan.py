"""The scene world's StyleGAN2: the same data as the scene ProgGAN, a style-based generator.

GAN Dissection compared architectures by dissecting them on the same data. This is the
`ports.stylegan2` generator at 64x64 with the scene ProgGAN's channels per resolution
(`gan.SIZES`: 128 at 4x4 and 8x8, then 48, 24, 12) and its latent size, a 4-layer mapping
network, trained by the same loop, discriminator, loss, R1 and EMA as the ProgGAN
(`python -m experiments.train_scene_gan --arch stylegan2`), so that the generator's
architecture is the one difference between the two. Training adds random noise inputs (the
generator then draws with the checkpoint's fixed `noise_const`, as the original's `generate.py`
does) and tracks `w_avg`, the running mean of w, as the original does; it leaves out style
mixing and the path-length penalty.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import checkpoint
from jaxdissect.model import Generator
from jaxdissect.sceneworld import gan
from ports import stylegan2

ZDIM = gan.ZDIM
W_DIM = gan.ZDIM
MAPPING_LAYERS = 4
CONFIG = stylegan2.Config(z_dim=ZDIM, w_dim=W_DIM, mapping_features=(ZDIM,) + (W_DIM,) * 4,
                          channels=tuple(gan.SIZES[1:]))
W_AVG_BETA = 0.995  # the original's `w_avg_beta`

DEFAULT_PATH = os.path.join(os.path.dirname(gan.DEFAULT_PATH), "stylegan2")
REMAKE = "python -m experiments.train_scene_gan --arch stylegan2"


def layer_names(cfg: stylegan2.Config = CONFIG) -> tuple[str, ...]:
  """The feature-map layers (`b4.conv1`, `b4.torgb`, `b8.conv0`, ..., `b64.torgb`)."""
  return stylegan2.layer_names(cfg)


def init_generator_params(key: jax.Array, cfg: stylegan2.Config = CONFIG) -> dict:
  """Fresh params initialised as the original initialises (`stylegan2.initial_state_dict`),
  seeded by `key`."""
  seed = int(jax.random.randint(key, (), 0, 2 ** 31 - 1))
  sd = stylegan2.initial_state_dict(cfg, seed)
  return jax.tree.map(jnp.asarray, stylegan2.convert_state_dict(sd, cfg))


def generator_like(cfg: stylegan2.Config = CONFIG) -> Any:
  """The params structure (ShapeDtypeStructs) of a generator of `cfg`, for loading."""
  sd = {k: np.zeros(s, np.float32) for k, s in stylegan2.expected_shapes(cfg).items()}
  for k in sd:
    if k.endswith("resample_filter"):
      sd[k] = cfg.filter()
  params = stylegan2.convert_state_dict(sd, cfg)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.float32), params)


def make_generator(params: dict, cfg: stylegan2.Config = CONFIG, **options: Any) -> Generator:
  """The protocol `Generator` for `params` (`options` as `stylegan2.make_apply_fn`)."""
  return stylegan2.generator_with(cfg, params, **options)


def load_generator(path: str = DEFAULT_PATH, cfg: stylegan2.Config = CONFIG,
                   **options: Any) -> Generator:
  """The trained scene StyleGAN2 saved at `path` (default noise: the fixed `noise_const`).

  Raises `checkpoint.CheckpointError`, naming the path and the command that regenerates it, if
  the checkpoint is missing, unreadable or of another architecture.
  """
  params = checkpoint.load(path, generator_like(cfg), remake=REMAKE)
  return make_generator(params, cfg, **options)


def training_generate(cfg: stylegan2.Config = CONFIG
                      ) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """`generate(params, z, key) -> (images, mean w)` with random noise from `key` (for
  `gan.make_adversarial_step`)."""
  apply_fn = stylegan2.make_apply_fn(cfg, noise="random")

  def generate(params, z, key):
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw `PRNGKey` as training uses
      key = jax.random.wrap_key_data(key)
    images, acts = apply_fn(params, z, capture=(stylegan2.W,), noise_key=key)
    return images, jax.lax.stop_gradient(jnp.mean(acts[stylegan2.W][:, 0, 0, :], axis=0))

  return generate


def track_w_avg(params: Any, w_mean: jax.Array) -> Any:
  """`params` with `w_avg` moved towards the batch's mean w (`W_AVG_BETA`), as in training."""
  mapping = dict(params["mapping"])
  mapping["w_avg"] = w_mean + W_AVG_BETA * (mapping["w_avg"] - w_mean)
  return {**params, "mapping": mapping}


def make_train_step(d_sizes: tuple[int, ...], lr: float, r1: float, r1_every: int,
                    ema_decay: float, cfg: stylegan2.Config = CONFIG):
  """The jitted `train_step(state, reals, with_r1) -> (state, metrics)` of this StyleGAN2."""
  return gan.make_adversarial_step(training_generate(cfg), cfg.z_dim, d_sizes, lr, r1, r1_every,
                                   ema_decay, after_g_step=track_w_avg)
