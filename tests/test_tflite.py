"""TFLite runtime in JAX: parity with the reference TFLite runtime (`ai-edge-litert`) on the face
models shipped in the mediapipe 0.10.21 wheel, on real face-GAN images, for every output; the
reader's and runtime's one-line errors on damaged files, unsupported ops and wrong input sizes."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factory_models import face_gan_images
from ports import tflite_format, tflite_graph
from ports.tflite_format import TFLiteError

_SPEC = importlib.util.find_spec("mediapipe")
_MODULES = (os.path.join(list(_SPEC.submodule_search_locations)[0], "modules")
            if _SPEC is not None and _SPEC.submodule_search_locations else None)
needs_wheel = pytest.mark.skipif(
    _MODULES is None or not os.path.isdir(_MODULES),
    reason="the .tflite models come with `pip install --no-deps mediapipe==0.10.21`")

# (file under mediapipe/modules, input range) of every model the face-parts segmenter uses, and
# the face detector.
MODELS = {
    "face_landmark": ("face_landmark/face_landmark.tflite", (0.0, 1.0)),
    "iris_landmark": ("iris_landmark/iris_landmark.tflite", (0.0, 1.0)),
    "selfie_segmentation": ("selfie_segmentation/selfie_segmentation.tflite", (0.0, 1.0)),
    "face_detection": ("face_detection/face_detection_short_range.tflite", (-1.0, 1.0)),
}


def _path(name):
  return os.path.join(_MODULES, MODELS[name][0])


@pytest.fixture(scope="module")
def face_images():
  """Two 64x64 images of the trained face GAN, in [0, 1]."""
  return (np.asarray(face_gan_images(2, seed=5)) + 1.0) / 2.0


def _inputs(name, images, shape):
  """Real inputs for `name`: the faces resized to its input (the iris model gets an eye
  region), mapped to its input range."""
  h, w, _ = shape
  if name == "iris_landmark":
    images = images[:, 16:40, 6:30]
  x = jax.image.resize(jnp.asarray(images), (len(images), h, w, 3), "linear")
  lo, hi = MODELS[name][1]
  return np.asarray(lo + (hi - lo) * x, np.float32)


@needs_wheel
@pytest.mark.parametrize("name", sorted(MODELS))
def test_parity_with_litert(name, face_images):
  interpreter_mod = pytest.importorskip(
      "ai_edge_litert.interpreter", reason="the reference runtime is `pip install ai-edge-litert`")
  model = tflite_graph.load(_path(name))
  x = _inputs(name, face_images, model.input_shapes[0])
  ours = jax.jit(model.apply_fn)(model.params, x)
  ref = interpreter_mod.Interpreter(model_path=_path(name))
  ref.allocate_tensors()
  # The graph we run is the reference's, node for node.
  parsed = [op.op for op in tflite_format.read(_path(name)).operators]
  nodes = ref._get_ops_details()  # pylint: disable=protected-access
  assert parsed == [d["op_name"] for d in nodes if d["op_name"] != "DELEGATE"]
  details = ref.get_output_details()
  assert [d["name"] for d in details] == list(model.output_names)
  want = []
  for b in range(len(x)):
    ref.set_tensor(ref.get_input_details()[0]["index"], x[b:b + 1])
    ref.invoke()
    want.append([ref.get_tensor(d["index"])[0].copy() for d in details])
  # The same graph in float64: the yardstick for both float32 runs' rounding.
  with jax.enable_x64(True):
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), model.params)
    exact = jax.jit(model.apply_fn)(p64, x.astype(np.float64))
    exact = [np.asarray(e) for e in exact]
  for k, d in enumerate(details):
    ref_k = np.stack([w[k] for w in want])
    got = np.asarray(ours[k])
    assert got.shape == ref_k.shape
    err = float(np.abs(got - ref_k).max())
    ref_err = float(np.abs(ref_k - exact[k]).max())
    our_err = float(np.abs(got - exact[k]).max())
    # The reference agrees with our float64 evaluation of the graph (the op semantics are the
    # same) up to float32 rounding, and we are at least as close to it as the reference is.
    assert ref_err <= 5e-4, (name, d["name"], ref_err)
    assert our_err <= max(ref_err, 1e-5), (name, d["name"], our_err, ref_err)
    # Parity: 1e-4, plus the reference's own rounding where that is larger (outputs that are
    # differences of large activations, e.g. mesh coordinates up to ~190 px, selfie edges).
    assert err <= 1e-4 + ref_err, (name, d["name"], err, ref_err)


@needs_wheel
def test_unsupported_ops_are_named_in_one_line():
  # The attention mesh needs MediaPipe's custom ops, which neither we nor ai-edge-litert run.
  with pytest.raises(TFLiteError) as e:
    tflite_graph.load(os.path.join(_MODULES, "face_landmark/face_landmark_with_attention.tflite"))
  msg = str(e.value)
  assert "\n" not in msg and "unsupported op(s)" in msg
  for op in ("Landmarks2TransformMatrix", "TransformLandmarks", "TransformTensorBilinear"):
    assert op in msg
  assert "CONV_2D" in msg  # the supported list


@needs_wheel
def test_wrong_input_size_is_one_line():
  model = tflite_graph.load(_path("face_landmark"))
  with pytest.raises(TFLiteError, match=r"input 'input_1' has shape \[2, 64, 64, 3\], expected "
                     r"\[B, 192, 192, 3\]"):
    model.apply_fn(model.params, np.zeros((2, 64, 64, 3), np.float32))


@needs_wheel
def test_truncated_and_damaged_files_fail_with_tflite_error():
  with open(_path("face_detection"), "rb") as f:
    data = f.read()
  rng = np.random.default_rng(0)
  # The file ends in a small zip of metadata after the FlatBuffer, so cut inside the first 90%.
  cuts = sorted({0, 3, 7, 8, 16, 64, 1000, len(data) // 3, len(data) // 2,
                 *rng.integers(8, len(data) * 9 // 10, 8).tolist()})
  for cut in cuts:
    with pytest.raises(TFLiteError):
      tflite_graph.compile_model(tflite_format.parse(data[:cut], "cut.tflite"))
  # Flipped bytes in the header and tables: either a clean TFLiteError or a model that loads.
  for _ in range(12):
    damaged = bytearray(data)
    for at in rng.integers(0, 4096, 4):
      damaged[at] ^= int(rng.integers(1, 256))
    try:
      tflite_graph.compile_model(tflite_format.parse(bytes(damaged), "damaged.tflite"))
    except TFLiteError as e:
      assert "\n" not in str(e)


def test_not_a_model_fails_with_tflite_error(tmp_path):
  for i, data in enumerate([b"", b"abc", b"\x10\x00\x00\x00NOPE" + bytes(40),
                            b"\x08\x00\x00\x00TFL3\xff\xff\xff\x7f",
                            b"\xff\xff\xff\x0fTFL3" + bytes(16)]):
    path = tmp_path / f"bad{i}.tflite"
    path.write_bytes(data)
    with pytest.raises(TFLiteError, match=str(path)):
      tflite_graph.load(path)


@needs_wheel
def test_params_are_a_float32_pytree_with_gradients():
  model = tflite_graph.load(_path("iris_landmark"))
  leaves = jax.tree_util.tree_leaves(model.params)
  assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)
  x = jnp.full((1, 64, 64, 3), 0.5, jnp.float32)
  g = jax.jit(jax.grad(lambda x: model.apply_fn(model.params, x)[1].sum()))(x)
  assert g.shape == x.shape and bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) > 0
