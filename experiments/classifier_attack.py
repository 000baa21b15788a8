"""Adversarial attacks through units: does an attack towards a class push that class's units?

Command (about 8 minutes on 2 CPU cores for the scene classifier, 3 targets x 48 images):

  python -m experiments.classifier_attack --targets village,forest,highway \
      --ablation OUT/class-ablation.json --outdir OUT

For each target class, takes the first `--per_target` of `--n` held-out images (`--seed`)
that are neither labelled nor predicted as the target, attacks them with the targeted
Carlini-Wagner L2 attack of `jaxdissect.attack` (`--steps` Adam steps in each of
`--search_steps` rounds of the search over the trade-off constant) and measures, over the
images that became the target, the mean |change| of activation at `--layer` of the target's
`--top` units against the other units, with 99% intervals (`attack.unit_shift`), and, as a
control, against the other classes' top units (class units may be the ones that move most
under any attack, whatever its target). The units are ranked as
`experiments.classifier_ablation` ranks them: read from its JSON (`--ablation`), or ranked here
on the training split with the same flags. Writes `OUT/class-attack.json` (settings; per
target: success rate, L2 distances, the means and intervals, each unit's mean change, whether
the intervals separate) and `OUT/class-attack.svg` (bars with 99% whiskers). The attack
checkpoints after every batch under `OUT/class-attack.checkpoint`; the same command resumes
(`--fresh` starts over).
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
import numpy as np

from experiments import class_sets, cli
from experiments.cli import UsageError
from experiments.progress import progress
from jaxdissect import attack, checkpoint
from jaxdissect.causal import Z99
from jaxdissect.class_ablation import class_index, num_units
from jaxdissect.report import class_charts

_TARGETS = flags.DEFINE_list("targets", None, "Target classes (default: the first three).")
_N = flags.DEFINE_integer("n", 100, "Held-out images the attacked ones are picked from.")
_SEED = flags.DEFINE_integer("seed", 3000, "Sample of the held-out images.")
_PER_TARGET = flags.DEFINE_integer("per_target", 48, "Images attacked per target (the first "
                                   "eligible ones).")
_STEPS = flags.DEFINE_integer("steps", 50, "Adam steps per round of the constant search.")
_SEARCH = flags.DEFINE_integer("search_steps", 2, "Rounds of the search over the constant.")
_LR = flags.DEFINE_float("learning_rate", 0.02, "Adam step size (in tanh space).")
_CONST = flags.DEFINE_float("initial_const", 1.0, "First trade-off constant.")
_CONFIDENCE = flags.DEFINE_float("confidence", 0.0, "Logit margin the target must win by.")
_ATTACK_BATCH = flags.DEFINE_integer("attack_batch", 24, "Images attacked per compiled call.")
_REDUCE = flags.DEFINE_enum("reduce", "mean", ["mean", "peak"], "Per-unit change: spatial mean "
                            "of |delta| (the paper's conv5_3 measure) or change of the peak.")
_ABLATION = flags.DEFINE_string("ablation", None, "class-ablation.json of the same classifier "
                                "and layer to take the ranking from (default: rank here).")
_FRESH = flags.DEFINE_bool("fresh", False, "Ignore a checkpoint and start over.")


def _ranking(s: class_sets.Setup) -> tuple[np.ndarray, str]:
  """`[K, U]` ranking and where it came from."""
  if not _ABLATION.value:
    return class_sets.rank(s).order, "ranked here on the training split"
  try:
    with open(_ABLATION.value) as f:
      doc = json.load(f)
    order = np.asarray(doc["ranking"], np.int64)
    found = (doc["model"], doc["layer"], tuple(doc["classes"]))
  except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
    raise UsageError(f"--ablation={_ABLATION.value} is not a readable class-ablation.json "
                     f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
  want = (s.model, s.layer, tuple(s.classifier.classes))
  units = num_units(s.classifier, s.layer)
  if found != want or order.shape != (len(want[2]), units):
    raise UsageError(f"--ablation={_ABLATION.value} ranks {found[1]} of {found[0]}; this run "
                     f"attacks {s.layer} of {s.model} ({units} units)")
  return order, f"from {_ABLATION.value}"


def _targets(s: class_sets.Setup) -> list[str]:
  names = _TARGETS.value or list(s.classifier.classes[:3])
  for name in names:
    cli.checked(class_index, s.classifier, name)
  if len(set(names)) != len(names) or not names:
    raise UsageError(f"--targets={','.join(names)}; expected distinct class names")
  return names


def _settings(targets: list[str]) -> dict:
  return {**class_sets.settings(), "targets": targets, "n": _N.value, "seed": _SEED.value,
          "per_target": _PER_TARGET.value, "steps": _STEPS.value,
          "search_steps": _SEARCH.value, "learning_rate": _LR.value,
          "initial_const": _CONST.value, "confidence": _CONFIDENCE.value,
          "attack_batch": _ATTACK_BATCH.value, "reduce": _REDUCE.value,
          "ablation": _ABLATION.value}


def _attack_all(s, images, picks, targets, root, meta) -> tuple[np.ndarray, np.ndarray]:
  """Adversarial images `[T, P, H, W, 3]` and squared distances `[T, P]` (inf: failed),
  batch by batch, saved after each and resumed from `root`."""
  t, p = len(targets), picks.shape[1]
  tree = {"adversarial": np.zeros((t, p, *s.classifier.image_shape), np.float32),
          "d2": np.full((t, p), np.inf, np.float32)}
  done = 0
  saved = None if _FRESH.value else checkpoint.latest_meta(root)
  if saved is not None:
    if saved["settings"] != meta:
      raise UsageError(f"{root} holds a run with other settings; pass --fresh to start over")
    tree, saved = checkpoint.load_latest(root, tree)
    tree = {k: np.array(v) for k, v in tree.items()}
    done = saved["done"]
    logging.info("resuming after %d of %d batches", done, t * _batches(p))
  size = min(_ATTACK_BATCH.value, p)
  jobs = [(i, start) for i in range(t) for start in range(0, p, size)]
  for i, start in progress(jobs[done:], (len(jobs) - done) * size, desc="attack", unit="img",
                           scale=size, quiet=class_sets.QUIET.value):
    rows = picks[i, start:start + size]
    real = len(rows)
    rows = np.concatenate([rows, np.repeat(rows[-1:], size - real)])
    result = attack.cw_l2(s.classifier, images[rows], targets[i], steps=_STEPS.value,
                          search_steps=_SEARCH.value, learning_rate=_LR.value,
                          initial_const=_CONST.value, confidence=_CONFIDENCE.value,
                          batch_size=size)
    tree["adversarial"][i, start:start + real] = result.adversarial[:real]
    tree["d2"][i, start:start + real] = np.square(result.l2[:real])
    done += 1
    checkpoint.save_latest(root, tree, {"settings": meta, "done": done})
  return tree["adversarial"], tree["d2"]


def _batches(p: int) -> int:
  size = min(_ATTACK_BATCH.value, p)
  return -(-p // size)


def _mean_ci(x: np.ndarray) -> tuple[float, float]:
  if len(x) < 2:
    return (float(np.mean(x)) if len(x) else float("nan")), float("nan")
  return float(np.mean(x)), float(Z99 * np.std(x, ddof=1) / np.sqrt(len(x)))


def run_attack() -> str:
  """Everything `main` does; returns the JSON's path. Raises UsageError for bad flags."""
  for flag in (_N, _PER_TARGET, _STEPS, _SEARCH, _ATTACK_BATCH):
    if flag.value < 1:
      raise UsageError(f"--{flag.name}={flag.value}; expected a positive integer")
  s = class_sets.setup()
  targets = _targets(s)
  out = class_sets.outdir()
  order, source = _ranking(s)
  top = class_sets.TOP.value
  images, labels = class_sets.images(s.classifier, _N.value, _SEED.value)
  picks = []
  for name in targets:
    ok = np.flatnonzero(attack.eligible(s.classifier, images, labels, name,
                                        batch_size=class_sets.BATCH.value))
    if len(ok) < _PER_TARGET.value:
      raise UsageError(f"only {len(ok)} of the --n={_N.value} images are eligible for "
                       f"{name}; raise --n or lower --per_target")
    picks.append(ok[:_PER_TARGET.value])
  picks = np.stack(picks)
  meta = _settings(targets)
  adversarial, d2 = _attack_all(s, images, picks, targets, os.path.join(
      out, "class-attack.checkpoint"), meta)
  results = {}
  for i, name in enumerate(targets):
    results[name] = _measure(s, images[picks[i]], adversarial[i], d2[i], order, name, top)
  doc = {"model": s.model, "model_args": s.model_args, "layer": s.layer,
         "classes": list(s.classifier.classes), "settings": meta, "ranking_source": source,
         "attack": "targeted Carlini-Wagner L2 (jaxdissect.attack.cw_l2)",
         "images": {name: picks[i].tolist() for i, name in enumerate(targets)},
         "targets": results}
  path = os.path.join(out, "class-attack.json")
  cli.write_json(path, doc)
  nan = float("nan")
  groups = [(name, [(r.get(f"{key}_change", nan), r.get(f"{key}_ci99", nan))
                    for key in ("top_units", "other_units", "control_units")])
            for name, r in results.items()]
  legend = [f"target's top {top} units", "all other units",
            f"other classes' top {top} units"]
  with open(os.path.join(out, "class-attack.svg"), "w") as f:
    f.write(class_charts.shift_chart(
        groups, legend, f"mean |change of activation| at {s.layer}",
        f"CW-L2 attacks towards each target: which units of {s.layer} moved ({s.model})"))
  for name, r in results.items():
    logging.info("%s", r["statement"])
  return path


def _measure(s, originals, adversarial, d2, order, name, top) -> dict:
  """Success, distances and the unit shift of one target's attacks."""
  k = class_index(s.classifier, name)
  success = np.isfinite(d2)
  l2 = np.sqrt(d2[success])
  rate, rate_ci = _mean_ci(success.astype(np.float64))
  record = {"attacked": len(d2), "succeeded": int(success.sum()),
            "success_rate": rate, "success_rate_ci99": rate_ci,
            "l2_mean": _mean_ci(l2)[0], "l2_ci99": _mean_ci(l2)[1],
            "l2_median": float(np.median(l2)) if len(l2) else float("nan"),
            "top_units": [int(u) for u in order[k, :top]]}
  if not success.any():
    record["statement"] = f"{name}: no attack succeeded; nothing to measure"
    return record
  shift = attack.unit_shift(s.classifier, s.layer, originals, adversarial, success,
                            order[k, :top], reduce=_REDUCE.value,
                            batch_size=class_sets.BATCH.value)
  separated = shift.top - shift.top_ci99 > shift.other + shift.other_ci99
  per_unit = np.asarray(shift.per_unit)
  rank_of_top = [int(np.sum(per_unit > per_unit[u])) + 1 for u in order[k, :top]]
  by_class = {c: float(per_unit[order[j, :top]].mean())
              for j, c in enumerate(s.classifier.classes) if j != k}
  # Control: the other classes' top units (class units may simply be the ones that move most).
  others = sorted({int(u) for j in range(len(order)) if j != k for u in order[j, :top]} -
                  {int(u) for u in order[k, :top]})
  control = attack.Shift(*[float("nan")] * 4, per_unit=per_unit, n=0)
  if others:
    control = attack.unit_shift(s.classifier, s.layer, originals, adversarial, success, others,
                                reduce=_REDUCE.value, batch_size=class_sets.BATCH.value)
  above_control = shift.top - shift.top_ci99 > control.top + control.top_ci99
  record.update({
      "top_units_change": shift.top, "top_units_ci99": shift.top_ci99,
      "other_units_change": shift.other, "other_units_ci99": shift.other_ci99,
      "ratio": shift.top / shift.other if shift.other else float("inf"),
      "separated": bool(separated), "n": shift.n, "per_unit_change": per_unit.tolist(),
      "top_units_rank_by_change": rank_of_top,
      "control_units": others, "control_units_change": control.top,
      "control_units_ci99": control.top_ci99, "above_control": bool(above_control),
      "other_classes_top_units_change": by_class,
      "statement": (f"{name}: {success.sum()}/{len(d2)} attacks succeeded (mean L2 "
                    f"{np.mean(l2):.2f}); top-{top} units changed {shift.top:.4f} +- "
                    f"{shift.top_ci99:.4f}, other units {shift.other:.4f} +- "
                    f"{shift.other_ci99:.4f} (99% CIs): "
                    + ("the intervals do not overlap, top units above" if separated else
                       "NOT separated: the intervals overlap or the top units changed less")
                    + f"; the other classes' top-{top} units changed {control.top:.4f} +- "
                    f"{control.top_ci99:.4f} ("
                    + ("target's units above" if above_control else "target's units NOT above")
                    + ")")})
  return record


def main(argv):
  cli.run_main("classifier_attack", run_attack, argv)


if __name__ == "__main__":
  app.run(main)
