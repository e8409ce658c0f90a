"""Bounded load test of ``l1cnn serve``: N requests from K concurrent clients, then it stops.

Starts the server for RUN on a free loopback port in a subprocess, sends one-image JSON requests
(the run's own test images, in turn) and prints requests/s and p50/p99 latency as a Markdown
row for benchmarks/RESULTS.md. ``tests/test_serve.py`` runs the same ``run_load``.

    .venv/bin/python benchmarks/serve_load.py RUN [--requests 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(
    run: str | Path,
    port: int,
    *extra: str,
    timeout: float = 90.0,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    https_ca: Path | None = None,
) -> Iterator[str]:
    """``l1cnn serve RUN`` in a subprocess; yields its base URL and always stops it.

    ``env`` adds environment variables, ``log`` receives the server's output (else it is kept in
    a pipe and shown if the server fails to start), ``https_ca`` (a PEM file to trust) means the
    server was given ``--tls-cert``/``--tls-key`` and is polled over HTTPS.
    """
    import httpx

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    sink = open(log, "wb") if log else subprocess.PIPE  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "l1cnn.cli", "serve", str(run), "--port", str(port), *extra],
        stdout=sink,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"{'https' if https_ca else 'http'}://127.0.0.1:{port}"
    verify: Any = str(https_ca) if https_ca else True
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                output = output or (log.read_text(errors="replace") if log else "")
                raise RuntimeError(f"server exited with {proc.returncode}: {output[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1.0, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer /healthz within {timeout:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if log:
            sink.close()


def run_load(
    url: str,
    bodies: list[bytes],
    n_requests: int = 2000,
    clients: int = 8,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Send ``n_requests`` POST /v1/predict JSON requests from ``clients`` threads; then stop.

    Args:
        url: the server's base URL.
        bodies: JSON request bodies, used in turn.
        n_requests: total requests (the test is bounded by this, not by time).
        clients: concurrent clients, each with its own keep-alive connection.
        headers: extra headers for every request (``Authorization`` for a server with a token).

    Returns:
        requests, errors, seconds, requests_per_s, p50_ms, p99_ms, clients.
    """
    import httpx

    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        nonlocal next_index
        with httpx.Client(
            base_url=url,
            timeout=30.0,
            headers={"content-type": "application/json", **(headers or {})},
        ) as http:
            while True:
                with lock:
                    if next_index >= n_requests:
                        return
                    i = next_index
                    next_index += 1
                started = time.perf_counter()
                try:
                    r = http.post("/v1/predict", content=bodies[i % len(bodies)])
                    ok = r.status_code == 200 and "predictions" in r.json()
                    problem = "" if ok else f"HTTP {r.status_code}"
                except (httpx.HTTPError, ValueError) as exc:
                    problem = type(exc).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "seconds": seconds,
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "clients": clients,
    }


def request_bodies(images: np.ndarray, limit: int = 256) -> list[bytes]:
    """One-image ``{"instances": [...]}`` bodies for the first ``limit`` images."""
    return [json.dumps({"instances": [img.tolist()]}).encode() for img in images[:limit]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    from l1cnn.predict import reload_run_data
    from l1cnn.runs import load_run

    run = load_run(args.run)
    images = reload_run_data(run).splits["test"].images
    with running_server(args.run, free_port()) as url:
        result = run_load(url, request_bodies(images), args.requests, args.clients)
    print(json.dumps(result, indent=2))
    cpu = f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
    print(
        f"| {dt.date.today()} | {run.path.name} {'x'.join(map(str, run.image_shape))} | "
        f"{result['requests']} | {result['clients']} | {result['errors']} | "
        f"{result['requests_per_s']:.0f} | {result['p50_ms']:.1f} | {result['p99_ms']:.1f} | "
        f"{cpu} |"
    )
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
