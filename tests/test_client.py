"""`teacher_service.client.TeacherClient` against the real app under uvicorn on 127.0.0.1:
binary fp16 embeddings equal the in-process teacher, planned views of a store equal its targets,
a bearer token, 429 retried after Retry-After, connection errors retried with backoff, and 4xx
raised as ServiceError naming status and detail."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.manifest import build_manifest
from store.views import get_recipe, render_center, render_view
from teacher_service.checkpoint import load_encoder, save_checkpoint
from teacher_service.client import (
    ServiceBusyError,
    ServiceError,
    ServiceUnavailableError,
    TeacherClient,
)
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.service.app import create_app
from teacher_service.service.settings import ServiceSettings

SIZE = 16
RECIPE = get_recipe("digits", SIZE)
PRE = {"size": SIZE, "mean": list(RECIPE.mean), "std": list(RECIPE.std), "recipe": "digits"}
TOKEN = "s3cret"


class Server:
    """The service app under a real uvicorn server in a thread, on a free loopback port."""

    def __init__(self, settings: ServiceSettings) -> None:
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny teacher checkpoint and a store root holding one planned, empty store."""
    root = tmp_path_factory.mktemp("client")
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="tiny", small_stem=True, head_hidden=32, head_out=16))
    save_checkpoint(root / "teacher.pt", enc, PRE)
    (root / "stores").mkdir()
    EmbeddingStore.create(
        str(root / "stores" / "digits"),
        manifest=build_manifest(open_dataset("synthetic:6"), "all", progress=False),
        recipe=RECIPE,
        seed=0,
        views=2,
        shard_size=4,
    )
    return root


def settings(root: Path, **kw: Any) -> ServiceSettings:
    base: dict[str, Any] = dict(
        teacher=root / "teacher.pt",
        store_root=root / "stores",
        device="cpu",
        threads=1,
        prep_threads=1,
        max_wait_ms=2.0,
    )
    return ServiceSettings(**(base | kw))


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    srv = Server(settings(root, token=TOKEN, max_images=4))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def encoder(root: Path) -> Any:
    return load_encoder(root / "teacher.pt").encoder


def teacher(encoder: Any, views: list[torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        return encoder(torch.stack(views), output="embedding").numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embed_images_views_and_params(server: Server, encoder: Any) -> None:
    images = [open_dataset("synthetic:12").load(i) for i in range(6)]
    with TeacherClient(server.url, token=TOKEN) as client:
        assert client.model()["recipe"]["name"] == "digits"
        # 6 images > max_images 4: the client splits the call in two requests.
        centre = client.embed(images)
        assert centre.shape == (6, 16) and centre.dtype == np.float32
        want = teacher(encoder, [render_center(im, RECIPE) for im in images])
        assert cosine(centre, want).min() >= 0.999
        assert np.abs(np.linalg.norm(centre, axis=1) - 1).max() < 2e-3  # fp16 on the wire
        exact = client.embed(images[:2], dtype="float32")
        assert cosine(exact, want[:2]).min() >= 0.99999
        params = [
            np.stack([RECIPE.sample(9, i, v, *im.shape[:2]) for v in range(3)])
            for i, im in enumerate(images[:3])
        ]
        got = client.embed(images[:3], params=params)
        assert got.shape == (3, 3, 16)
        flat = [
            render_view(im, p, RECIPE) for im, ps in zip(images, params, strict=False) for p in ps
        ]
        assert cosine(got, teacher(encoder, flat)).min() >= 0.999
        planned = client.embed(images[:2], views=3, seed=9)
        assert cosine(planned, got[:2]).min() >= 0.999  # server plans (seed, position, view)
        with pytest.raises(ValueError, match="at most 4 images"):
            client.embed(images, views=2)


def test_write_through_then_planned_views_equal_the_store(server: Server) -> None:
    dataset = open_dataset("synthetic:6")
    rows = build_manifest(dataset, "all", progress=False).indices  # store row -> sample
    slots = [(i, v) for i in range(6) for v in range(2)]
    images = [dataset.load(int(rows[i])) for i, _ in slots]
    with TeacherClient(server.url, token=TOKEN) as client:
        assert client.stores() == ["digits"]
        written = client.write_through(
            "digits", images, [i for i, _ in slots], [v for _, v in slots]
        )
        info = client.store_info("digits")
        assert info["written"] == 12 and info["missing_shards"] == []
        targets = client.store_range("digits", 0, 6)
        assert targets.shape == (6, 2, 16)
        assert cosine(written, targets.reshape(12, 16)).min() >= 0.999
        pick = [(5, 1), (0, 0), (3, 1)]
        got = client.embed_planned(
            "digits",
            [dataset.load(int(rows[i])) for i, _ in pick],
            [i for i, _ in pick],
            [v for _, v in pick],
        )
        want = np.stack([targets[i, v] for i, v in pick])
        assert cosine(got, want).min() >= 0.999
        # The wrong slot's view is a different embedding: the comparison can fail.
        assert cosine(got[:1], targets[5, 0][None]).min() < 0.999
        assert client.store_range("digits", 0, 6, array="written").all()


def test_errors_name_status_and_detail(server: Server) -> None:
    image = open_dataset("synthetic:2").load(0)
    with TeacherClient(server.url, retries=0) as anonymous:
        with pytest.raises(ServiceError, match=r"401.*missing bearer token") as info:
            anonymous.model()
        assert info.value.status == 401
    with (
        TeacherClient(server.url, token="wrong", retries=0) as wrong,
        pytest.raises(ServiceError, match=r"401.*wrong bearer token"),
    ):
        wrong.embed([image])
    with TeacherClient(server.url, token=TOKEN) as client:
        with pytest.raises(ServiceError, match=r"404.*no store named 'nope'") as info:
            client.store_info("nope")
        assert info.value.status == 404
        with pytest.raises(ServiceError, match="422") as info:
            client.embed([b"not an image"])
        assert "cannot decode" in str(info.value.detail)
        assert client.ready()


def test_429_is_retried_after_retry_after(root: Path) -> None:
    """max_queue 2 and a 3 s batch window: a held request of 2 rows fills the queue, so the next
    one gets 429 until the held batch runs. Waiting for the queue gauge makes it deterministic."""
    srv = Server(settings(root, max_queue=2, max_batch_size=8, max_wait_ms=3000.0, retry_after_s=1))
    try:
        image = open_dataset("synthetic:2").load(1)
        holder: dict[str, Any] = {}

        def hold() -> None:
            with TeacherClient(srv.url) as c:
                holder["out"] = c.embed([image, image])

        def queued() -> float:
            for line in httpx.get(f"{srv.url}/metrics", timeout=10).text.splitlines():
                if line.startswith("disco_queue_depth "):
                    return float(line.split()[1])
            raise AssertionError("no queue gauge")

        def occupy() -> threading.Thread:
            thread = threading.Thread(target=hold)
            thread.start()
            deadline = time.monotonic() + 20
            while queued() < 2:
                assert time.monotonic() < deadline, "the held request never queued"
                time.sleep(0.01)
            return thread

        waits: list[float] = []
        with TeacherClient(srv.url, retries=0) as impatient:
            impatient.model()
            thread = occupy()
            with pytest.raises(ServiceBusyError, match=r"429.*queue full") as info:
                impatient.embed([image])
            assert info.value.status == 429
            thread.join()

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            time.sleep(seconds)

        with TeacherClient(srv.url, retries=10, sleep=sleep) as patient:
            patient.model()
            thread = occupy()
            out = patient.embed([image])
            thread.join()
        assert waits and set(waits) == {1.0}  # the server's Retry-After, not the backoff
        assert cosine(out, holder["out"][:1]).min() >= 0.999
    finally:
        srv.stop()


class FlakyTransport(httpx.HTTPTransport):
    """A real transport whose first ``failures`` requests fail to connect."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures > 0:
            self.failures -= 1
            raise httpx.ConnectError("connection refused (test)", request=request)
        return super().handle_request(request)


def test_connection_errors_back_off_and_are_bounded(server: Server) -> None:
    waits: list[float] = []
    with TeacherClient(
        server.url, token=TOKEN, retries=3, backoff_s=0.01, transport=FlakyTransport(2),
        sleep=waits.append,
    ) as client:  # fmt: skip
        assert client.model()["embed_dim"] == 16
    assert waits == [0.01, 0.02]  # exponential
    waits.clear()
    with TeacherClient(
        server.url, retries=2, backoff_s=0.01, transport=FlakyTransport(99), sleep=waits.append
    ) as client:
        with pytest.raises(ServiceUnavailableError, match="after 3 tries") as info:
            client.model()
        assert isinstance(info.value, ConnectionError) and info.value.status == 0
    assert waits == [0.01, 0.02]
