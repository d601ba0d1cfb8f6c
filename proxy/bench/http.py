"""Baselines for ``modelbus bench predict``: the same model behind HTTP servers.

* ``aiohttp``: a 20-line aiohttp server in its own process calling the model function — the
  least any HTTP model server can cost.
* ``MLServer``: a custom MLServer runtime wrapping the same function, served through its REST
  V2 (Open Inference Protocol) API, when an MLServer installation is given (its ``mlserver``
  executable, e.g. from a separate virtualenv: ``MODELBUS_MLSERVER=/path/to/bin/mlserver``).

Run as ``python -m proxy.bench.http PORT`` this module is the aiohttp server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import web

__all__ = ["aiohttp_server", "http_latencies", "http_throughput", "mlserver"]


def model(inputs: list[list[float]]) -> list[float]:
    """The benchmark's trivial model: double the first feature."""
    return [2.0 * row[0] for row in inputs]


async def _predict(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"outputs": model(body["inputs"])})


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _serve_aiohttp(port: int) -> None:
    app = web.Application()
    app.router.add_post("/predict", _predict)
    app.router.add_get("/health", _health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the baseline server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"the baseline server at {url} did not start in {timeout_s:.0f} s")


@contextmanager
def _process(argv: list[str], ready_url: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http(ready_url, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def aiohttp_server(port: int, workdir: Path) -> Iterator[str]:
    """Run the aiohttp baseline; yields its predict URL."""
    argv = [sys.executable, "-m", "proxy.bench.http", str(port)]
    with _process(argv, f"http://127.0.0.1:{port}/health", workdir / "aiohttp.log"):
        yield f"http://127.0.0.1:{port}/predict"


_MLSERVER_RUNTIME = """
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
import numpy as np


class Doubler(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload):
        rows = NumpyRequestCodec.decode_request(payload)
        out = np.asarray([2.0 * row[0] for row in rows.tolist()], dtype=np.float64)
        return NumpyRequestCodec.encode_response(self.name, out)
"""


@contextmanager
def mlserver(executable: str, ports: tuple[int, int, int], workdir: Path) -> Iterator[str]:
    """Run MLServer with the same model (one process: ``parallel_workers: 0``)."""
    http, grpc, metrics = ports
    folder = Path(tempfile.mkdtemp(prefix="mlserver-", dir=workdir))
    (folder / "runtime.py").write_text(_MLSERVER_RUNTIME)
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "http_port": http,
                "grpc_port": grpc,
                "metrics_port": metrics,
                "parallel_workers": 0,
                "host": "127.0.0.1",
            }
        )
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "m",
                "implementation": "runtime.Doubler",
            }
        )
    )
    argv = [executable, "start", str(folder)]
    with _process(argv, f"http://127.0.0.1:{http}/v2/health/ready", workdir / "mlserver.log"):
        yield f"http://127.0.0.1:{http}/v2/models/m/infer"


def v2_body(row: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}


def plain_body(row: list[float]) -> dict[str, Any]:
    return {"inputs": [row]}


async def http_latencies(url: str, body: dict[str, Any], count: int) -> list[float]:
    """Seconds per request, one at a time, over one keep-alive connection."""
    latencies = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(url, json=body) as response:
                response.raise_for_status()
                await response.read()
            latencies.append(time.perf_counter() - started)
    return latencies


async def http_throughput(url: str, body: dict[str, Any], count: int, in_flight: int) -> float:
    """Requests per second with ``in_flight`` requests outstanding."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:

        async def worker(share: int) -> None:
            for _ in range(share):
                async with session.post(url, json=body) as response:
                    response.raise_for_status()
                    await response.read()

        started = time.perf_counter()
        async with anyio.create_task_group() as task_group:
            for _ in range(in_flight):
                task_group.start_soon(worker, count // in_flight)
        return (count // in_flight * in_flight) / (time.perf_counter() - started)


if __name__ == "__main__":
    _serve_aiohttp(int(sys.argv[1]))
