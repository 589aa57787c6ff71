"""The service's renderer setting: with ``renderer = batched`` (each request's views rendered at
once by ``store.views.render_views`` on the model's device) real HTTP requests on CPU get the
same bytes as with the per-view ``reference`` renderer, for every way a request names its views,
and write-through records the renderer in the store as precompute does."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from store.embedding_store import EmbeddingStore
from store.views import RENDER_BOUND, get_recipe
from teacher_service.service import ServiceSettings, create_app
from teacher_service.service.jpeg import decode_jpeg_device
from tests.test_service_e2e import SIZE, make_service_root

OCTET = {"Accept": "application/octet-stream"}


def encoded(arr: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=90)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("service_renderer")
    teacher, stores, dataset = make_service_root(root, ("for-reference", "for-batched"), seed=3)
    return {"teacher": teacher, "stores": stores, "dataset": dataset}


@pytest.fixture(scope="module")
def clients(env: dict[str, Any]) -> Iterator[dict[str, TestClient]]:
    def settings(renderer: str) -> ServiceSettings:
        return ServiceSettings(
            teacher=env["teacher"],
            store_root=env["stores"],
            renderer=renderer,  # type: ignore[arg-type]
            max_batch_size=64,
            max_wait_ms=1.0,
            max_views=4,
        )

    with (
        TestClient(create_app(settings("reference"))) as ref,
        TestClient(create_app(settings("batched"))) as bat,
    ):
        yield {"reference": ref, "batched": bat}


def _bodies(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One body per way of naming views; images of different sizes, PNG and JPEG, grey."""
    rng = np.random.default_rng(5)
    shapes = [(40, 56), (64, 48), (33, 33)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    grey = np.repeat(rng.integers(0, 256, (45, 38, 1), dtype=np.uint8), 3, axis=2)
    recipe = get_recipe("mocov2", SIZE)
    params = [
        np.stack([recipe.sample(7, i, v, *im.shape[:2]) for v in range(3)]).tolist()
        for i, im in enumerate(images)
    ]
    return {
        "centre": {"images": [{"data": encoded(im)} for im in [*images, grey]]},
        "centre-jpeg": {"images": [{"data": encoded(im, "JPEG")} for im in images]},
        "planned": {"images": [{"data": encoded(im)} for im in images], "views": 4, "seed": 11},
        "params": {
            "images": [
                {"data": encoded(im), "params": p} for im, p in zip(images, params, strict=True)
            ]
        },
        "one-param": {"images": [{"data": encoded(images[0]), "params": params[0][1]}]},
    }


def test_batched_responses_are_byte_identical_to_reference(
    clients: dict[str, TestClient], env: dict[str, Any]
) -> None:
    for name, body in _bodies(env).items():
        got = {}
        for renderer, client in clients.items():
            r = client.post("/v1/embeddings", json=body, headers=OCTET)
            assert r.status_code == 200, (name, renderer, r.text)
            got[renderer] = (r.headers["x-shape"], r.content)
        assert got["batched"][0] == got["reference"][0], name
        assert got["batched"][1] == got["reference"][1], f"{name}: responses differ"
        vectors = np.frombuffer(got["batched"][1], dtype="<f4")
        assert np.isfinite(vectors).all() and np.abs(vectors).max() > 0, name
    # The views really are augmented: planned views of one image embed differently.
    r = clients["batched"].post("/v1/embeddings", json=_bodies(env)["planned"]).json()
    first = np.asarray(r["embeddings"])[0]
    assert np.abs(first[0] - first[1]).max() > 1e-3


def test_model_route_reports_the_resolved_renderer(clients: dict[str, TestClient]) -> None:
    for renderer, client in clients.items():
        info = client.get("/v1/model").json()
        assert info["renderer"] == renderer and info["decode"] == "cpu"


def test_auto_is_reference_on_cpu(env: dict[str, Any]) -> None:
    settings = ServiceSettings(teacher=env["teacher"])
    assert settings.renderer == "auto"
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/model").json()["renderer"] == "reference"


def test_write_through_records_the_renderer_and_writes_the_same_targets(
    clients: dict[str, TestClient], env: dict[str, Any]
) -> None:
    dataset = env["dataset"]
    slots = [(0, 1), (2, 0), (5, 1)]
    for renderer, client in clients.items():
        store = f"for-{renderer}"
        rows = EmbeddingStore.open(str(env["stores"] / store)).manifest.indices  # row -> sample
        images = [
            {"data": encoded(dataset.load(int(rows[i]))), "index": i, "view": v} for i, v in slots
        ]
        r = client.post("/v1/embeddings", json={"store": store, "images": images})
        assert r.status_code == 200, r.text
        # A second write from the same service adds no duplicate record.
        r = client.post("/v1/embeddings", json={"store": store, "images": images[:1]})
        assert r.status_code == 200, r.text
    written = {}
    for renderer in clients:
        opened = EmbeddingStore.open(str(env["stores"] / f"for-{renderer}"))
        record = opened.attrs["renderers"]
        assert record["producers"] == [{"renderer": renderer, "device": "cpu"}]
        assert record["bound"] == RENDER_BOUND
        cached = np.concatenate([opened.read_shard(s).embeddings for s in range(2)])
        written[renderer] = np.stack([cached[i, v] for i, v in slots])
        assert np.abs(written[renderer]).max() > 0
    np.testing.assert_array_equal(written["batched"], written["reference"])


def test_a_view_outside_its_image_is_422_with_either_renderer(
    clients: dict[str, TestClient],
) -> None:
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    params = get_recipe("mocov2", SIZE).sample(0, 0, 0, 20, 20)
    params[2] = 40.0  # crop height past the image
    body = {"images": [{"data": encoded(image), "params": params.tolist()}]}
    for renderer, client in clients.items():
        r = client.post("/v1/embeddings", json=body)
        assert r.status_code == 422, (renderer, r.text)
        assert "images[0]" in r.json()["detail"], r.text


def test_renderer_and_decode_come_from_the_environment(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCO_TEACHER", str(env["teacher"]))
    monkeypatch.setenv("DISCO_RENDERER", "batched")
    monkeypatch.setenv("DISCO_DECODE", "device")
    settings = ServiceSettings()  # type: ignore[call-arg]
    assert settings.renderer == "batched" and settings.decode == "device"
    monkeypatch.setenv("DISCO_RENDERER", "fast")
    with pytest.raises(ValueError, match="renderer"):
        ServiceSettings()  # type: ignore[call-arg]


def test_device_decode_leaves_cpu_and_non_jpeg_inputs_to_pillow() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8)
    jpeg = base64.b64decode(encoded(arr, "JPEG"))
    png = base64.b64decode(encoded(arr))
    assert decode_jpeg_device(jpeg, torch.device("cpu")) is None
    assert decode_jpeg_device(png, torch.device("cuda")) is None  # not a JPEG: no CUDA touched
    assert decode_jpeg_device(b"\xff\xd8\xffjunk", torch.device("cuda")) is None


def test_device_decode_refuses_too_many_pixels_from_the_header() -> None:
    from store.errors import DecodeError

    arr = np.zeros((40, 50, 3), dtype=np.uint8)
    jpeg = base64.b64decode(encoded(arr, "JPEG"))
    with pytest.raises(DecodeError, match="exceeds max 100"):
        decode_jpeg_device(jpeg, torch.device("cuda"), key="x", max_pixels=100)
