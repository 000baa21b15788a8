"""How long one paint edit takes, in process and over HTTP, and how the server holds up under load.

Command (about 1 minute on 2 CPU cores, mostly the server's start):

  python -m experiments.benchmark_paint --dissection results/dissect-sceneworld

times `generate` with 3 strokes (the page's "remove tree", "add tree" and "remove tree" again,
top 15 units of the learned-alpha ranking where `units-tree.json` exists, else by IoU, each
inside its own stroke mask sent as a PNG data URL) on the scene GAN:

  * direct: decode masks, pack, run the compiled generator, encode the PNG (no HTTP);
  * in-process: the same request through the FastAPI app (`TestClient`, no sockets);
  * HTTP: the same request to `experiments.paint_server` started as a separate process on a free
    loopback port;

reporting the median of `--repeats` calls after a warm-up each. Then a bounded load test sends
`--requests` requests from `--clients` concurrent clients to that server (loopback only) and
reports errors, p50/p95 latency and throughput. Numbers go to the log and, with `--out`, to a
JSON file. The machine's load matters: on a shared 2-core CPU, say so next to the numbers.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import logging as std_logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings

from absl import app, flags, logging
import numpy as np
from PIL import Image

from experiments import cli, paint_server
from experiments.benchmarks.common import ROOT, timed
from experiments.cli import UsageError

_DISSECTION = flags.DEFINE_string("dissection", "results/dissect-sceneworld",
                                  "Output folder of experiments.dissect.")
_CONCEPT = flags.DEFINE_string("concept", "tree", "Concept the strokes remove and add.")
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed generate calls per setting.")
_REQUESTS = flags.DEFINE_integer("requests", 200, "Requests of the load test.")
_CLIENTS = flags.DEFINE_integer("clients", 8, "Concurrent clients of the load test.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON results (default: log only).")


def _stroke_png(size: tuple[int, int], y: int, x0: int, x1: int, width: int) -> str:
  """A transparent RGBA PNG data URL with one horizontal stroke painted opaque (like the page)."""
  alpha = np.zeros(size, np.uint8)
  alpha[max(y - width // 2, 0):y + width // 2 + 1, x0:x1] = 255
  rgba = np.dstack([np.zeros_like(alpha)] * 3 + [alpha])
  buffer = io.BytesIO()
  Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def three_strokes(model: paint_server.PaintModel, concept: str) -> dict:
  """A generate request for seed 7: remove, add, remove the concept's top 15 units."""
  layer = model.default_layer()
  rankings = {r["metric"]: r for r in model.rankings(layer, concept)}
  units = rankings.get("alpha", rankings["iou"])["units"][:15]
  levels = [model.layers[layer].units[u].threshold * paint_server.INSERT_SCALE
            for u in units]
  h, w = model.size
  strokes = [(h // 2, 0, w // 2, 0.0), (h // 3, w // 4, w, levels), (2 * h // 3, 0, w, 0.0)]
  return {"seeds": [7], "interventions": [
      {"layer": layer, "units": units, "alpha": 1, "value": value,
       "mask": _stroke_png((h, w), y, x0, x1, max(h // 10, 1))}
      for y, x0, x1, value in strokes]}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_server(port: int) -> subprocess.Popen:
  """`experiments.paint_server` on 127.0.0.1:port, once it answers /api/info."""
  import httpx
  env = dict(os.environ,
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  log = tempfile.TemporaryFile("w+")
  proc = subprocess.Popen([sys.executable, "-m", "experiments.paint_server", "--dissection",
                           os.path.abspath(_DISSECTION.value), "--port", str(port)],
                          env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
  deadline = time.time() + 180
  while time.time() < deadline:
    if proc.poll() is not None:
      log.seek(0)
      raise RuntimeError(f"paint_server exited: {log.read()[-2000:]}")
    try:
      if httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2).status_code == 200:
        return proc
    except httpx.HTTPError:
      time.sleep(0.25)
  proc.kill()
  raise RuntimeError("paint_server did not answer within 180 s")


def load_test(url: str, body: dict, requests: int, clients: int) -> dict:
  """`requests` POSTs of `body` from `clients` threads, each with its own connection."""
  import httpx
  per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

  def client(count: int) -> list[tuple[float, int | str]]:
    out = []
    with httpx.Client(timeout=120) as http:
      for _ in range(count):
        start = time.perf_counter()
        try:
          status = http.post(url, json=body).status_code
        except httpx.HTTPError as e:
          status = type(e).__name__
        out.append((time.perf_counter() - start, status))
    return out

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    results = [r for rs in pool.map(client, per_client) for r in rs]
  wall = time.perf_counter() - start
  latency = np.array([t for t, _ in results]) * 1000
  errors = [s for _, s in results if s != 200]
  return {"requests": len(results), "clients": clients, "errors": len(errors),
          "error_kinds": sorted({str(e) for e in errors}), "wall_s": wall,
          "throughput_per_s": len(results) / wall, "p50_ms": float(np.percentile(latency, 50)),
          "p95_ms": float(np.percentile(latency, 95)), "max_ms": float(latency.max())}


def run_benchmark() -> dict:
  import httpx
  std_logging.getLogger("httpx").setLevel(std_logging.WARNING)  # not a line per request
  with warnings.catch_warnings():  # starlette suggests httpx2; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
  for name in ("repeats", "requests", "clients"):
    if flags.FLAGS[name].value < 1:
      raise UsageError(f"--{name}={flags.FLAGS[name].value}; expected a positive integer")
  api = paint_server.create_app(_DISSECTION.value, "sceneworld")
  model = api.state.paint
  body = three_strokes(model, _CONCEPT.value)
  request = paint_server.GenerateRequest(**body)

  def direct():
    z = model.latents(request)
    images = model.render(z, model.strokes(request.interventions))
    return [paint_server.paint.png_data_url(im) for im in images]

  client = TestClient(api)
  in_process = lambda: client.post("/api/generate", json=body).raise_for_status()
  out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
         "load_average": list(os.getloadavg()), "dissection": _DISSECTION.value,
         "strokes": len(body["interventions"]), "units_per_stroke": 15,
         "direct_ms": 1000 * timed(direct, repeats=_REPEATS.value),
         "in_process_ms": 1000 * timed(in_process, repeats=_REPEATS.value)}
  port = _free_port()
  server = _start_server(port)
  try:
    url = f"http://127.0.0.1:{port}/api/generate"
    with httpx.Client(timeout=120) as http:
      out["http_ms"] = 1000 * timed(lambda: http.post(url, json=body).raise_for_status(),
                                    repeats=_REPEATS.value)
    out["load"] = load_test(url, body, _REQUESTS.value, _CLIENTS.value)
  finally:
    server.terminate()
    server.wait(timeout=30)
  out["load_average_after"] = list(os.getloadavg())
  return out


def main(argv):
  def run():
    out = run_benchmark()
    logging.info("generate with %d strokes: direct %.1f ms, in-process %.1f ms, HTTP %.1f ms "
                 "(medians)", out["strokes"], out["direct_ms"], out["in_process_ms"],
                 out["http_ms"])
    load = out["load"]
    logging.info("load: %d requests from %d clients, %d errors, p50 %.0f ms, p95 %.0f ms, "
                 "%.1f requests/s (load average %s)", load["requests"], load["clients"],
                 load["errors"], load["p50_ms"], load["p95_ms"], load["throughput_per_s"],
                 out["load_average"])
    if _OUT.value:
      cli.write_json(_OUT.value, out)
  cli.run_main("benchmark_paint", run, argv)


if __name__ == "__main__":
  app.run(main)
