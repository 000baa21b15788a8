"""The ProgGAN-256 workload of the memory and versus-original parts: models and settings.

ProgGAN-256 with the LSUN sizes and random weights (as in the heavy part), dissected at `layer4`
(8x8x512) against 128x128 labels, the original's segmentation size for 256px GANs. The labels
come from a stand-in segmenter: by default the scene world's U-Net on images average-pooled 2x
to 128x128 (cheap, so the generator and the dissection dominate), or a `ports.semseg` arch such
as `resnet50-upernet` (random weights) on the full image with 128x128 output.
"""

from __future__ import annotations

import jax

from experiments.benchmarks import dissect_heavy
from jaxdissect import dissect, zoo
from jaxdissect.model import Generator, Segmenter
from ports import proggan

LAYER = "layer4"


def generator() -> Generator:
  """ProgGAN-256, LSUN sizes, random weights (key 0)."""
  return proggan.make_generator(proggan.LSUN_SIZES, jax.random.key(0))


def segmenter(kind: str) -> Segmenter:
  """The stand-in segmenter `kind` with 128x128 labels: `pooled_scene` or a ports.semseg arch."""
  if kind == "pooled_scene":
    return dissect_heavy.pooled_segmenter(zoo.load_segmenter("sceneworld"), 2)
  return dissect_heavy.heavy_segmenter(kind, "highest")


def describe(kind: str) -> str:
  """How the output names the segmenter `kind` (a stand-in, never the original's)."""
  if kind == "pooled_scene":
    return "stand-in: scene-world U-Net on 2x average-pooled images (128x128 labels)"
  return f"stand-in: {kind} with random weights (256x256 in, 128x128 labels)"


def config(n: int, threshold: float | str, batch_size: int = 0, warmup: int = 0
           ) -> dissect.Config:
  """`layer4` over `n` images; `batch_size` and `warmup` of 0 keep the library's defaults."""
  extra = {k: v for k, v in (("batch_size", batch_size), ("warmup", warmup)) if v}
  return dissect.Config(layers=(LAYER,), n=n, threshold=threshold, **extra)
