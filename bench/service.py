"""Benchmark: the HTTP teacher service under C concurrent clients vs in-process batched forward.

Starts the real server (the service app under ``python -m uvicorn`` on 127.0.0.1) with a
teacher big enough that compute dominates, drives it with C concurrent clients each sending
single-image JSON requests (centre view) for a fixed count, then runs the same images in-process:
decode + render + batched forward at the same max batch size. Prints a table, one JSON line per C,
and as its last line one JSON object (the largest C, with the whole curve)::

    {"bench": "service", "clients": 32, "service_img_s": ..., "inprocess_img_s": ...,
     "service_ratio": ..., "p50_ms": ..., "p99_ms": ..., "mean_batch": ..., "model_busy": ...,
     "server_cpu_ms_img": ..., "client_cpu_ms_img": ..., "inprocess_cpu_ms_img": ...,
     "errors": 0, "load_avg_1m": ..., ...}

``service_ratio`` is wall-clock and swings with other load on a shared machine; the CPU ms per
image of the server process (all its threads), of the bench's HTTP clients and of the in-process
loop say whether the service itself spends more than the reference (``model_busy``: the fraction
of wall time the model thread computed).

Usage: ``python bench/service.py [--clients 1,8,32] [--requests 96] [--arch resnet18 --width 32]``
``--http h11 --loop asyncio`` measures uvicorn's pure-Python stack (``auto``: httptools + uvloop
when installed, as ``disco serve`` runs).
GPU host: ``--device cuda --precision bf16`` runs the server and the in-process reference there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from store.decode import decode_image
from store.views import get_recipe, render_center
from teacher_service.checkpoint import save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.service.logs import log_config
from teacher_service.service.model import load_runtime


def make_images(n: int, size: int, seed: int = 0) -> list[bytes]:
    """n random RGB PNG images of side ~size px (a little larger, so rendering resizes)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 256, (size + 8, size + 16, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    settings: dict[str, str],
    log: Path,
    http: str = "auto",
    loop: str = "auto",
    access_log: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """The service app under ``python -m uvicorn --factory`` (settings as ``DISCO_*`` variables),
    with uvicorn's HTTP parser (h11, httptools) and event loop (asyncio, uvloop) chosen, so one
    bench can compare them; ``auto`` is what ``disco serve`` gets (the fastest installed).
    ``access_log``: the service's JSON access line per request (as ``disco serve
    --log-format json``), else warnings only."""
    port = free_port()
    env = {**os.environ, **{f"DISCO_{k.upper()}": v for k, v in settings.items()}}
    level = "warning"
    extra: list[str] = []
    if access_log:
        level = "info"
        config = log.with_suffix(".logging.json")
        config.write_text(json.dumps(log_config("json", level)))
        extra = ["--log-config", str(config)]
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "teacher_service.service.app:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--http", http, "--loop", loop,
           "--log-level", level, *extra]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # a busy shared machine imports torch slowly
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")


def batch_stats(url: str) -> tuple[float, float, float]:
    """(sum, count) of the server's batch-size histogram and the model's busy seconds
    (``disco_inference_seconds_sum``)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith(
            ("disco_batch_size_sum", "disco_batch_size_count", "disco_inference_seconds_sum")
        ):
            name, value = line.split()
            values[name] = float(value)
    return (
        values.get("disco_batch_size_sum", 0.0),
        values.get("disco_batch_size_count", 0.0),
        values.get("disco_inference_seconds_sum", 0.0),
    )


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (this process when None), all threads."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


STAGES = ("parse_ms", "prep_ms", "queue_ms", "inference_ms", "wait_ms", "respond_ms", "duration_ms")


def stage_profile(log: Path, since_line: int) -> tuple[dict[str, float], int]:
    """Mean ms per embedding request of each stage in the server's JSON access lines after line
    ``since_line``, plus ``handoff_ms`` (rows back -> handler resumed: wait - queue - inference)
    and ``outside_ms`` (HTTP parsing, middleware, loop scheduling: duration - handler stages)."""
    lines = log.read_text().splitlines()
    rows = []
    for line in lines[since_line:]:
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("route") == "/v1/embeddings" and rec.get("status") == 200:
                rows.append(rec)
    if not rows:
        return {}, len(lines)
    out = {k: statistics.fmean(r[k] for r in rows) for k in STAGES}
    out["handoff_ms"] = out["wait_ms"] - out["queue_ms"] - out["inference_ms"]
    handler = sum(out[k] for k in ("parse_ms", "prep_ms", "wait_ms", "respond_ms"))
    out["outside_ms"] = out["duration_ms"] - handler
    return {k: round(v, 3) for k, v in out.items()}, len(lines)


async def drive(url: str, bodies: list[bytes], clients: int) -> tuple[float, list[float], int]:
    """Send every body once with ``clients`` concurrent workers; (seconds, latencies ms, errors)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Content-Type": "application/json", "Accept": "application/octet-stream"}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            r = await client.post(f"{url}/v1/embeddings", content=body, headers=headers)
            latencies.append(1000 * (time.perf_counter() - t0))
            if r.status_code != 200:
                errors += 1

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return elapsed, latencies, errors


def inprocess(
    teacher: Path,
    images: list[bytes],
    batch: int,
    size: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> tuple[float, float]:
    """Images/s of decode + render + batched forward in this process (same batch size), through
    the service's own forward (``TeacherRuntime.embed``: same device settings and precision),
    and the CPU seconds that loop used."""
    runtime = load_runtime(teacher, device=device, precision=precision)
    recipe = get_recipe("mocov2", size)
    runtime.embed(torch.stack([render_center(decode_image(images[0]), recipe)]))  # warm-up
    start, cpu = time.perf_counter(), cpu_seconds()
    for k in range(0, len(images), batch):
        x = torch.stack([render_center(decode_image(b), recipe) for b in images[k : k + batch]])
        runtime.embed(x)
    return len(images) / (time.perf_counter() - start), cpu_seconds() - cpu


def main() -> None:
    """Run the benchmark and print the table and JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    ap.add_argument("--requests", type=int, default=48, help="single-image requests per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per level (median)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=int, default=64, help="ResNet base width")
    ap.add_argument("--size", type=int, default=112, help="input side in px")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (server and in-process)")
    ap.add_argument("--prep-threads", type=int, default=1, help="server decode/render threads")
    ap.add_argument("--device", default="cpu", help="server + in-process device: cpu, cuda")
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="compute precision (bf16/fp16: CUDA only)",
    )
    ap.add_argument("--http", default="auto", help="uvicorn HTTP parser: auto, h11, httptools")
    ap.add_argument("--loop", default="auto", help="uvicorn event loop: auto, asyncio, uvloop")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="server writes JSON access lines (as `disco serve --log-format json`); print the "
        "mean ms per request of each stage and the model's busy fraction",
    )
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher.pt"
        torch.manual_seed(0)
        cfg = EncoderConfig(arch=args.arch, width=args.width, head_hidden=512, head_out=128)
        recipe = get_recipe("mocov2", args.size)
        pre = {"size": args.size, "mean": list(recipe.mean), "std": list(recipe.std),
               "interpolation": "bilinear", "antialias": True, "recipe": "mocov2"}  # fmt: skip
        save_checkpoint(teacher, build_encoder(cfg), pre)
        images = make_images(args.requests, args.size)
        bodies = [
            json.dumps({"images": [{"data": base64.b64encode(b).decode()}]}).encode()
            for b in images
        ]
        settings = {"teacher": str(teacher), "max_batch_size": str(args.max_batch_size),
                    "max_wait_ms": str(args.max_wait_ms), "max_queue": "4096",
                    "threads": str(args.threads), "prep_threads": str(args.prep_threads),
                    "device": args.device, "precision": args.precision}  # fmt: skip
        log = Path(tmp) / "server.log"
        proc, url = start_server(settings, log, args.http, args.loop, access_log=args.profile)
        rows: list[dict[str, Any]] = []
        try:
            asyncio.run(drive(url, bodies[:8], 4))  # warm-up
            seen = len(log.read_text().splitlines())
            for clients in levels:
                # Interleave service and in-process rounds: the machine is shared and noisy, so
                # each figure is the median over rounds taken at nearly the same time.
                svc_rates, ref_rates, lat, errors = [], [], [], 0
                before = batch_stats(url)
                served_s = server_cpu = client_cpu = ref_cpu = 0.0
                for _ in range(args.rounds):
                    cpu0, own0 = cpu_seconds(proc.pid), cpu_seconds()
                    elapsed, round_lat, round_err = asyncio.run(drive(url, bodies, clients))
                    server_cpu += cpu_seconds(proc.pid) - cpu0
                    client_cpu += cpu_seconds() - own0
                    served_s += elapsed
                    svc_rates.append(len(bodies) / elapsed)
                    lat += round_lat
                    errors += round_err
                    rate, used = inprocess(
                        teacher,
                        images,
                        args.max_batch_size,
                        args.size,
                        args.device,
                        args.precision,
                    )
                    ref_rates.append(rate)
                    ref_cpu += used
                after = batch_stats(url)
                count = after[1] - before[1]
                mean_batch = (after[0] - before[0]) / count if count else 0.0
                model_busy = (after[2] - before[2]) / served_s
                n_served = len(bodies) * args.rounds
                stages, seen = stage_profile(log, seen) if args.profile else ({}, seen)
                svc = statistics.median(svc_rates)
                ref = statistics.median(ref_rates)
                rows.append(
                    {
                        "bench": "service",
                        "clients": clients,
                        "service_img_s": round(svc, 2),
                        "inprocess_img_s": round(ref, 2),
                        "service_ratio": round(svc / ref, 3),
                        "p50_ms": round(float(np.percentile(lat, 50)), 2),
                        "p99_ms": round(float(np.percentile(lat, 99)), 2),
                        "mean_batch": round(mean_batch, 2),
                        "model_busy": round(model_busy, 3),
                        # CPU ms per image, robust to a busy machine: the server process (all
                        # threads), the bench's own HTTP clients, the in-process reference.
                        "server_cpu_ms_img": round(1000 * server_cpu / n_served, 2),
                        "client_cpu_ms_img": round(1000 * client_cpu / n_served, 2),
                        "inprocess_cpu_ms_img": round(1000 * ref_cpu / n_served, 2),
                        "errors": errors,
                        "requests": len(bodies) * args.rounds,
                        "rounds": args.rounds,
                        "threads": args.threads,
                        "model": f"{args.arch}/w{args.width}@{args.size}px",
                        "device": args.device,
                        "precision": args.precision,
                        "max_batch_size": args.max_batch_size,
                        "http": args.http,
                        "loop": args.loop,
                        "load_avg_1m": round(os.getloadavg()[0], 2),
                        **({"stages_ms": stages} if args.profile else {}),
                    }
                )
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"{'C':>4} {'service img/s':>14} {'in-proc img/s':>14} {'ratio':>6} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'err':>4}")  # fmt: skip
    for r in rows:
        print(f"{r['clients']:>4} {r['service_img_s']:>14.1f} {r['inprocess_img_s']:>14.1f} "
              f"{r['service_ratio']:>6.2f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['mean_batch']:>6.1f} {r['errors']:>4}")  # fmt: skip
    for r in rows:
        print(json.dumps(r))
    last = dict(rows[-1])
    last["curve"] = [
        {k: r[k] for k in ("clients", "service_img_s", "service_ratio", "mean_batch")} for r in rows
    ]
    print(json.dumps(last))


if __name__ == "__main__":
    main()
