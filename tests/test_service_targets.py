"""Write-through into one teacher of a store of several (#28): the request names it; the store's
other teachers keep their bytes; an ambiguous or foreign teacher is refused with 409."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.manifest import build_manifest
from store.views import get_recipe
from teacher_service.service import ServiceSettings, create_app
from tests.test_service_app import AUTH, SIZE, TOKEN, b64, make_teacher, png


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("service_targets")
    stores = root / "stores"
    stores.mkdir()
    dataset = open_dataset("synthetic:8")
    store = EmbeddingStore.create(
        str(stores / "two"), manifest=build_manifest(dataset, "all", progress=False),
        recipe=get_recipe("mocov2", SIZE), seed=0, views=2, shard_size=4, target="a",
    )  # fmt: skip
    store.attach_teacher({"arch": "tiny", "sha256": "0" * 64}, dim=16)
    store.write_shard(0, np.full((4, 2, 16), 0.25, np.float32))
    settings = ServiceSettings(
        teacher=make_teacher(root / "teacher.pt"), store_root=stores, token=SecretStr(TOKEN),
        max_batch_size=8, max_wait_ms=2.0,
    )  # fmt: skip
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield {"client": client, "store": stores / "two", "dataset": dataset}


def _post(env: dict[str, Any], row: int, view: int, **extra: Any) -> Any:
    index = int(EmbeddingStore.open(str(env["store"])).manifest.indices[row])  # rows are permuted
    image = {"data": b64(png(env["dataset"].load(index))), "index": row, "view": view}
    return env["client"].post("/v1/embeddings", json={"store": "two", "images": [image], **extra})


def test_write_through_names_the_teacher(env: dict[str, Any]) -> None:
    path: Path = env["store"]
    root_bytes = {
        p: p.read_bytes() for p in sorted((path / "embeddings").rglob("*")) if p.is_file()
    }
    r = _post(env, 1, 1)  # the store's only teacher is another one
    assert r.status_code == 409 and "another teacher" in r.text
    r = _post(env, 1, 1, target="b")
    assert r.status_code == 200, r.text
    b = EmbeddingStore.open(str(path), target="b")
    mask = b.written_mask()
    assert mask.sum() == 1 and mask[1, 1]
    vec = b.read_shard(0).embeddings[1, 1]
    np.testing.assert_allclose(vec, np.asarray(r.json()["embeddings"][0]), atol=2e-3)
    a = EmbeddingStore.open(str(path), target="a")
    assert a.written_mask()[:4].all() and not a.written_mask()[4:].any()
    after = {p: p.read_bytes() for p in sorted((path / "embeddings").rglob("*")) if p.is_file()}
    assert after == root_bytes
    r = _post(env, 2, 0)  # now two teachers: the request must name one
    assert r.status_code == 409 and "several teachers (a, b)" in r.text
    r = _post(env, 2, 0, target="../a")
    assert r.status_code == 422
