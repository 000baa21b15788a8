"""The ProgGAN benchmark parts' arithmetic and tables, on made-up records (no models run)."""

import pytest

from experiments.benchmarks import markdown, versus_original


def _child(threshold, wall_s, rss, n=1000):
  return {"n": n, "batch_size": 100, "warmup": 100, "threshold": threshold, "layer": "layer4",
          "segmenter": "stand-in: test", "images": True, "checkpoints": True, "models_s": 2.0,
          "dissect_s": wall_s - 30.0, "write_s": 20.0, "warmup_s": 5.0, "tally_s": 400.0,
          "finish_s": 3.0, "passes": 1, "top_images": 900, "interpretable": [7],
          "peak_rss_bytes": rss, "wall_s": wall_s, "command": "python -m child --n 1000"}


def test_original_reference_scales_with_n():
  assert versus_original.original_s("iqr", 1000) == 4500.0
  assert versus_original.original_s("iqr", 500) == 2250.0
  assert versus_original.original_s(0.01, 1000) == 1000.0


def test_compare_ratios():
  out = versus_original.compare(_child("iqr", 900.0, 2.5e9), floor_s=600.0)
  assert out["speedup"] == pytest.approx(5.0)
  assert out["rss_ratio"] == pytest.approx(0.5)
  assert out["wall_floor_ratio"] == pytest.approx(1.5)
  assert out["dissect_floor_ratio"] == pytest.approx((870.0 + 20.0) / 600.0)


def test_tables_render():
  floor = {"bare_s": 400.0, "generator_s_per_image": 0.25, "top_images": 900,
           "regenerate_s": 225.0, "floor_s": 625.0, "batch_size": 100}
  record = {
      "repeats": 3,
      "proggan_memory": {"target_bytes": 1.5e9, "ratio": 1.01, "meets_target": True,
                         "runs": [_child(0.01, 300.0, 1.2e9, n=500),
                                  _child(0.01, 600.0, 1.3e9)]},
      "versus_original": {"n": 1000, "segmenter": "stand-in: test", "floor": floor,
                          "iqr": versus_original.compare(_child("iqr", 900.0, 2e9), 625.0),
                          "quantile": versus_original.compare(_child(0.01, 700.0, 2e9), 625.0)},
  }
  text = markdown.dissect_markdown(record)
  assert "| 500 | 100 | 1144 | yes | 300 | 1 |" in text
  assert "| iqr | 900 | 4500 | 5.0x |" in text
  assert "| 0.01 | 700 | 1000 | 1.4x |" in text
  assert "Floor 625 s" in text
