"""Benchmark: the vmapped single-unit class sweep against a Python loop of the same function.

Command (about 5 minutes on 2 CPU cores; the loop dominates):

  python -m experiments.benchmarks.class_sweep --n 200 --repeats 3 --out class_sweep.json

ranks nothing; it times `class_ablation.single_unit_sweep` (every unit of `--layers` zeroed
alone, each `--chunks` edits vmapped into one classifier call) against
`single_unit_sweep_looped` (one jitted call per unit and batch, as the original loops) on the
scene classifier and `--n` rendered scenes, each compiled beforehand on one batch, in
interleaved repeats, and checks that both give the same accuracies (they count the same
predictions, so they should agree exactly). Writes the JSON record (every repeat) and logs the
Markdown table (`--markdown` also writes it to a file).

Why vmap wins by so much at conv5_3: the layers before the edit do not depend on the edit, so
vmap leaves them unbatched and the convolutions up to conv5_3 run once per chunk of edits
instead of once per unit; only the global pool and the linear layer run per world. An earlier
layer (say conv4_1) leaves more per-world work and shows a smaller gain.
"""

from __future__ import annotations

import os
import platform
import sys
import time

from absl import app, flags, logging
import numpy as np

from experiments import cli
from experiments.benchmarks.common import median

_N = flags.DEFINE_integer("n", 200, "Scenes the sweeps run over.")
_SEED = flags.DEFINE_integer("seed", 1000, "Scene sample.")
_LAYERS = flags.DEFINE_list("layers", ["conv5_3"], "Layers swept.")
_CHUNKS = flags.DEFINE_list("chunks", ["16", "128"], "Edits per vmapped call (capped at the "
                            "layer's units).")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved timing repeats.")
_OUT = flags.DEFINE_string("out", "class_sweep.json", "JSON record.")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Also write the Markdown table here.")


def bench_class_sweep(n: int, seed: int, layers: list[str], chunks: list[int], batch_size: int,
                      repeats: int) -> dict:
  """Median seconds of the looped and the vmapped sweeps per layer, speed-ups (medians of
  per-repeat ratios) and the largest difference between their accuracies."""
  from jaxdissect import class_ablation as ca, zoo  # pylint: disable=g-import-not-at-top
  from jaxdissect.sceneworld import scenes  # pylint: disable=g-import-not-at-top
  classifier = zoo.load_classifier("sceneworld")
  images, _, labels = scenes.render_scenes(n, seed)
  record = {"n": n, "seed": seed, "batch_size": batch_size, "repeats": repeats, "layers": {}}
  for layer in layers:
    units = ca.num_units(classifier, layer)
    runs = {"loop": None, **{f"vmapped_{min(c, units)}": min(c, units) for c in chunks}}

    def sweep(chunk, x, y, layer=layer):
      if chunk is None:
        return ca.single_unit_sweep_looped(classifier, layer, x, y, batch_size=batch_size)
      return ca.single_unit_sweep(classifier, layer, x, y, batch_size=batch_size, chunk=chunk)

    for chunk in runs.values():  # compile on one batch
      sweep(chunk, images[:batch_size], labels[:batch_size])
    times = {name: [] for name in runs}
    results = {}
    for r in range(repeats):
      for name, chunk in runs.items():
        start = time.perf_counter()
        results[name] = sweep(chunk, images, labels)
        times[name].append(time.perf_counter() - start)
        logging.info("%s %s repeat %d: %.2f s", layer, name, r + 1, times[name][-1])
    loop = results["loop"].ablated
    record["layers"][layer] = {
        "units": units, "seconds": {k: median(v) for k, v in times.items()}, "runs": times,
        "speedup": {k: median([a / b for a, b in zip(times["loop"], v)])
                    for k, v in times.items() if k != "loop"},
        "max_abs_difference": {k: float(np.nanmax(np.abs(results[k].ablated - loop)))
                               for k in runs if k != "loop"},
        "identical": {k: bool(np.array_equal(results[k].ablated, loop, equal_nan=True))
                      for k in runs if k != "loop"}}
  return record


def markdown(record: dict, command: str, machine: str) -> str:
  """The record as a Markdown table with the command and the machine."""
  head = (f"Single-unit class sweep, scene classifier, {record['n']} scenes, batch "
          f"{record['batch_size']}, medians of {record['repeats']} interleaved repeats "
          f"(compile excluded); {machine}.")
  lines = [head, "", f"`{command}`", "",
           "| layer | units | sweep | seconds | speed-up over the loop | same accuracies |",
           "|---|---:|---|---:|---:|---|"]
  for layer, r in record["layers"].items():
    for name, sec in r["seconds"].items():
      speed = "1" if name == "loop" else f"{r['speedup'][name]:.1f}x"
      same = "-" if name == "loop" else ("yes, exactly" if r["identical"][name] else
                                         f"NO (max diff {r['max_abs_difference'][name]:.2g})")
      label = "Python loop, one unit per call" if name == "loop" else \
          f"vmapped, {name.split('_')[1]} units per call"
      lines.append(f"| {layer} | {r['units']} | {label} | {sec:.2f} | {speed} | {same} |")
  return "\n".join(lines)


def _chunks() -> list[int]:
  try:
    chunks = [int(c) for c in _CHUNKS.value]
  except ValueError:
    raise cli.UsageError(f"--chunks={','.join(_CHUNKS.value)}; expected whole numbers") from None
  if not chunks or min(chunks) < 1:
    raise cli.UsageError(f"--chunks={','.join(_CHUNKS.value)}; expected positive numbers")
  return chunks


def _machine() -> str:
  """`N-core <CPU model>, CPU`, from /proc/cpuinfo where there is one."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{os.cpu_count()}-core {model}, CPU"


def run() -> None:
  for flag in (_N, _BATCH, _REPEATS):
    if flag.value < 1:
      raise cli.UsageError(f"--{flag.name}={flag.value}; expected a positive integer")
  record = bench_class_sweep(_N.value, _SEED.value, _LAYERS.value, _chunks(), _BATCH.value,
                            _REPEATS.value)
  command = "python -m experiments.benchmarks.class_sweep " + " ".join(sys.argv[1:])
  machine = _machine()
  record.update(command=command, machine=machine)
  cli.write_json(_OUT.value, record)
  table = markdown(record, command, machine)
  if _MARKDOWN.value:
    with open(_MARKDOWN.value, "w") as f:
      f.write(table + "\n")
  logging.info("wrote %s\n%s", _OUT.value, table)


def main(argv):
  cli.run_main("class_sweep", run, argv)


if __name__ == "__main__":
  app.run(main)
