"""Load test of a served cascade on loopback, with the remote large model stopped mid-run.

1. Starts ``edgetune serve LARGE`` (the remote) and ``edgetune cascade serve DIR --remote ...``
   as subprocesses on 127.0.0.1.
2. Drives many concurrent clients (asyncio + httpx, one request = one test sample as JSON) for
   ``--duration`` seconds with the remote up, then stops the remote and keeps going for
   ``--after-stop`` seconds.
3. Prints throughput and latency percentiles per phase, and checks that no request failed and
   that every escalated sample after the stop got the small model's answer, flagged.

By default it serves the demo cascade (INT8 demo CNN + float32 teacher) built by
``bench/cascade.py``; give ``--cascade DIR`` to load-test another one. Run:
``python bench/cascade_load.py [--clients 32 --duration 60 --after-stop 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _edgetune(*args: str) -> list[str]:
    return [sys.executable, "-c", "from edgetune.cli import main; main()", *args]


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server {url} not healthy after {timeout_s} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Results:
    """One row per request: send time, latency, status, escalation and who answered."""

    rows: list[tuple[float, float, int, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop_at: float = float("inf")


async def _client(client: Any, bodies: list[bytes], end: float, seed: int, out: Results) -> None:
    rng = np.random.default_rng(seed)
    headers = {"content-type": "application/json"}
    while (now := time.monotonic()) < end:
        body = bodies[int(rng.integers(len(bodies)))]
        try:
            response = await client.post("/predict", content=body, headers=headers)
        except Exception as exc:  # a failed request is what this test looks for
            out.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        latency = time.monotonic() - now
        if response.status_code != 200:
            out.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
            continue
        answer = response.json()
        escalated = int(answer["escalated"][0])
        flagged = int(answer["answered_by"][0] == "small_fallback")
        out.rows.append((now, latency, response.status_code, escalated, flagged))


async def _drive(url: str, bodies: list[bytes], clients: int, duration: float,
                 after_stop: float, remote: subprocess.Popen[bytes]) -> Results:  # fmt: skip
    import httpx

    out = Results()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.monotonic()
    end = start + duration + after_stop
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        tasks = [asyncio.create_task(_client(client, bodies, end, i, out)) for i in range(clients)]
        await asyncio.sleep(duration)
        out.stop_at = time.monotonic()
        await asyncio.to_thread(_stop, remote)
        await asyncio.gather(*tasks)
    return out


def _phase(rows: list[tuple[float, float, int, int, int]], seconds: float) -> dict[str, float]:
    latencies = np.array([r[1] for r in rows]) * 1000.0
    return {
        "requests": len(rows),
        "throughput_rps": len(rows) / seconds if seconds > 0 else 0.0,
        "p50_ms": float(np.percentile(latencies, 50)) if len(rows) else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if len(rows) else float("nan"),
        "escalated": sum(r[3] for r in rows),
        "flagged": sum(r[4] for r in rows),
    }


def _report(out: Results, duration: float, after_stop: float, metrics: str) -> bool:
    before = [r for r in out.rows if r[0] < out.stop_at]
    after = [r for r in out.rows if r[0] >= out.stop_at]
    settled = [r for r in after if r[0] >= out.stop_at + 1.0]  # past in-flight at the stop
    unflagged = sum(1 for r in settled if r[3] and not r[4])
    print(f"{'phase':22}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'escalated':>11}{'flagged':>9}")  # fmt: skip
    for name, rows, seconds in (
        ("remote up", before, duration),
        ("remote stopped", after, after_stop),
    ):
        p = _phase(rows, seconds)
        print(f"{name:22}{p['requests']:>10}{p['throughput_rps']:>9.1f}{p['p50_ms']:>9.2f}"
              f"{p['p99_ms']:>9.2f}{p['escalated']:>11}{p['flagged']:>9}")  # fmt: skip
    print(
        f"failed requests: {len(out.errors)}" + (f" (first: {out.errors[0]})" if out.errors else "")
    )
    print(f"escalated after the stop (+1 s) answered without the fallback flag: {unflagged}")
    server = _histogram_quantiles(metrics, "edgetune_request_latency_seconds", (0.5, 0.99))
    print("server-side time per request (from the /metrics histogram, whole run): "
          + ", ".join(f"p{int(q * 100)} <= {v * 1000:g} ms" for q, v in server.items()))  # fmt: skip
    wanted = (
        "edgetune_remote_failures_total",
        "edgetune_fallbacks_total",
        "edgetune_escalation_rate",
    )
    for line in metrics.splitlines():
        if line.startswith(wanted):
            print(f"  /metrics: {line}")
    return not out.errors and unflagged == 0 and bool(before) and bool(settled)


def _histogram_quantiles(metrics: str, name: str, qs: tuple[float, ...]) -> dict[float, float]:
    """The upper edge of the bucket holding each quantile of a Prometheus histogram."""
    buckets, total = [], 0.0
    for line in metrics.splitlines():
        if line.startswith(f'{name}_bucket{{le="') and "+Inf" not in line:
            edge, count = line.split('le="')[1].split('"} ')
            buckets.append((float(edge), float(count)))
        elif line.startswith(f"{name}_count"):
            total = float(line.split()[-1])
    return {q: next((e for e, c in buckets if c >= q * total), float("inf")) for q in qs}


def _demo_cascade(workdir: Path) -> Path:
    """Build the demo cascade with bench/cascade.py's recipe (no re-split check)."""
    spec = importlib.util.spec_from_file_location(
        "bench_cascade", Path(__file__).with_name("cascade.py")
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from edgetune.cascade import CascadeConfig, Target, build_cascade

    task = bench.demo_task(workdir)
    config = CascadeConfig(target=Target(max_drop=0.005))
    result = build_cascade(task.small, task.large, config, data=task.certify, fit_data=task.fit)
    return Path(result.save(workdir / "demo-cascade", overwrite=True))


def _bodies(cascade_dir: Path, data: Path | None, n: int = 200) -> list[bytes]:
    """JSON request bodies, one sample each, from the last ``n`` samples of ``data``."""
    from edgetune.cascade import load_cascade
    from edgetune.demo import asset_path

    name = load_cascade(cascade_dir).small.inputs[0].name
    with np.load(data or asset_path("eval.npz")) as npz:
        x = npz[name][-n:]
    return [json.dumps({"inputs": {name: x[i : i + 1].tolist()}}).encode() for i in range(len(x))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cascade", type=Path, help="cascade directory (default: build the demo one)"
    )
    parser.add_argument("--data", type=Path, help=".npz of inputs to send (default: demo eval)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds with the remote up")
    parser.add_argument("--after-stop", type=float, default=20.0, help="seconds after stopping it")
    parser.add_argument(
        "--timeout-ms", type=float, default=300.0, help="remote escalation deadline"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="edgetune-cascade-load-"))
    cascade_dir = args.cascade or _demo_cascade(workdir)
    bodies = _bodies(cascade_dir, args.data)
    remote_port, cascade_port = _free_port(), _free_port()
    remote_url, url = f"http://{HOST}:{remote_port}", f"http://{HOST}:{cascade_port}"
    remote = _start(_edgetune("serve", str(cascade_dir / "large.onnx"), "--port", str(remote_port)),
                    workdir / "remote.log")  # fmt: skip
    server = _start(_edgetune("cascade", "serve", str(cascade_dir), "--port", str(cascade_port),
                              "--remote", remote_url, "--timeout-ms", str(args.timeout_ms)),
                    workdir / "cascade.log")  # fmt: skip
    try:
        _wait_healthy(remote_url, remote)
        _wait_healthy(url, server)
        print(f"cascade {cascade_dir} on {url}, remote large model on {remote_url}; "
              f"{args.clients} clients, {args.duration:.0f} s, then the remote is stopped for "
              f"{args.after_stop:.0f} s (logs in {workdir})")  # fmt: skip
        out = asyncio.run(_drive(url, bodies, args.clients, args.duration, args.after_stop, remote))
        import httpx

        metrics = httpx.get(f"{url}/metrics", timeout=10.0).text
        ok = _report(out, args.duration, args.after_stop, metrics)
    finally:
        _stop(remote)
        _stop(server)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
