"""The scene world's ProgGAN: the generator jaxdissect dissects out of the box, and its critic.

GAN Dissection studies Progressive GAN generators. The embedded default is the same architecture
(`ports.proggan`) at 64x64, trained on rendered scenes whose labels are exact, so dissection and
intervention results can be checked against a known world. Channel counts are small enough that
the GAN trains in about 75 minutes on 2 CPU cores (`experiments/train_scene_gan.py`); the shipped
weights are the EMA generator parameters, saved through `jaxdissect.checkpoint`.

The discriminator mirrors ProgGAN's: equalized learning-rate convolutions (N(0, 1) weights scaled
by He's constant at run time), LeakyReLU(0.2), 2x2 average-pool downsampling, a minibatch standard
deviation feature at 4x4 and a final dense logit.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect import checkpoint
from jaxdissect.model import Generator
from jaxdissect.sceneworld.render import tile
from jaxdissect.zsample import standard_z
from ports import proggan

ZDIM = 64
# [zdim, c_4, c_8, c_16, c_32, c_64]: a 64x64 ProgGAN (layer1 .. layer10, output_64x64).
SIZES: tuple[int, ...] = (ZDIM, 128, 128, 48, 24, 12)
# Discriminator channels per resolution, from 64x64 down to 4x4.
D_SIZES: tuple[int, ...] = (12, 24, 48, 96, 128)

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "generator")
REMAKE = "python -m experiments.train_scene_gan"

_LEAK = 0.2
_MBSTD_GROUP = 4


def layer_names(sizes: Sequence[int] = SIZES) -> tuple[str, ...]:
  """The generator's published layer names (`layer1` .. `layer10`, `output_64x64`)."""
  return proggan.layer_names(sizes)


def sample_z(n: int, seed: int) -> np.ndarray:
  """The scene GAN's latents: `standard_z(n, seed, ZDIM)`, deterministic and prefix-stable."""
  return standard_z(n, seed, ZDIM)


def make_generator(params: dict, sizes: Sequence[int] = SIZES) -> Generator:
  """The protocol `Generator` for ProgGAN `params` of channel list `sizes`."""
  return Generator(proggan.make_apply_fn(sizes), params, proggan.layer_names(sizes),
                   (sizes[0],))


def init_generator_params(key: jax.Array, sizes: Sequence[int] = SIZES) -> dict:
  """Fresh generator params (N(0, 1) kernels, zero biases), as the ProgGAN port initialises."""
  return proggan.make_generator(sizes, key).params


def generator_like(sizes: Sequence[int] = SIZES) -> dict:
  """The params structure (ShapeDtypeStructs) of a generator of `sizes`, for loading."""
  return jax.eval_shape(lambda k: init_generator_params(k, sizes), jax.random.key(0))


def load_generator(path: str = DEFAULT_PATH, sizes: Sequence[int] = SIZES) -> Generator:
  """The trained scene generator saved at `path`.

  Raises `checkpoint.CheckpointError`, naming the path and the command that regenerates it, if
  the checkpoint is missing, unreadable or of another architecture.
  """
  params = checkpoint.load(path, generator_like(sizes), remake=REMAKE)
  return make_generator(params, sizes)


def save_generator(path: str, params: dict) -> None:
  """Saves generator `params` as float32 to `path` (the format `load_generator` reads)."""
  checkpoint.save(path, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params))


class _EqConv(nn.Module):
  """A k x k 'SAME' convolution with equalized learning rate: `conv(x, w * gain/sqrt(fan_in))`."""

  features: int
  kernel_size: int = 3
  gain: float = math.sqrt(2)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, c_in = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, c_in, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    scale = self.gain / math.sqrt(k * k * c_in)
    y = jax.lax.conv_general_dilated(x, kernel * scale, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


class _EqDense(nn.Module):
  """A dense layer with equalized learning rate."""

  features: int
  gain: float = math.sqrt(2)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return x @ (kernel * (self.gain / math.sqrt(x.shape[-1]))) + bias


def _avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling of `[B, H, W, C]`."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def minibatch_stddev(x: jax.Array, group: int = _MBSTD_GROUP) -> jax.Array:
  """Appends one channel: the mean over features of the stddev across a group of samples.

  Samples are grouped as in ProgGAN (`i` with `i + B/group`...); the whole batch forms one group
  when `B` is not a multiple of `group`.
  """
  b, h, w, c = x.shape
  g = group if b % group == 0 and b >= group else b
  y = x.reshape(g, b // g, h, w, c)
  std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)                  # [B/g, H, W, C]
  feat = jnp.mean(std, axis=(1, 2, 3))                       # [B/g]
  feat = jnp.tile(feat, g)[:, None, None, None]              # sample i gets group i % (B/g)
  return jnp.concatenate([x, jnp.broadcast_to(feat, (b, h, w, 1))], axis=-1)


class Discriminator(nn.Module):
  """ProgGAN's discriminator: `images [B, R, R, 3] -> logits [B]` (R = 4 * 2^(len(sizes)-1)).

  `sizes` lists the channels per resolution from R x R down to 4 x 4.
  """

  sizes: tuple[int, ...] = D_SIZES

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = nn.leaky_relu(_EqConv(self.sizes[0], 1, name="from_rgb")(images), _LEAK)
    for i, (c, c_next) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
      x = nn.leaky_relu(_EqConv(c, name=f"conv{i}a")(x), _LEAK)
      x = nn.leaky_relu(_EqConv(c_next, name=f"conv{i}b")(x), _LEAK)
      x = _avg_pool2(x)
    x = minibatch_stddev(x)
    c = self.sizes[-1]
    x = nn.leaky_relu(_EqConv(c, name="final_conv")(x), _LEAK)
    x = nn.leaky_relu(_EqDense(c, name="final_dense")(x.reshape(x.shape[0], -1)), _LEAK)
    return _EqDense(1, gain=1.0, name="logit")(x)[:, 0]


def resolution_of(d_sizes: Sequence[int]) -> int:
  """The input resolution of a discriminator with channel list `d_sizes`."""
  return 4 * 2 ** (len(d_sizes) - 1)


def init_discriminator_params(key: jax.Array, d_sizes: Sequence[int] = D_SIZES) -> dict:
  """Fresh discriminator params for `d_sizes`: N(0, 1) kernels, zero biases."""
  r = resolution_of(d_sizes)
  shapes = jax.eval_shape(lambda: Discriminator(tuple(d_sizes)).init(
      jax.random.key(0), jnp.zeros((_MBSTD_GROUP, r, r, 3)))["params"])
  return _normal_kernels(key, shapes)


def _normal_kernels(key: jax.Array, shapes: Any) -> Any:
  """Arrays of `shapes` (ShapeDtypeStructs): kernels from one N(0, 1) draw, biases zero.

  One draw compiles in milliseconds; Flax's per-parameter initialisers compile for seconds.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  kernels = [s for path, s in leaves if path[-1].key == "kernel"]
  flat = _normal_flat(key, sum(math.prod(s.shape) for s in kernels))
  out, start = [], 0
  for path, s in leaves:
    if path[-1].key == "kernel":
      size = math.prod(s.shape)
      out.append(flat[start:start + size].reshape(s.shape))
      start += size
    else:
      out.append(np.zeros(s.shape, np.float32))
  return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in out])


@functools.partial(jax.jit, static_argnums=1)
def _normal_flat(key: jax.Array, size: int) -> jax.Array:
  """`size` N(0, 1) float32 samples."""
  return jax.random.normal(key, (size,), jnp.float32)


# --- Training (pure functions; the loop and its I/O are in experiments/train_scene_gan.py) ---


class TrainState(NamedTuple):
  """Everything that training carries from step to step (a pytree of arrays)."""

  g: Any
  d: Any
  ema: Any
  g_opt: Any
  d_opt: Any
  step: jax.Array
  key: jax.Array


def make_optimizer(lr: float) -> optax.GradientTransformation:
  """Adam with ProgGAN/StyleGAN betas (0, 0.99)."""
  return optax.adam(lr, b1=0.0, b2=0.99, eps=1e-8)


def init_train_state(seed: int, lr: float, sizes: tuple[int, ...] = SIZES,
                     d_sizes: tuple[int, ...] = D_SIZES,
                     init_g: Callable[[jax.Array], Any] | None = None) -> TrainState:
  """A fresh training state; all randomness derives from `seed`.

  `init_g(key)` makes the generator's params (default: the ProgGAN of `sizes`).
  """
  key = jax.random.PRNGKey(seed)
  kg, kd, key = jax.random.split(key, 3)
  g = init_g(kg) if init_g is not None else init_generator_params(kg, sizes)
  d = init_discriminator_params(kd, d_sizes)
  opt = make_optimizer(lr)
  ema = jax.tree.map(jnp.copy, g)   # a separate buffer: train_step donates the whole state
  return TrainState(g, d, ema, opt.init(g), opt.init(d), jnp.zeros((), jnp.int32), key)


def make_train_step(sizes: tuple[int, ...], d_sizes: tuple[int, ...], lr: float, r1: float,
                    r1_every: int, ema_decay: float
                    ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """The ProgGAN of `sizes`' jitted `train_step(state, reals, with_r1) -> (state, metrics)`."""
  g_apply = proggan.make_apply_fn(sizes)
  return make_adversarial_step(lambda g, z, key: (g_apply(g, z)[0], None), sizes[0], d_sizes,
                               lr, r1, r1_every, ema_decay)


def make_adversarial_step(generate: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]],
                          zdim: int, d_sizes: tuple[int, ...], lr: float, r1: float,
                          r1_every: int, ema_decay: float,
                          after_g_step: Callable[[Any, Any], Any] | None = None
                          ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """A jitted `train_step(state, reals, with_r1) -> (state, metrics)` for any generator.

  `generate(g, z, key) -> (images, aux)` draws images (`key` is fresh per call, for a
  generator's noise inputs); `after_g_step(g, aux) -> g` (optional) updates the generator's
  params after its optimizer step with the G step's `aux` (StyleGAN2's running mean of w).
  One D step (non-saturating loss; plus `r1_every * r1/2 * |grad D(real)|^2` when `with_r1`,
  a static flag, so exactly two compilations) then one G step, then the EMA update. Latents come
  from `fold_in(state.key, step)`, so a resumed run draws the same ones.
  """
  disc = Discriminator(tuple(d_sizes))
  opt = make_optimizer(lr)

  def d_apply(d, x):
    return disc.apply({"params": d}, x)

  def d_loss_fn(d, g, z, key, reals, with_r1):
    fakes = generate(g, z, key)[0]
    real_logits, vjp = jax.vjp(lambda x: d_apply(d, x), reals)
    fake_logits = d_apply(d, jax.lax.stop_gradient(fakes))
    loss = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
    penalty = jnp.zeros(())
    if with_r1:
      # Double backprop through the D forward on reals: grad of sum(logits) w.r.t. inputs.
      (grad_x,) = vjp(jnp.ones_like(real_logits))
      penalty = jnp.mean(jnp.sum(jnp.square(grad_x), axis=(1, 2, 3)))
      loss = loss + penalty * (0.5 * r1 * r1_every)
    return loss, (penalty, jnp.mean(real_logits), jnp.mean(fake_logits))

  def g_loss_fn(g, d, z, key):
    fakes, aux = generate(g, z, key)
    return jnp.mean(jax.nn.softplus(-d_apply(d, fakes))), aux

  @functools.partial(jax.jit, static_argnames="with_r1", donate_argnums=0)
  def train_step(state: TrainState, reals: jax.Array, with_r1: bool = False):
    step_key = jax.random.fold_in(state.key, state.step)
    kd, kg = jax.random.split(step_key)
    b = reals.shape[0]
    z_d = jax.random.normal(kd, (b, zdim))
    (d_loss, (penalty, real_logit, fake_logit)), d_grad = jax.value_and_grad(
        d_loss_fn, has_aux=True)(state.d, state.g, z_d, jax.random.fold_in(kd, 1), reals,
                                 with_r1)
    d_updates, d_opt = opt.update(d_grad, state.d_opt, state.d)
    d = optax.apply_updates(state.d, d_updates)
    z_g = jax.random.normal(kg, (b, zdim))
    (g_loss, aux), g_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(
        state.g, d, z_g, jax.random.fold_in(kg, 1))
    g_updates, g_opt = opt.update(g_grad, state.g_opt, state.g)
    g = optax.apply_updates(state.g, g_updates)
    if after_g_step is not None:
      g = after_g_step(g, aux)
    t = state.step.astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, g)
    metrics = {"d_loss": d_loss, "g_loss": g_loss, "r1": penalty, "real_logit": real_logit,
               "fake_logit": fake_logit}
    return TrainState(g, d, ema, g_opt, d_opt, state.step + 1, state.key), metrics

  return train_step


def image_grid(images: np.ndarray, columns: int = 8, gap: int = 2) -> np.ndarray:
  """A uint8 grid of `images [N, H, W, 3]` in [-1, 1] (the ProgGAN byte conversion)."""
  pix = np.clip((np.asarray(images) + 1) / 2 * 255, 0, 255).astype(np.uint8)
  return tile(pix, columns, gap)
