"""Dissects a classifier over a dataset: which concept each unit of each layer detects.

Command (PNAS's dissection of a scene classifier; its time is the two networks' forward passes
over the images, not measured here; the tests' run of a tiny factory classifier on 12 images,
`--model tests.factory_models:make_classifier --segmenter color`, takes about 20 s on 2 CPU
cores, mostly compiling):

  python -m experiments.dissect_classifier --model vgg16_places365:PATH --images DIR \
      --segmenter upp:FOLDER --layers conv5_3 --outdir OUT

runs the classifier on every image under DIR (recursively, sorted by path; each resized and
centre-cropped to the classifier's size as torchvision's Resize + CenterCrop do, `--resize`),
labels the same images with the segmenter, and writes what `experiments.dissect` writes
(design §4): `dissect.json` (its `latents` say which images: the folder, their count and a digest
of the file list), per layer `iou.npy`, `thresholds.npy`, `units/unit####.jpg` strips (the top
images by dataset index, read again) and `concepts.svg`, then `report.html`. A built-in image set
with exact labels needs no `--segmenter`; with one, the segmenter labels it instead. The scene
world's (`experiments.image_sets`) is dissected so in about 2 minutes on 2 CPU cores, all ten
conv layers of the shipped scene classifier over its 2000 held-out scenes:

  python -m experiments.dissect_classifier --model sceneworld --images sceneworld_scenes \
      --layers conv1_1,conv2_1,conv2_2,conv3_1,conv3_2,conv4_1,conv4_2,conv5_1,conv5_2,conv5_3 \
      --outdir results/dissect-classifier-exact     # or --segmenter sceneworld, color

(`experiments.classifier_dissection_summary` compares such runs by concept category).

`--model` takes any classifier spec of `jaxdissect.zoo` (e.g. `vgg16_places365:PATH`,
`package.module:factory` with `--model_arg`); the default layer is the classifier's last with
more than one pixel. `--n` dissects the first n images (default: all). The run checkpoints under
OUTDIR/checkpoint and the same command resumes; the other flags are those of
`experiments.dissect`. Bad flags, and images that cannot be read, end in one error line.
"""

from __future__ import annotations

import os

from absl import app, flags
import jax
import jax.numpy as jnp

from experiments import classifier_flags, cli, device_flags, dissect_flags
from experiments import models as model_specs
from experiments.cli import UsageError
from jaxdissect import checkpoint, imagesource
from jaxdissect.classifier import Classifier
from jaxdissect.imagefolder import ImageDataError

_N = flags.DEFINE_integer("n", None, "Images to dissect: the first n of the set (default: all).")
_STRIPS = flags.DEFINE_bool("strips", True, "Write unit strips (reads the top images again).")

# Settings of this command that change the running state (besides `dissect_flags`' own).
_STATE = ("model_args", "segmenter_args", "images", "dtype")
# How the dissection names the images' own exact labels as its segmenter.
EXACT_LABELS = "exact"


def default_layers(classifier: Classifier) -> tuple[str, ...]:
  """The classifier's last layer with more than one pixel (its last layer if none has)."""
  x = jax.ShapeDtypeStruct((1, *classifier.image_shape), jnp.float32)
  _, acts = jax.eval_shape(
      lambda x: classifier.apply_fn(classifier.params, x, capture=classifier.layers), x)
  spatial = [name for name in classifier.layers if acts[name].shape[1] * acts[name].shape[2] > 1]
  return ((spatial or classifier.layers)[-1],)


def run_dissection() -> str:
  """Everything `main` does; returns the output folder. Raises UsageError for bad flags."""
  device_flags.join_processes()
  loaded = classifier_flags.from_flags()
  m, image_set = loaded.models, loaded.images
  if m.segmenter is None and image_set.concepts is None:
    raise UsageError(f"--images={flags.FLAGS['images'].value} has no exact labels; pass "
                     "--segmenter to label its images (e.g. upp:FOLDER, or color)")
  gen, seg, source = cli.checked(imagesource.source, m.classifier, image_set, m.segmenter,
                                 errors=(ImageDataError,))
  count = len(image_set.images)
  n = count if _N.value is None else _N.value
  if not 1 <= n <= count:
    raise UsageError(f"--n={n}, but {image_set.origin} holds {count} images; give 1..{count}")
  segmenter_spec = EXACT_LABELS if m.segmenter_spec is None else m.segmenter_spec
  settings = {"dtype": m.dtype, "model_args": m.model_args, "segmenter_args": m.segmenter_args,
              "images": source.record(), "resize": flags.FLAGS["resize"].value}
  return dissect_flags.run(dissect_flags.Job(
      generator=gen, segmenter=seg, source=source, n=n, model=m.model,
      segmenter_spec=segmenter_spec, default_layers=default_layers(m.classifier),
      default_outdir=os.path.join("results", f"dissect-{model_specs.slug(m.model)}"),
      settings=settings, identity=_STATE, strips=_STRIPS.value))


def main(argv):
  cli.run_main("dissect_classifier", run_dissection, argv,
               failures=(checkpoint.CheckpointError, FloatingPointError, ValueError))


if __name__ == "__main__":
  app.run(main)
