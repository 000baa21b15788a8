"""The library's one run loop: resume from its checkpoints, refuse other settings' checkpoints,
report progress by stage, and time its stages on request."""

import numpy as np
import pytest

from jaxdissect import dissect, driver


def _config(n=60):
  return dissect.Config(("layer2",), n, batch_size=20, warmup=20)


def _same(a, b):
  for layer in a:
    for x, y in zip(a[layer], b[layer], strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=layer)


def test_a_second_run_resumes_and_a_larger_n_continues(planted_world, tmp_path):
  gen, seg = planted_world.generator, planted_world.segmenter
  notes, seen = [], []
  first = driver.run(gen, seg, _config(), checkpoint_dir=str(tmp_path), identity={"m": 1},
                     note=notes.append, progress=lambda *a: seen.append(a))
  _same(first, dissect.dissect(gen, seg, _config()))
  assert seen and all(done <= total for _, done, total in seen)
  assert [done for stage, done, _ in seen if stage == "pass 1"] == [20, 40, 60]
  notes.clear()
  again = driver.run(gen, seg, _config(), checkpoint_dir=str(tmp_path), identity={"m": 1},
                     note=notes.append)
  _same(again, first)
  assert any(n.startswith("resuming") and "60 images tallied" in n for n in notes), notes
  more = driver.run(gen, seg, _config(100), checkpoint_dir=str(tmp_path), identity={"m": 1},
                    note=notes.append)
  _same(more, dissect.dissect(gen, seg, _config(100)))


def test_other_settings_are_refused_unless_fresh(planted_world, tmp_path):
  gen, seg = planted_world.generator, planted_world.segmenter
  driver.run(gen, seg, _config(), checkpoint_dir=str(tmp_path), identity={"model": "a"})
  with pytest.raises(driver.ResumeError, match="'model': \\('a', 'b'\\)"):
    driver.run(gen, seg, _config(), checkpoint_dir=str(tmp_path), identity={"model": "b"})
  notes = []
  driver.run(gen, seg, _config(), checkpoint_dir=str(tmp_path), identity={"model": "b"},
             fresh=True, note=notes.append)
  assert any(n.startswith("fresh") for n in notes)
  with pytest.raises(ValueError, match="checkpoint_every"):
    driver.run(gen, seg, _config(), checkpoint_every=0)


def test_stage_timings_add_up(planted_world):
  run = dissect.prepare(planted_world.generator, planted_world.segmenter, _config())
  times = {}
  results = driver.run_prepared(run, timings=times)
  _same(results, dissect.dissect(planted_world.generator, planted_world.segmenter, _config()))
  assert times["passes"] >= 1
  parts = times["warmup_s"] + times["tally_s"] + times["finish_s"]
  assert 0 < parts <= times["total_s"] + 1e-6
