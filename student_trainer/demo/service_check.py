"""The demo's service stage: the HTTP path answers with exactly what the cache holds.

Starts ``disco serve`` on the store's teacher on a free loopback port (a real uvicorn process),
asks it through :class:`teacher_service.client.TeacherClient` for a handful of the store's
planned (sample, view) embeddings (the view parameters are read back through the service and
sent as explicit params), compares each with the store's cached target, and stops the server.
A control compares each answer with another sample's target, which must not match.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import DiscoError, StoreError
from teacher_service.client import TeacherClient
from teacher_service.verify import sample_slots

__all__ = ["ServiceCheck", "check_service"]


@dataclass
class ServiceCheck:
    """Result of :func:`check_service` (cosines of unit vectors; times in s)."""

    url: str
    samples: int
    threshold: float
    cos_min: float
    control_max: float
    passed: bool
    ready_s: float
    """Seconds from starting ``disco serve`` to ``/readyz`` 200."""
    query_s: float
    """Seconds for the client calls (params, embeddings)."""

    def summary(self) -> str:
        """One line for the console."""
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"service {verdict}: {self.samples} planned views over HTTP, cosine to the cache "
            f"min {self.cos_min:.5f} (>= {self.threshold}); control max {self.control_max:.3f}; "
            f"ready after {self.ready_s:.1f} s, queries {self.query_s:.2f} s"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def check_service(
    store_url: str,
    teacher: str,
    samples: int = 8,
    threshold: float = 0.999,
    seed: int = 0,
    device: str = "cpu",
    log_path: str | None = None,
    timeout_s: float = 300.0,
    teacher_weights: str | None = None,
) -> ServiceCheck:
    """Serve ``teacher`` over the store root holding ``store_url`` (a local store) and check
    ``samples`` of its written (row, view) slots over HTTP against the cached targets.
    ``teacher`` is what ``disco serve --teacher`` takes (a checkpoint, or a timm:/hf:/open_clip:/
    py: spec with ``teacher_weights``).

    The server renders request params with the store's recipe (``DISCO_RECIPE`` /
    ``DISCO_SIZE``). Raises ``StoreError`` when the store has no teacher or written views, and
    ``DiscoError`` when the server does not become ready (with the end of its log).
    """
    path = Path(store_url).resolve()
    store = EmbeddingStore.open(str(path))
    if store.teacher is None:
        raise StoreError(f"store {store_url} has no teacher attached")
    slots = sample_slots(store.written_mask(), store.shard_size, samples, seed)
    if len(slots) < 2:
        raise StoreError(f"store {store_url} has fewer than 2 written views to check")
    log = Path(log_path) if log_path else path.parent / "service.log"
    start = time.perf_counter()
    proc, url = _serve(store, path, teacher, device, teacher_weights, log)
    try:
        with TeacherClient(url, timeout=120) as client:
            while not client.ready():
                if proc.poll() is not None or time.perf_counter() - start > timeout_s:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise DiscoError(f"disco serve did not become ready at {url}:\n{tail}")
                time.sleep(0.2)
            ready_s = time.perf_counter() - start
            t0 = time.perf_counter()
            answers = _ask(client, store, path.name, slots)
            query_s = time.perf_counter() - t0
    finally:
        _stop(proc)
    return _score(store, slots, answers, threshold, url, ready_s, query_s)


def _serve(
    store: EmbeddingStore,
    path: Path,
    teacher: str,
    device: str,
    teacher_weights: str | None,
    log: Path,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``disco serve`` on a free loopback port over the store's folder, rendering with the
    store's recipe; its output goes to ``log``. Returns the process and its URL."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DISCO_RECIPE": store.recipe.name,
        "DISCO_SIZE": str(store.recipe.size),
        "DISCO_TEACHER_WEIGHTS": teacher_weights or "",  # empty = none
    }
    port = _free_port()
    cmd = [sys.executable, "-m", "student_trainer.cli", "serve", "--teacher", teacher]
    cmd += ["--store-root", str(path.parent), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--device", device, "--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def _ask(client: TeacherClient, store: EmbeddingStore, name: str, slots: np.ndarray) -> np.ndarray:
    """The served embeddings ``(k, D)`` of the planned views ``slots`` (the service must serve
    the store's teacher)."""
    model = client.model()
    if model["sha256"] != (store.teacher or {}).get("sha256"):
        raise StoreError("the served checkpoint is not the store's teacher")
    manifest = store.manifest
    dataset = open_dataset(manifest.dataset)
    rows, views = [int(r) for r in slots[:, 0]], [int(v) for v in slots[:, 1]]
    images = [dataset.load(int(manifest.indices[r])) for r in rows]
    return np.asarray(client.embed_planned(name, images, rows, views))


def _score(
    store: EmbeddingStore,
    slots: np.ndarray,
    answers: np.ndarray,
    threshold: float,
    url: str,
    ready_s: float,
    query_s: float,
) -> ServiceCheck:
    """Cosine of each answer to its cached target, and a control: each answer against another
    row's target must stay below ``threshold`` (with no other row the check fails)."""
    rows, views = [int(r) for r in slots[:, 0]], [int(v) for v in slots[:, 1]]
    targets = np.zeros_like(answers)
    for k, (row, view) in enumerate(zip(rows, views, strict=True)):
        block = store.read_shard(row // store.shard_size)
        targets[k] = block.embeddings[row - block.start, view]
    cos = np.sum(answers * targets, axis=1) / (
        np.linalg.norm(answers, axis=1) * np.linalg.norm(targets, axis=1)
    )
    control = [
        float(answers[k] @ targets[j])
        for k in range(len(rows))
        for j in [next((j for j in range(len(rows)) if rows[j] != rows[k]), -1)]
        if j >= 0
    ]
    control_max = max(control, default=float("nan"))
    return ServiceCheck(
        url=url,
        samples=len(rows),
        threshold=threshold,
        cos_min=float(cos.min()),
        control_max=control_max,
        passed=bool(cos.min() >= threshold and bool(control) and control_max < threshold),
        ready_s=round(ready_s, 2),
        query_s=round(query_s, 3),
    )
