"""End to end against a real uvicorn server (subprocess on 127.0.0.1): same embeddings as the
in-process teacher, concurrent requests batched, write-through verified, overload answered with
429s only, a disconnected client's queued work dropped."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from store.datasets import ImageDataset, open_dataset
from store.embedding_store import EmbeddingStore
from store.manifest import build_manifest
from store.views import get_recipe, render_center, render_view
from teacher_service.checkpoint import load_encoder, save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.verify import verify_store

SIZE = 32
RECIPE = get_recipe("mocov2", SIZE)
MAX_QUEUE = 16
PRE = {
    "size": SIZE,
    "mean": list(RECIPE.mean),
    "std": list(RECIPE.std),
    "interpolation": "bilinear",
    "antialias": True,
    "recipe": "mocov2",
}


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    args: list[str], log: Path, timeout: float = 90.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m teacher_service.serve_cli ARGS`` on a free port; wait for /healthz."""
    for _ in range(3):
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "teacher_service.serve_cli", *args, "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                time.sleep(0.2)
        stop_server(proc)
        if b"address already in use" not in log.read_bytes():
            break
    raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def make_service_root(
    root: Path, store_names: tuple[str, ...], seed: int
) -> tuple[Path, Path, ImageDataset]:
    """A service's files under ``root``: a tiny random 32-px ``mocov2`` teacher checkpoint
    (``teacher.pt``) and, under ``stores/``, one empty store per name on synthetic:8 (V 2,
    shards of 4, view-plan ``seed``). Returns (teacher, store root, dataset)."""
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="tiny", small_stem=True, head_hidden=32, head_out=16))
    teacher = root / "teacher.pt"
    save_checkpoint(teacher, enc, PRE)
    stores = root / "stores"
    stores.mkdir()
    dataset = open_dataset("synthetic:8")
    for name in store_names:
        EmbeddingStore.create(
            str(stores / name),
            manifest=build_manifest(dataset, "all", progress=False),
            recipe=RECIPE,
            seed=seed,
            views=2,
            shard_size=4,
        )
    return teacher, stores, dataset


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("service_e2e")
    teacher, stores, dataset = make_service_root(root, ("synth",), seed=0)
    # Batches close only by time (max batch > max queue): bursts fill the queue deterministically.
    args = ["--teacher", str(teacher), "--store-root", str(stores), "--max-batch-size", "32",
            "--max-wait-ms", "400", "--max-queue", str(MAX_QUEUE), "--threads", "1",
            "--log-level", "warning"]  # fmt: skip
    proc, url = start_server(args, root / "server.log")
    try:
        yield {"url": url, "teacher": teacher, "stores": stores, "dataset": dataset, "proc": proc}
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def embed(env: dict[str, Any]) -> Any:
    encoder = load_encoder(env["teacher"]).encoder

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return encoder(x, output="embedding").numpy()

    return run


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


def test_embeddings_equal_the_in_process_teacher(env: dict[str, Any], embed: Any) -> None:
    images = [noise(40, 36, 0), noise(25, 50, 1)]
    params = [RECIPE.sample(3, i, 0, a.shape[0], a.shape[1]) for i, a in enumerate(images)]
    body = {
        "images": [
            {"data": b64(png(a)), "params": p.tolist()} for a, p in zip(images, params, strict=True)
        ]
    }
    r = httpx.post(f"{env['url']}/v1/embeddings", json=body, timeout=30)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["embeddings"], dtype=np.float32)
    want = embed(
        torch.stack([render_view(a, p, RECIPE) for a, p in zip(images, params, strict=True)])
    )
    assert cosine(got, want).min() >= 0.9999
    centre = httpx.post(
        f"{env['url']}/v1/embeddings",
        json={"images": [{"data": b64(png(images[0]))}]},
        headers={"Accept": "application/octet-stream"},
        timeout=30,
    )
    assert centre.headers["x-shape"] == "1,16" and centre.headers["x-dtype"] == "float32"
    got = np.frombuffer(centre.content, dtype="<f4").reshape(1, 16)
    assert cosine(got, embed(render_center(images[0], RECIPE)[None])).min() >= 0.9999
    assert float(centre.headers["x-queue-time"]) >= 0
    assert float(centre.headers["x-inference-time"]) > 0


def test_concurrent_requests_are_batched(env: dict[str, Any], embed: Any) -> None:
    images = [noise(20, 20, 10 + i) for i in range(8)]
    batches_before = metric(env["url"], "disco_batch_size_count")
    barrier = threading.Barrier(len(images))

    def send(image: np.ndarray) -> httpx.Response:
        barrier.wait()
        return httpx.post(
            f"{env['url']}/v1/embeddings", json={"images": [{"data": b64(png(image))}]}, timeout=30
        )

    with ThreadPoolExecutor(len(images)) as pool:
        responses = list(pool.map(send, images))
    assert [r.status_code for r in responses] == [200] * len(images)
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1
    batches = metric(env["url"], "disco_batch_size_count") - batches_before
    assert 1 <= batches < len(images)  # fewer model calls than requests: they were batched
    got = np.stack([np.asarray(r.json()["embeddings"][0]) for r in responses])
    want = embed(torch.stack([render_center(a, RECIPE) for a in images]))
    assert cosine(got, want).min() >= 0.9999


def test_write_through_then_verify(env: dict[str, Any]) -> None:
    dataset = env["dataset"]
    slots = [(i, v) for i in range(len(dataset)) for v in range(2)]  # 16 slots = whole store
    rows = EmbeddingStore.open(str(env["stores"] / "synth")).manifest.indices  # row -> sample

    def send(chunk: list[tuple[int, int]]) -> httpx.Response:
        images = [
            {"data": b64(png(dataset.load(int(rows[i])))), "index": i, "view": v} for i, v in chunk
        ]
        return httpx.post(
            f"{env['url']}/v1/embeddings", json={"store": "synth", "images": images}, timeout=60
        )

    # Four concurrent requests, each touching both shards: no write may be lost.
    chunks = [slots[k::4] for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, chunks))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    store = EmbeddingStore.open(str(env["stores"] / "synth"))
    assert store.written_mask().all()
    assert store.teacher is not None and store.teacher["sha256"] == responses[0].json()["model"]
    result = verify_store(
        str(env["stores"] / "synth"), str(env["teacher"]), samples=8, device="cpu"
    )
    assert result.passed, result.summary()
    assert result.cos_min >= 0.999
    info = httpx.get(f"{env['url']}/v1/stores/synth", timeout=10).json()
    assert info["written"] == 16 and info["missing_shards"] == []


def test_overload_gives_429_never_5xx(env: dict[str, Any], embed: Any) -> None:
    n = 3 * MAX_QUEUE
    images = [noise(16, 16, 100 + i) for i in range(n)]
    bodies = [json.dumps({"images": [{"data": b64(png(a))}]}).encode() for a in images]
    barrier = threading.Barrier(n)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)

    with httpx.Client(limits=limits, timeout=60) as client:

        def send(body: bytes) -> httpx.Response:
            barrier.wait()
            return client.post(
                f"{env['url']}/v1/embeddings",
                content=body,
                headers={"Content-Type": "application/json"},
            )

        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(send, bodies))
    codes = [r.status_code for r in responses]
    assert all(c in (200, 429) for c in codes), codes
    assert codes.count(429) > 0 and codes.count(200) > 0
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and "queue full" in r.json()["detail"]
    ok = [i for i, c in enumerate(codes) if c == 200]
    got = np.stack([np.asarray(responses[i].json()["embeddings"][0]) for i in ok])
    want = embed(torch.stack([render_center(images[i], RECIPE) for i in ok]))
    assert cosine(got, want).min() >= 0.9999
    assert httpx.get(f"{env['url']}/healthz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def holding(env: dict[str, Any]) -> Iterator[str]:
    """A second server whose batches wait 10 s to fill: queued rows stay queued while the test
    looks, so nothing below depends on how fast this machine is."""
    args = ["--teacher", str(env["teacher"]), "--max-batch-size", "64", "--max-wait-ms", "10000",
            "--threads", "1", "--log-level", "warning"]  # fmt: skip
    proc, url = start_server(args, env["stores"].parent / "holding.log")
    try:
        yield url
    finally:
        stop_server(proc)


def wait_metric(url: str, name: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(url, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_disconnected_client_work_is_dropped(holding: str) -> None:
    url = holding
    dropped_before = metric(url, "disco_dropped_rows_total")
    body = json.dumps({"images": [{"data": b64(png(noise(16, 16, 7)))}] * 3}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        # Close only once all three rows are in the queue (the batch waits 10 s to fill).
        wait_metric(url, "disco_queue_depth", 3.0)
    wait_metric(url, "disco_dropped_rows_total", dropped_before + 3)
    wait_metric(url, "disco_queue_depth", 0.0)
    assert metric(url, "disco_images_embedded_total") == 0  # the model never ran them
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
