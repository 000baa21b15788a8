"""Imports point one way: core <- model code (ports, worlds) <- registry (zoo) <- experiments.

The core (protocol, statistics, dissection, causal, report) must work with any model, so it
may import neither a port nor an experiment script; ports build on the protocol only; the
library never reaches into `experiments`. Checked on the source (every import statement, also
inside functions) and on a real interpreter's loaded modules.
"""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
REGISTRY_AND_WORLDS = ("jaxdissect/zoo.py", "jaxdissect/sceneworld/")


def _imports(path: pathlib.Path) -> set[str]:
  """Top-level package names of every module `path` imports (absolute imports)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
  return found


def _sources(folder: str) -> list[pathlib.Path]:
  return sorted((ROOT / folder).rglob("*.py"))


def _offences(files, forbidden) -> list[str]:
  return [f"{p.relative_to(ROOT)} imports {m}" for p in files for m in sorted(_imports(p))
          if any(m == f or m.startswith(f + ".") for f in forbidden)]


def test_library_never_imports_experiments():
  assert not _offences(_sources("jaxdissect") + _sources("ports"), ["experiments"])


def test_core_imports_no_port():
  core = [p for p in _sources("jaxdissect")
          if not str(p.relative_to(ROOT)).startswith(REGISTRY_AND_WORLDS)]
  assert len(core) > 20
  assert not _offences(core, ["ports", "jaxdissect.zoo", "jaxdissect.sceneworld"])


def test_ports_build_on_the_protocol_only():
  assert not _offences(_sources("ports"), ["jaxdissect.zoo", "jaxdissect.sceneworld"])


def test_core_loads_without_ports_at_run_time():
  core = ["dissect", "driver", "causal", "unitsets", "adapters", "report.output",
          "report.reader", "intervene", "paint", "planted", "colorseg"]
  code = ("import sys\n" + "".join(f"import jaxdissect.{m}\n" for m in core) +
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ports', 'experiments'))\n"
          "assert not bad, bad\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
