"""The HTTP app in-process (TestClient): outputs match the teacher, formats, stores, write-through,
metrics, auth, and a bad-input suite where every malformed request gets a documented 4xx."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import SecretStr

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.manifest import build_manifest
from store.views import get_recipe, render_center, render_view
from teacher_service.checkpoint import load_encoder, save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.service import ServiceSettings, create_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SIZE = 32
PRE = {
    "size": SIZE,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear",
    "antialias": True,
    "recipe": "mocov2",
}


def make_teacher(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    enc = build_encoder(EncoderConfig(arch="tiny", small_stem=True, head_hidden=32, head_out=16))
    save_checkpoint(path, enc, PRE)
    return path


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("service_app")
    teacher = make_teacher(root / "teacher.pt")
    stores = root / "stores"
    stores.mkdir()
    dataset = open_dataset("synthetic:12")
    EmbeddingStore.create(
        str(stores / "synth"),
        manifest=build_manifest(dataset, "all", progress=False),
        recipe=get_recipe("mocov2", SIZE),
        seed=0,
        views=2,
        shard_size=4,
    )
    other = EmbeddingStore.create(
        str(stores / "other"),
        manifest=build_manifest(open_dataset("synthetic:4"), "all", progress=False),
        recipe=get_recipe("mocov2", SIZE),
        seed=0,
        views=1,
    )
    other.attach_teacher({"arch": "tiny", "sha256": "0" * 64}, dim=16)
    drifted = EmbeddingStore.create(
        str(stores / "drifted"),
        manifest=build_manifest(open_dataset("synthetic:4"), "all", progress=False),
        recipe=get_recipe("mocov2", SIZE),
        seed=0,
        views=1,
    )
    drifted.group.attrs.update({"render": {**drifted.attrs["render"], "fingerprint": "0" * 64}})
    return {"teacher": teacher, "stores": stores, "dataset": dataset}


@pytest.fixture(scope="module")
def client(env: dict[str, Any]) -> Iterator[TestClient]:
    settings = ServiceSettings(
        teacher=env["teacher"],
        store_root=env["stores"],
        token=SecretStr(TOKEN),
        max_batch_size=8,
        max_wait_ms=2.0,
        max_queue=16,
        max_images=4,
        max_views=3,
        max_body_bytes=256 * 1024,
        max_pixels=4096 * 4096,
        max_range_rows=8,
    )
    with TestClient(create_app(settings), headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def teacher(env: dict[str, Any]) -> Callable[[torch.Tensor], np.ndarray]:
    loaded = load_encoder(env["teacher"])

    def embed(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return loaded.encoder(x, output="embedding").numpy()

    return embed


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1])
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


RECIPE = get_recipe("mocov2", SIZE)


# --------------------------------------------------------------------------------------------
# Happy paths


def test_health_ready_and_model(client: TestClient) -> None:
    assert client.get("/healthz", headers={"Authorization": ""}).json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    assert info["embed_dim"] == 16
    assert info["arch"] == "tiny"
    assert len(info["sha256"]) == 64
    assert info["recipe"]["name"] == "mocov2" and info["recipe"]["size"] == SIZE


def test_centre_views_match_the_teacher(client: TestClient, teacher: Any) -> None:
    images = [noise(40, 48, 1), noise(33, 20, 2)]
    r = client.post("/v1/embeddings", json={"images": [{"data": b64(png(a))} for a in images]})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.asarray(body["embeddings"], dtype=np.float32)
    assert body["shape"] == [2, 16] and got.shape == (2, 16)
    want = teacher(torch.stack([render_center(a, RECIPE) for a in images]))
    assert cosine(got, want).min() >= 0.9999
    for header in ("x-queue-time", "x-inference-time", "x-batch-size"):
        assert float(r.headers[header]) >= 0


def test_explicit_params_match_the_teacher(client: TestClient, teacher: Any) -> None:
    image = noise(40, 48, 3)
    params = np.stack([RECIPE.sample(7, 0, v, 40, 48) for v in range(3)])
    r = client.post(
        "/v1/embeddings", json={"images": [{"data": b64(png(image)), "params": params.tolist()}]}
    )
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["embeddings"], dtype=np.float32)
    assert got.shape == (1, 3, 16)
    want = teacher(torch.stack([render_view(image, p, RECIPE) for p in params]))
    assert cosine(got, want).min() >= 0.9999
    one = client.post(
        "/v1/embeddings", json={"images": [{"data": b64(png(image)), "params": params[1].tolist()}]}
    )
    assert one.json()["shape"] == [1, 16]
    assert cosine(np.asarray(one.json()["embeddings"]), want[1:2]).min() >= 0.9999


def test_planned_views_binary_fp16_multipart(client: TestClient, teacher: Any) -> None:
    images = [noise(30, 30, 4), noise(24, 36, 5)]
    files = [("images", (f"{i}.png", png(a), "image/png")) for i, a in enumerate(images)]
    r = client.post(
        "/v1/embeddings?dtype=float16",
        files=files,
        data={"views": "2", "seed": "11"},
        headers={**AUTH, "Accept": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-dtype"] == "float16" and r.headers["x-shape"] == "2,2,16"
    got = np.frombuffer(r.content, dtype="<f2").reshape(2, 2, 16).astype(np.float32)
    views = [
        render_view(a, RECIPE.sample(11, i, v, a.shape[0], a.shape[1]), RECIPE)
        for i, a in enumerate(images)
        for v in range(2)
    ]
    want = teacher(torch.stack(views))
    assert cosine(got, want).min() >= 0.999  # fp16 transport


def test_multipart_options_part_and_binary_fp32(client: TestClient, teacher: Any) -> None:
    image = noise(28, 28, 6)
    params = RECIPE.sample(0, 0, 0, 28, 28)
    r = client.post(
        "/v1/embeddings",
        files=[("file", ("x.png", png(image), "application/octet-stream"))],
        data={"options": json.dumps({"images": [{"params": params.tolist()}]})},
        headers={**AUTH, "Accept": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    got = np.frombuffer(r.content, dtype="<f4").reshape(1, 16)
    want = teacher(render_view(image, params, RECIPE)[None])
    assert cosine(got, want).min() >= 0.9999


def test_unusual_but_valid_images_are_embedded(client: TestClient) -> None:
    cmyk = io.BytesIO()
    Image.fromarray(noise(20, 20, 7)).convert("CMYK").save(cmyk, format="JPEG")
    gif = io.BytesIO()
    frames = [Image.fromarray(noise(16, 16, s)).convert("P") for s in range(3)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    sixteen = io.BytesIO()
    Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 150).save(
        sixteen, format="PNG"
    )
    la = png(np.random.default_rng(0).integers(0, 256, (9, 9, 2), dtype=np.uint8), mode="LA")
    samples = {
        "1x1": png(noise(1, 1, 8)),
        "cmyk-jpeg": cmyk.getvalue(),
        "animated-gif": gif.getvalue(),
        "16-bit-png": sixteen.getvalue(),
    }
    samples["la-png"] = la
    for name, data in samples.items():
        r = client.post("/v1/embeddings", json={"images": [{"data": b64(data)}]})
        assert r.status_code == 200, (name, r.text)
        vec = np.asarray(r.json()["embeddings"][0])
        assert np.isfinite(vec).all() and abs(np.linalg.norm(vec) - 1) < 1e-4, name


def test_stores_list_info_and_ranges(client: TestClient) -> None:
    assert client.get("/v1/stores").json() == {"stores": ["drifted", "other", "synth"]}
    info = client.get("/v1/stores/synth").json()
    assert (info["n"], info["views"], info["num_shards"]) == (12, 2, 3)
    r = client.get("/v1/stores/synth/embeddings", params={"array": "params", "start": 2, "stop": 6})
    assert r.status_code == 200, r.text
    assert r.headers["x-shape"] == f"4,2,{RECIPE.num_params}"
    params = np.frombuffer(r.content, dtype="<f4").reshape(4, 2, RECIPE.num_params)
    store = EmbeddingStore.open(str(Path(client.app.state.service.settings.store_root) / "synth"))  # type: ignore[attr-defined]
    np.testing.assert_array_equal(params, store.params[2:6])


def test_write_through_lands_in_the_store(
    client: TestClient, env: dict[str, Any], teacher: Any
) -> None:
    dataset = env["dataset"]
    store = EmbeddingStore.open(str(env["stores"] / "synth"))
    slots = [(0, 1), (1, 0), (2, 1), (3, 0), (5, 1)]  # rows 0-3 share shard 0
    rows = store.manifest.indices

    def write(slot: tuple[int, int]) -> httpx.Response:
        i, v = slot  # `index` is the store row; its sample is manifest/indices[row]
        image = {"data": b64(png(dataset.load(int(rows[i])))), "index": i, "view": v}
        return client.post("/v1/embeddings", json={"store": "synth", "images": [image]})

    with ThreadPoolExecutor(len(slots)) as pool:
        responses = list(pool.map(write, slots))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert [r.json()["written"] for r in responses] == [[list(s)] for s in slots]
    r = client.get(
        "/v1/stores/synth/embeddings",
        params={"start": 0, "stop": 8, "dtype": "float32"},
        headers={**AUTH, "Accept": "application/octet-stream"},
    )
    cached = np.frombuffer(r.content, dtype="<f4").reshape(8, 2, 16)
    written = client.get("/v1/stores/synth/embeddings", params={"array": "written", "stop": 8})
    mask = np.frombuffer(written.content, dtype=np.uint8).reshape(8, 2).astype(bool)
    expected = np.zeros((8, 2), bool)
    for i, v in slots:
        expected[i, v] = True
    np.testing.assert_array_equal(mask, expected)
    views = [
        render_view(dataset.load(int(rows[i])), store.params[i, v], store.recipe) for i, v in slots
    ]
    want = teacher(torch.stack(views))
    got = np.stack([cached[i, v] for i, v in slots])
    assert cosine(got, want).min() >= 0.999
    for resp, w in zip(responses, want, strict=True):
        assert cosine(np.asarray(resp.json()["embeddings"]), w[None]).min() >= 0.9999
    info = client.get("/v1/stores/synth").json()
    assert info["written"] == len(slots) and info["attrs"]["teacher"]["arch"] == "tiny"


def test_metrics_count_routes_and_batches(client: TestClient) -> None:
    client.get("/v1/model")
    text = client.get("/metrics").text
    assert 'disco_requests_total{method="GET",route="/v1/model",status="200"}' in text
    assert "disco_batch_size_count" in text
    assert "disco_queue_depth 0.0" in text
    assert "disco_inference_seconds_bucket" in text and "disco_queue_seconds_bucket" in text
    embedded = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("disco_images_embedded_total")
    ]
    assert embedded and embedded[0] >= 1


def test_a_second_app_has_its_own_metrics(env: dict[str, Any]) -> None:
    settings = ServiceSettings(teacher=env["teacher"], max_wait_ms=0.0)
    app_a, app_b = create_app(settings), create_app(settings)
    with TestClient(app_a) as a, TestClient(app_b) as b:
        a.get("/healthz")
        a.get("/healthz")
        b.get("/healthz")
        count = 'disco_requests_total{method="GET",route="/healthz",status="200"}'
        assert f"{count} 2.0" in a.get("/metrics").text
        assert f"{count} 1.0" in b.get("/metrics").text
        schema = a.get("/openapi.json").json()  # no token: the API docs are served
        assert "/v1/embeddings" in schema["paths"] and "/v1/stores/{name}" in schema["paths"]


# --------------------------------------------------------------------------------------------
# Bad input: each case -> documented 4xx with a JSON detail, and the service stays healthy.


def png_bomb(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels (10^10) with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


GOOD = b64(png(noise(20, 20, 9)))
P = RECIPE.num_params
OK_PARAMS = RECIPE.sample(0, 0, 0, 20, 20).tolist()


def post_json(body: Any, **kw: Any) -> Callable[[TestClient], httpx.Response]:
    return lambda c: c.post("/v1/embeddings", json=body, **kw)


def post_raw(content: bytes, ctype: str, **kw: Any) -> Callable[[TestClient], httpx.Response]:
    return lambda c: c.post(
        "/v1/embeddings", content=content, headers={**AUTH, "Content-Type": ctype}, **kw
    )


def one(data: str = GOOD, **fields: Any) -> dict[str, Any]:
    return {"images": [{"data": data, **fields}]}


def post_file(data: bytes, ctype: str = "image/png") -> Callable[[TestClient], httpx.Response]:
    return lambda c: c.post("/v1/embeddings", files=[("images", ("f", data, ctype))])


def with_params(**changes: float) -> list[float]:
    out = list(OK_PARAMS)
    for name, value in changes.items():
        out[RECIPE.param_names.index(name)] = value
    return out


def chunked_body() -> Iterator[bytes]:
    yield b'{"images": [{"data": "'
    for _ in range(40):
        yield b"A" * 8192
    yield b'"}]}'


BAD_CASES: list[tuple[str, Callable[[TestClient], httpx.Response], int]] = [
    ("truncated-jpeg", post_file(jpeg(noise(64, 64))[:300], "image/jpeg"), 422),
    ("zero-bytes", post_file(b""), 422),
    ("text-file-as-image", post_file(b"hello, I am not an image\n"), 422),
    ("png-bomb", post_file(png_bomb()), 422),
    ("png-over-max-pixels", post_file(png_bomb(5000)), 422),
    ("garbage-gif", post_file(b"GIF89a" + b"\x00\xff" * 50, "image/gif"), 422),
    ("text-part-content-type", post_file(png(noise(8, 8)), "text/plain"), 415),
    ("wrong-base64", post_json(one("!!!not*base64!!!")), 422),
    ("base64-of-garbage", post_json(one(b64(b"\x00\x01\x02"))), 422),
    ("malformed-json", post_raw(b'{"images": [', "application/json"), 422),
    ("json-not-an-object", post_raw(b"[1, 2, 3]", "application/json"), 422),
    ("deeply-nested-json", post_raw(b"[" * 100_000 + b"]" * 100_000, "application/json"), 422),
    ("images-not-a-list", post_json({"images": "abc"}), 422),
    ("empty-images", post_json({"images": []}), 422),
    ("unknown-field", post_json({**one(), "colour": "blue"}), 422),
    ("params-wrong-length", post_json(one(params=[0.5] * (P + 1))), 422),
    ("params-ragged", post_json(one(params=[OK_PARAMS, OK_PARAMS[:-1]])), 422),
    ("params-3d", post_json(one(params=[[OK_PARAMS]])), 422),
    (
        "params-nan",
        post_raw(
            json.dumps(one(params=with_params(hue=float("nan")))).encode(), "application/json"
        ),
        422,
    ),
    (
        "params-infinite",
        post_raw(
            json.dumps(one(params=with_params(brightness=float("inf")))).encode(),
            "application/json",
        ),
        422,
    ),
    ("params-out-of-range", post_json(one(params=with_params(hue=0.7))), 422),
    ("params-crop-outside-image", post_json(one(params=with_params(crop_top=15.0))), 422),
    ("params-flag-not-binary", post_json(one(params=with_params(flip=0.5))), 422),
    ("params-not-numbers", post_json(one(params=["a"] * P)), 422),
    ("views-zero", post_json({**one(), "views": 0}), 422),
    ("views-and-params", post_json({**one(params=OK_PARAMS), "views": 2}), 422),
    ("too-many-views", post_json({**one(), "views": 4}), 413),
    ("negative-seed", post_json({**one(), "views": 1, "seed": -1}), 422),
    ("too-many-images", post_json({"images": [{"data": GOOD}] * 5}), 413),
    ("oversized-body", post_json(one("A" * 300_000)), 413),
    (
        "oversized-chunked-body",
        lambda c: c.post(
            "/v1/embeddings",
            content=chunked_body(),
            headers={**AUTH, "Content-Type": "application/json"},
        ),
        413,
    ),
    ("unsupported-content-type", post_raw(b"hello", "text/plain"), 415),
    ("no-content-type", lambda c: c.post("/v1/embeddings", content=b"{}"), 415),
    ("multipart-no-files", lambda c: c.post("/v1/embeddings", files={"views": (None, "1")}), 422),
    ("urlencoded-form", lambda c: c.post("/v1/embeddings", data={"views": "1"}), 415),
    (
        "multipart-bad-options",
        lambda c: c.post(
            "/v1/embeddings",
            data={"options": "{nope"},
            files=[("images", ("a", png(noise(8, 8)), "image/png"))],
        ),
        422,
    ),
    (
        "multipart-broken-envelope",
        post_raw(
            b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\nno end',
            "multipart/form-data; boundary=xyz",
        ),
        422,
    ),
    ("unknown-store", post_json({**one(index=0, view=0), "store": "nope"}), 404),
    ("dotdot-store", post_json({**one(index=0, view=0), "store": "../synth"}), 400),
    ("dotdot-only-store", post_json({**one(index=0, view=0), "store": ".."}), 400),
    ("absolute-store", post_json({**one(index=0, view=0), "store": "/etc"}), 400),
    ("separator-store", post_json({**one(index=0, view=0), "store": "a/b"}), 400),
    ("backslash-store", post_json({**one(index=0, view=0), "store": "..\\synth"}), 400),
    ("write-through-missing-view", post_json({**one(index=0), "store": "synth"}), 422),
    (
        "write-through-index-out-of-range",
        post_json({**one(index=99, view=0), "store": "synth"}),
        422,
    ),
    (
        "write-through-wrong-image-size",
        post_json({**one(index=0, view=0), "store": "synth"}),
        422,
    ),
    ("index-without-store", post_json(one(index=0, view=0)), 422),
    ("store-of-another-teacher", post_json({**one(index=0, view=0), "store": "other"}), 409),
    ("store-with-render-drift", post_json({**one(index=0, view=0), "store": "drifted"}), 409),
    ("bad-dtype-query", lambda c: c.post("/v1/embeddings?dtype=int4", json=one()), 422),
    (
        "range-start-after-stop",
        lambda c: c.get("/v1/stores/synth/embeddings?array=params&start=5&stop=3"),
        422,
    ),
    ("range-too-large", lambda c: c.get("/v1/stores/synth/embeddings?array=params&stop=12"), 413),
    ("unknown-store-info", lambda c: c.get("/v1/stores/nope"), 404),
    ("dotfile-store-info", lambda c: c.get("/v1/stores/.hidden"), 400),
    (
        "missing-token",
        lambda c: c.post("/v1/embeddings", json=one(), headers={"Authorization": ""}),
        401,
    ),
    ("wrong-token", lambda c: c.get("/v1/model", headers={"Authorization": "Bearer nope"}), 401),
    (
        "wrong-scheme",
        lambda c: c.get("/v1/stores", headers={"Authorization": f"Basic {TOKEN}"}),
        401,
    ),
]


# What the detail must mention, for cases where the status alone could come from another check.
NEEDLES = {
    "png-bomb": "bomb",
    "png-over-max-pixels": "exceeds max",
    "truncated-jpeg": "cannot decode",
    "params-nan": "finite",
    "params-out-of-range": "hue",
    "params-crop-outside-image": "crop box",
    "write-through-wrong-image-size": "planned for",
    "multipart-no-files": "no image",
    "dotdot-store": "invalid store name",
    "store-of-another-teacher": "teacher",
    "store-with-render-drift": "render.fingerprint",
    "oversized-chunked-body": "exceeds",
}


def test_bad_input_suite_is_large_enough() -> None:
    assert len({name for name, _, _ in BAD_CASES}) == len(BAD_CASES) >= 25


@pytest.mark.parametrize(("name", "send", "code"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input(
    client: TestClient, name: str, send: Callable[[TestClient], httpx.Response], code: int
) -> None:
    r = send(client)
    assert r.status_code == code, (name, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), name
    assert r.json()["detail"], name
    if name in NEEDLES:
        assert NEEDLES[name] in str(r.json()["detail"]), (name, r.text[:300])
    if code == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}


# --------------------------------------------------------------------------------------------
# Fuzz: arbitrary bodies never produce a 5xx and never take the service down.

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["images", "data", "params", "views", "seed", "store", "index", "view"])
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_json_values)
def test_fuzzed_json_bodies_never_give_5xx(client: TestClient, body: Any) -> None:
    r = client.post(
        "/v1/embeddings",
        content=json.dumps(body).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code < 500, r.text[:300]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=2048), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a"])
)
def test_fuzzed_image_bytes_never_give_5xx(client: TestClient, data: bytes, prefix: bytes) -> None:
    r = client.post("/v1/embeddings", files=[("images", ("f", prefix + data, "image/png"))])
    assert r.status_code in (200, 422), r.text[:300]
    assert client.get("/healthz").status_code == 200
