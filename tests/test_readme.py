"""README's "Bring your own model" runs as written: every block marked `readme-test` is executed.

A block is marked by an HTML comment on the line before its fence: `<!-- readme-test: file NAME
-->` writes the block to NAME, `<!-- readme-test: shell -->` runs it with bash, and
`<!-- readme-test: python -->` runs it with this Python, all in one scratch folder that holds
the netdissect checkpoint the README names (a tiny ProgGAN written by the test). Edit the README
and this test follows; let the README rot and this test fails.
"""

import os
import pathlib
import re
import subprocess
import sys


import test_pth
from jaxdissect.report import reader

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARK = re.compile(
    r"<!-- readme-test: (file (?P<name>\S+)|shell|python) -->\n```\w*\n(?P<body>.*?)```", re.S)
TIMEOUT = 300


def readme_blocks() -> list[tuple[str, str | None, str]]:
  """`(kind, file name or None, body)` of every marked block, in README order."""
  text = (ROOT / "README.md").read_text()
  blocks = []
  for m in MARK.finditer(text):
    kind = "file" if m.group("name") else m.group(1)
    blocks.append((kind, m.group("name"), m.group("body")))
  return blocks


def test_readme_has_the_three_paths():
  kinds = [kind for kind, _, _ in readme_blocks()]
  assert kinds.count("shell") >= 2 and kinds.count("python") >= 1 and "file" in kinds, kinds


def test_readme_snippets_run(tmp_path):
  # The checkpoint the README names: a netdissect-layout ProgGAN with layer1..layer4, 8x8 images.
  test_pth.write_proggan(tmp_path / "churchoutdoor_lsun.pth", [16, 16, 8])
  env = dict(os.environ)
  env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(tmp_path),
                                                    env.get("PYTHONPATH")]))
  for kind, name, body in readme_blocks():
    if kind == "file":
      (tmp_path / name).write_text(body)
      continue
    cmd = ["bash", "-e", "-c", body] if kind == "shell" else [sys.executable, "-c", body]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, f"README block failed:\n{body}\n{proc.stderr[-3000:]}"
  folders = sorted(p.parent for p in (tmp_path / "results").glob("*/dissect.json"))
  assert len(folders) == len([k for k, _, _ in readme_blocks() if k != "file"]), folders
  for folder in folders:
    d = reader.read_dissection(str(folder))
    assert d.layers and all(len(layer.units) == layer.shape[2] for layer in d.layers)
    assert (folder / "report.html").exists()
