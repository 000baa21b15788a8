"""The child process of the reader fuzz tests: damages small valid files and feeds them to a reader.

Run as `python tests/fuzz_harness.py SPEC` (SPEC is JSON: formats, cases per format, seed, workdir,
memory headroom, per-case time limit); prints one JSON line with, per format, how many damaged
files loaded, failed with the reader's own error, or escaped as anything else (with examples).
A separate process because the memory cap (RLIMIT_AS, set after imports and a warm-up load) must
not constrain the test session, and one process per group of formats keeps the imports to one.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import shutil
import signal
import struct
import sys
import time
import zipfile
import zlib
from typing import Any, Callable

import numpy as np

_BIG = (0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF, 1 << 40, 1 << 38,
        1 << 32, 1 << 31, 1 << 28, 0x10000, 0x8000)
_TEXT_VALUES = ("1e999", "-1", "9" * 5000, "0", "0.5", "true", "null", '"x"', "[]", "{}",
                "18446744073709551617", "-0", '"' + "a" * 200 + '"')


class _Slow(BaseException):
  """Raised by the per-case timer; a BaseException so readers' `except Exception` let it pass."""


def _on_alarm(signum: int, frame: Any) -> None:
  raise _Slow()


# --- Mutations ---------------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: np.random.Generator, donors: list[bytes]) -> tuple[str, bytes]:
  """One random damage: bit flips, a truncation, a splice, a deletion or a huge number."""
  data = bytearray(data)
  n = len(data)
  op = ("flip", "truncate", "splice", "delete", "huge")[rng.integers(5)]
  if op == "flip" or n < 2:
    for _ in range(int(rng.integers(1, 9))):
      i = int(rng.integers(max(n, 1)))
      if n:
        data[i] ^= 1 << int(rng.integers(8))
    return "flip", bytes(data)
  if op == "truncate":
    return op, bytes(data[:int(rng.integers(n))])
  if op == "splice":
    donor = donors[int(rng.integers(len(donors)))] if donors and rng.random() < 0.5 else bytes(data)
    start = int(rng.integers(max(len(donor), 1)))
    chunk = donor[start:start + int(rng.integers(1, 65))]
    at = int(rng.integers(n))
    if rng.random() < 0.5:
      data[at:at + len(chunk)] = chunk  # overwrite
    else:
      data[at:at] = chunk  # insert
    return op, bytes(data)
  if op == "delete":
    at = int(rng.integers(n))
    del data[at:at + int(rng.integers(1, 33))]
    return op, bytes(data)
  width = (1, 2, 4, 8)[rng.integers(4)]
  value = _BIG[rng.integers(len(_BIG))] & ((1 << (8 * width)) - 1)
  raw = value.to_bytes(width, "little" if rng.random() < 0.5 else "big")
  at = int(rng.integers(max(n - width, 1)))
  data[at:at + width] = raw
  return op, bytes(data)


def mutate_text(data: bytes, rng: np.random.Generator, donors: list[bytes]) -> tuple[str, bytes]:
  """Byte damage half the time; else a number or value swapped for an extreme one, or deep
  nesting inserted, so the parsed document (not just the parser) meets damage."""
  if rng.random() < 0.5:
    return mutate_bytes(data, rng, donors)
  text = data.decode("utf-8", "replace")
  if rng.random() < 0.15:
    at = int(rng.integers(len(text) + 1))
    return "nest", (text[:at] + "[" * 100_000 + text[at:]).encode()
  tokens = list(re.finditer(r'-?\d+(\.\d+)?([eE][-+]?\d+)?|"[^"\n]*"|true|false|null|\[\]|\{\}',
                            text))
  if not tokens:
    return mutate_bytes(data, rng, donors)
  m = tokens[int(rng.integers(len(tokens)))]
  value = _TEXT_VALUES[rng.integers(len(_TEXT_VALUES))]
  return "value", (text[:m.start()] + value + text[m.end():]).encode()


def mutate_zip(data: bytes, rng: np.random.Generator, donors: list[bytes]) -> tuple[str, bytes]:
  """Half raw damage of the archive; half damage of one record (mostly the pickle), re-zipped
  with correct CRCs so the damage reaches the reader behind the zip layer."""
  if rng.random() < 0.5:
    return mutate_bytes(data, rng, donors)
  with zipfile.ZipFile(io.BytesIO(data)) as zf:
    records = [(info.filename, zf.read(info)) for info in zf.infolist()]
  pkl = [i for i, (name, _) in enumerate(records) if name.endswith("data.pkl")]
  i = pkl[0] if pkl and rng.random() < 0.7 else int(rng.integers(len(records)))
  op, damaged = mutate_bytes(records[i][1], rng, [])
  records[i] = (records[i][0], damaged)
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
    for name, raw in records:
      zf.writestr(name, raw)
  return f"record-{op}", out.getvalue()


def mutate_png(data: bytes, rng: np.random.Generator, donors: list[bytes]) -> tuple[str, bytes]:
  """Half raw damage; half damage inside one chunk with its CRC fixed (so PIL reads on), a third
  of those a huge width or height declared in IHDR."""
  if rng.random() < 0.5 or not data.startswith(b"\x89PNG"):
    return mutate_bytes(data, rng, donors)
  chunks, pos = [], 8
  while pos + 8 <= len(data):
    (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
    chunks.append([kind, data[pos + 8:pos + 8 + length]])
    pos += 12 + length
  if rng.random() < 0.33:
    i, op = 0, "ihdr"
    body = bytearray(chunks[0][1])
    for at in ((0,), (4,), (0, 4))[rng.integers(3)]:  # width, height or both
      body[at:at + 4] = int(rng.choice([6000, 9000, 1 << 14, 1 << 16, 100_000, 0x7FFFFFFF])
                            ).to_bytes(4, "big")
    chunks[0][1] = bytes(body)
  else:
    i = int(rng.integers(len(chunks)))
    op, chunks[i][1] = mutate_bytes(chunks[i][1], rng, [])
    op = f"chunk-{op}"
  out = bytearray(data[:8])
  for kind, body in chunks:
    out += struct.pack(">I", len(body)) + kind + body
    out += struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
  return op, bytes(out)


# --- Formats: seeds and readers ----------------------------------------------------------------


def _seed_pth(workdir: str, zip_format: bool) -> list[str]:
  from test_pth import Storage, Tensor, write_legacy, write_zip  # tests/ is on sys.path
  rng = np.random.default_rng(0)
  weight = Storage("0", "FloatStorage", rng.standard_normal(12).astype(np.float32))
  bias = Storage("1", "HalfStorage", np.arange(3, dtype=np.float16))
  steps = Storage("2", "LongStorage", np.array([7], np.int64))
  obj = {"state_dict": {"w": Tensor(weight, 0, (3, 4), (4, 1)),
                        "wt": Tensor(weight, 1, (2, 2), (1, 4)),
                        "b": Tensor(bias, 0, (3,), (1,))},
         "steps": Tensor(steps, 0, (), ()), "epoch": 3, "name": "tiny", "lr": 0.5}
  paths = []
  for i, o in enumerate((obj, {"w": obj["state_dict"]["w"]})):
    path = os.path.join(workdir, f"seed{i}.pth")
    (write_zip if zip_format else write_legacy)(path, o)
    paths.append(path)
  return paths


def _seed_png(workdir: str, size: tuple[int, int] = (8, 8)) -> list[str]:
  from PIL import Image
  rng = np.random.default_rng(0)
  paths = []
  for i, mode in enumerate(("RGB", "RGBA", "L", "P")):
    pixels = rng.integers(0, 256, (*size, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    path = os.path.join(workdir, f"seed{i}.png")
    image.save(path)
    paths.append(path)
  return paths


def _seed_jpeg(workdir: str) -> list[str]:
  from PIL import Image
  rng = np.random.default_rng(0)
  paths = []
  for i, progressive in enumerate((False, True)):
    path = os.path.join(workdir, f"seed{i}.jpg")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
        path, quality=80, progressive=progressive)
    paths.append(path)
  return paths


def _seed_npy(workdir: str) -> list[str]:
  paths = []
  arrays = (np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32),
            np.ones((3, 2, 2), np.float64))
  for i, (array, version) in enumerate(zip(arrays, ((1, 0), (2, 0)))):
    path = os.path.join(workdir, f"seed{i}.npy")
    with open(path, "wb") as f:
      np.lib.format.write_array(f, array, version=version)
    paths.append(path)
  return paths


def dissection_doc() -> dict[str, Any]:
  """A small valid dissect.json document (design §4, with the reader's extra fields)."""
  units = [{"unit": u, "threshold": 0.5 + u, "label": "sky", "category": "object",
            "iou": 0.1 * u, "interpretable": u > 0, "top": [{"image": 3, "max": 2.5}],
            "image": f"layer1/units/unit{u:04d}.jpg", "iou_bound": 0.01} for u in range(2)]
  return {"model": "sceneworld", "segmenter": "sceneworld", "settings": {"n": 16, "model_args": {}},
          "latents": {"source": "seed", "seed": 1},
          "concepts": [{"index": 0, "name": "-", "category": "none"},
                       {"index": 1, "name": "sky", "category": "object"}],
          "layers": [{"layer": "layer1", "dirname": "layer1", "shape": [4, 4, 2],
                      "interpretable": 1, "concept_counts": {"sky": 1}, "units": units}]}


def _seed_json(workdir: str, docs: list[Any], name: str) -> list[str]:
  paths = []
  for i, doc in enumerate(docs):
    folder = os.path.join(workdir, f"seed{i}")
    os.makedirs(folder)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
      json.dump(doc, f, indent=1)
    paths.append(path)
  return paths


def _seed_text(workdir: str, texts: list[str]) -> list[str]:
  paths = []
  for i, text in enumerate(texts):
    path = os.path.join(workdir, f"seed{i}.txt")
    with open(path, "w") as f:
      f.write(text)
    paths.append(path)
  return paths


_ORBAX_TREE = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(4, np.int32)}}


def _seed_orbax(workdir: str) -> list[str]:
  from jaxdissect import checkpoint
  path = os.path.join(workdir, "seed0")
  checkpoint.save(path, _ORBAX_TREE)
  return [path]


def _seed_latest(workdir: str) -> list[str]:
  paths = []
  for i, meta in enumerate(({"batch": 3, "settings": {"n": 16, "layers": ["a", "b"]}}, {})):
    folder = os.path.join(workdir, f"seed{i}")
    os.makedirs(folder)
    path = os.path.join(folder, "latest.json")
    with open(path, "w") as f:
      json.dump({"number": i, "name": f"state-{i}", "meta": meta}, f)
    paths.append(path)
  return paths


class Format:
  """How to make seeds, damage them and read them; `own` is the reader's error (a class or a
  tuple); `names_file` whether its messages must name the file."""

  def __init__(self, seeds: Callable[[str], list[str]], read: Callable[[str], Any], own: Any,
               mutate: Callable = mutate_bytes, names_file: bool = True, directory: bool = False):
    self.seeds, self.read, self.own, self.mutate = seeds, read, own, mutate
    self.names_file, self.directory = names_file, directory


def formats() -> dict[str, Format]:
  """The formats by name; imports happen here so each group imports only what it reads."""
  out = {}

  def add(name, make):
    out[name] = make

  add("pth-zip", lambda: _pth_format(True))
  add("pth-legacy", lambda: _pth_format(False))
  add("npy", _npy_format)
  add("npz", _npz_format)
  add("png-image", lambda: _image_format(_seed_png, mutate_png))
  add("jpeg-image", lambda: _image_format(_seed_jpeg, mutate_bytes))
  add("png-mask", _mask_format)
  add("dissect-json", _dissect_format)
  add("units-json", _units_format)
  add("ablation-json", _ablation_format)
  add("class-names", _class_names_format)
  add("upp-labels", _labels_format)
  add("latest-json", _latest_format)
  add("orbax", _orbax_format)
  add("stylegan2-pkl", _pkl_format)
  add("tflite", _tflite_format)
  return out


def _pth_format(zip_format: bool) -> Format:
  from ports import pth
  return Format(lambda w: _seed_pth(w, zip_format), pth.load, pth.PthError,
                mutate_zip if zip_format else mutate_bytes)


def _npy_format() -> Format:
  from jaxdissect import latents
  return Format(_seed_npy, latents.load_npy, latents.LatentsError)


def _seed_npz(workdir: str) -> list[str]:
  rng = np.random.default_rng(0)
  arrays = {"layer4": rng.standard_normal(6).astype(np.float32), "b8.conv1": np.arange(4.0)}
  paths = [os.path.join(workdir, "stored.npz"), os.path.join(workdir, "deflated.npz")]
  np.savez(paths[0], **arrays)
  np.savez_compressed(paths[1], **arrays)
  return paths


def _npz_format() -> Format:
  from jaxdissect import stages
  return Format(_seed_npz, lambda p: stages.load_thresholds(p, ("layer4",)), ValueError,
                mutate_zip)


def _image_format(seeds: Callable, mutate: Callable) -> Format:
  from jaxdissect import imagefolder

  def read(path):
    imagefolder.read_image(path, (8, 8), 8)  # resized: any declared size reaches the decoder
    return imagefolder.read_image(path, (8, 8), None)
  return Format(seeds, read, imagefolder.ImageDataError, mutate)


def _mask_format() -> Format:
  from jaxdissect import masks

  def read(path):
    with open(path, "rb") as f:
      masks.read_png_mask(f.read(), (8, 8))  # bytes, as the paint server passes them
    return masks.read_png_mask(path, (8, 8))
  return Format(_seed_png, read, ValueError, mutate_png, names_file=False)


def _dissect_format() -> Format:
  from jaxdissect.report import reader
  return Format(lambda w: _seed_json(w, [dissection_doc()], "dissect.json"),
                lambda p: reader.read_dissection(os.path.dirname(p)), reader.DissectionReadError,
                mutate_text)


def _units_format() -> Format:
  from jaxdissect.report import reader
  docs = [{"layer": "layer1", "concept": "sky", "alpha": [0.0, 1.0, 0.25, 1e-3]}]
  return Format(lambda w: _seed_json(w, docs, "units-sky.json"), reader.read_unit_set,
                reader.DissectionReadError, mutate_text)


def _ablation_format() -> Format:
  from jaxdissect.report import reader
  docs = [{"model": "sceneworld", "segmenter": "sceneworld", "layer": "layer4", "concept": "tree",
           "rankings": {"iou": {"units": [3, 1], "removed": [0.0, 0.5, 0.75],
                                "ci99": [0.0, 0.05, 0.02]}}}]
  return Format(lambda w: _seed_json(w, docs, "ablation-tree.json"), reader.read_ablation,
                reader.DissectionReadError, mutate_text)


def _seed_pkl(workdir: str) -> list[str]:
  import test_stylegan2_pkl as snapshots  # tests/ is on sys.path
  from ports import stylegan2
  modules = snapshots.stand_in_modules()
  sys.modules.update(modules)  # only pickle.dump names them; the reader never looks them up
  stand_ins = modules["torch_utils.persistence"], modules["dnnlib.util"]
  path = os.path.join(workdir, "network-snapshot.pkl")
  snapshots.write_snapshot(path, stylegan2.random_state_dict(snapshots.CFG, 5), stand_ins,
                           os.path.join(workdir, "marker"))
  return [path]


def _pkl_format() -> Format:
  from ports import stylegan2_pkl
  return Format(_seed_pkl, stylegan2_pkl.load_network, stylegan2_pkl.PklError)


def _seed_tflite(workdir: str) -> list[str]:
  import test_tflite  # tests/ is on sys.path
  path = os.path.join(workdir, "face_detection.tflite")
  shutil.copyfile(test_tflite._path("face_detection"), path)  # pylint: disable=protected-access
  return [path]


def _tflite_format() -> Format:
  from ports import tflite_format, tflite_graph
  return Format(_seed_tflite, tflite_graph.load, tflite_format.TFLiteError)


def _class_names_format() -> Format:
  from ports import classifiers
  texts = ["/a/abbey 0\n/a/airfield 1\n/b/bar 2\n/c/car/interior 3\n",
           "cat\ndog\nhorse\n\n"]
  return Format(lambda w: _seed_text(w, texts), classifiers.read_class_names,
                classifiers.ClassNamesError, mutate_text)


def _labels_format() -> Format:
  from ports import upp_labels
  docs = [{"object": ["-", "sky", "building", "person"], "material": ["-", "wood"],
           "object_part": {"building": ["-", "door"], "person": ["head"], "sky": []},
           "part": ["door", "head"]}]
  return Format(lambda w: _seed_json(w, docs, "labels.json"), upp_labels.read_labels,
                upp_labels.LabelsError, mutate_text)


def _latest_format() -> Format:
  from jaxdissect import checkpoint
  return Format(_seed_latest, lambda p: checkpoint.latest_meta(os.path.dirname(p)),
                checkpoint.CheckpointError, mutate_text)


def _orbax_format() -> Format:
  from jaxdissect import checkpoint
  return Format(_seed_orbax, lambda p: checkpoint.load(p, _ORBAX_TREE),
                checkpoint.CheckpointError, directory=True)


# --- The loop ----------------------------------------------------------------------------------


def _vm_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmSize:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmSize in /proc/self/status")


def _damage_directory(seed: str, case: str, fmt: Format, rng: np.random.Generator
                      ) -> tuple[str, str]:
  """A copy of the folder `seed` at `case` with one of its files damaged."""
  shutil.rmtree(case, ignore_errors=True)
  shutil.copytree(seed, case)
  files = sorted(os.path.join(d, n) for d, _, names in os.walk(case) for n in names)
  target = files[int(rng.integers(len(files)))]
  with open(target, "rb") as f:
    op, data = fmt.mutate(f.read(), rng, [])
  with open(target, "wb") as f:
    f.write(data)
  return f"{os.path.relpath(target, case)}:{op}", case


def run_format(name: str, fmt: Format, spec: dict[str, Any]) -> dict[str, Any]:
  """Seeds, a warm-up read of each, then `spec['cases']` damaged copies read under the timer."""
  workdir = os.path.join(spec["workdir"], name)
  os.makedirs(workdir)
  seeds = fmt.seeds(workdir)
  os.makedirs(os.path.join(workdir, "case"))
  for seed in seeds:
    fmt.read(seed)  # the valid files load (and lazy imports and caches are warm)
  donors = [] if fmt.directory else [open(s, "rb").read() for s in seeds]
  rng = np.random.default_rng([spec["seed"], zlib.crc32(name.encode())])
  counts = {"loaded": 0, "own": 0, "escaped": 0, "slow": 0}
  examples, bad_messages, slowest = [], [], 0.0
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  for case in range(spec["cases"]):
    k = int(rng.integers(len(seeds)))
    if fmt.directory:
      op, path = _damage_directory(seeds[k], os.path.join(workdir, "case"), fmt, rng)
    else:
      op, data = fmt.mutate(donors[k], rng, donors)
      path = os.path.join(workdir, "case", os.path.basename(seeds[k]))  # readers may take the
      with open(path, "wb") as f:                                       # folder: keep the name
        f.write(data)
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, spec["case_seconds"])
    try:
      fmt.read(path)
      outcome = "loaded"
    except _Slow:
      outcome, error = "slow", None
    except fmt.own as e:  # a reader that only refused because memory ran out did not check
      outcome, error = ("escaped" if "MemoryError" in str(e) else "own"), e
    except BaseException as e:  # noqa: BLE001 -- counting exactly these is the point
      outcome, error = "escaped", e
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
    slowest = max(slowest, time.perf_counter() - t0)
    counts[outcome] += 1
    if outcome in ("escaped", "slow") and len(examples) < 10:
      examples.append(f"case {case} ({op}): {type(error).__name__}: {str(error)[:300]}")
    if outcome == "own":
      text = str(error)
      if "\n" in text or (fmt.names_file and os.path.dirname(path) not in text):
        if len(bad_messages) < 5:
          bad_messages.append(f"case {case} ({op}): {text[:300]!r}")
  return {**counts, "cases": spec["cases"], "examples": examples, "bad_messages": bad_messages,
          "seconds": round(time.perf_counter() - start, 2), "slowest_case": round(slowest, 3),
          "rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0)
                                 / 1024, 1)}


def main(spec: dict[str, Any]) -> dict[str, Any]:
  registry = formats()
  made = {name: registry[name]() for name in spec["formats"]}
  signal.signal(signal.SIGALRM, _on_alarm)
  if spec.get("headroom_mb"):
    # After the imports: the cap is on what reading damaged files may add.
    warm = {}
    for name, fmt in made.items():
      warm_dir = os.path.join(spec["workdir"], "warm-" + name)
      os.makedirs(warm_dir)
      for seed in fmt.seeds(warm_dir):
        fmt.read(seed)
    limit = _vm_bytes() + spec["headroom_mb"] * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
  return {name: run_format(name, fmt, spec) for name, fmt in made.items()}


if __name__ == "__main__":
  print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
  os._exit(0)  # skip interpreter teardown (Orbax's event loop complains at exit)
