"""Object storage end to end against a real S3 server on loopback (moto, ``conftest.s3``).

An ImageFolder in a bucket -> a store in the bucket -> precompute -> verify -> check -> more
images -> ``store append`` -> precompute fills only the new rows; what object storage cannot
promise (locks) is refused; the dataset's keys and hashes match the same images on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from test_precompute import make_teacher
from typer.testing import CliRunner

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.manifest import build_manifest
from store.relocate import open_moved_dataset
from store.remote import url_to_fs
from store.views import get_recipe
from student_trainer.cli import app
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import train
from teacher_service.precompute import PrecomputeConfig, run_precompute
from teacher_service.verify import verify_store
from tests.test_service_e2e import start_server, stop_server

runner = CliRunner()
V, SHARD = 2, 4


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def write_images(root: Path, classes: tuple[str, ...], per_class: int, first: int = 0) -> Path:
    """``per_class`` 16-20 px PNGs per class folder under ``root`` (content set by the name)."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(first, first + per_class):
            rng = np.random.default_rng([c, i])
            img = rng.integers(0, 256, (16 + i % 5, 20, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


def upload(local: Path, url: str) -> None:
    fs, path = url_to_fs(url)
    fs.put(f"{local}/", path, recursive=True)


def disco(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_remote_imagefolder_matches_local(s3: str, tmp_path: Path) -> None:
    local = write_images(tmp_path / "imgs", ("cat", "cat-2", "dog"), 3)
    (local / "dog" / ".hidden.png").write_bytes(b"x")
    (local / "notes.txt").write_text("not an image")
    upload(local, f"{s3}/imgs")
    here = build_manifest(open_dataset(f"imagefolder:{local}"), "all", progress=False)
    there = build_manifest(open_dataset(f"imagefolder:{s3}/imgs"), "all", progress=False)
    assert there.keys.tolist() == here.keys.tolist()  # 'cat' < 'cat-2' as on disk
    assert np.array_equal(there.labels, here.labels)
    assert there.sha256.tolist() == here.sha256.tolist() and there.valid.all()
    # A store made from the folder on disk accepts the bucket copy as its data moved there.
    moved = open_moved_dataset(here, f"imagefolder:{s3}/imgs", full=True)
    assert moved.spec == f"imagefolder:{s3}/imgs"


def test_s3_round_trip_create_precompute_verify_append(
    s3: str, tmp_path: Path, teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # from here on only --storage-options knows it
    local = write_images(tmp_path / "imgs", ("a", "b"), 5)
    opts = json.dumps({"endpoint_url": endpoint})
    url, data = f"{s3}/stores/s.zarr", f"imagefolder:{s3}/imgs"
    fs, path = url_to_fs(f"{s3}/imgs", {"endpoint_url": endpoint})
    fs.put(f"{local}/", path, recursive=True)

    out = disco("store", "create", url, "--dataset", data, "--split", "all", "--views", str(V),
                "--shard-size", str(SHARD), "--size", "16", "--storage-options", opts,
                "--single-writer")  # fmt: skip
    assert "N=10" in out
    # Writing without the single-writer promise is refused, naming the flag; nothing written.
    monkeypatch.delenv("DISCO_SINGLE_WRITER")
    res = runner.invoke(app, ["precompute", "--teacher", str(teacher), "--dataset", data,
                              "--store", url, "--views", str(V), "--shard-size", str(SHARD),
                              "--device", "cpu", "--workers", "0", "--no-progress"])  # fmt: skip
    assert res.exit_code == 1 and "--single-writer" in res.output, res.output
    assert EmbeddingStore.open(url).teacher is None

    pre = ["precompute", "--teacher", str(teacher), "--dataset", data, "--store", url,
           "--views", str(V), "--shard-size", str(SHARD), "--device", "cpu", "--workers", "0",
           "--batch-size", "8", "--no-progress", "--single-writer", "--json"]  # fmt: skip
    report = json.loads(disco(*pre).strip().splitlines()[-1])
    assert report["shards_computed"] == 3
    store = EmbeddingStore.open(url)
    assert store.written_mask().all() and store.n == 10
    assert disco("store", "verify", url, "--teacher", str(teacher), "--samples", "8",
                 "--device", "cpu").startswith("PASS")  # fmt: skip
    assert "OK" in disco("store", "check", url)
    info = json.loads(disco("store", "info", url, "--json"))
    assert info["written_fraction"] == 1.0 and info["bytes_on_disk"] > 0
    before = store.read_shard_raw(0).copy()

    # A student trains one epoch from the store in the bucket, reading images from the bucket.
    seen: list[np.ndarray] = []
    cfg = TrainConfig(method="disco", arch="tiny", out=str(tmp_path / "run"), store=url,
                      batch_size=4, epochs=1, queue_size=8, head_hidden=32, num_workers=0,
                      progress=False, seed=1)  # fmt: skip
    train(cfg, step_hook=lambda step, batch, out: seen.append(batch.target1.numpy().copy()))
    assert len(seen) == 2 and (tmp_path / "run" / "final.pt").is_file()
    assert np.allclose(np.linalg.norm(np.concatenate(seen), axis=1), 1.0, atol=1e-2)

    # The dataset grows in the bucket: append plans the new rows, precompute fills only them.
    more = write_images(tmp_path / "more", ("a", "b"), 2, first=5)
    fs.put(f"{more}/", path, recursive=True)
    grown = json.loads(disco("store", "append", url, "--json"))
    assert (grown["n_before"], grown["n_after"]) == (10, 14)
    report = json.loads(disco(*pre).strip().splitlines()[-1])
    assert report["views_computed"] == 4 * V
    store = EmbeddingStore.open(url)
    assert store.n == 14 and store.written_mask().all()
    assert np.array_equal(store.read_shard_raw(0), before)  # old bytes never change
    keys = store.manifest.keys.tolist()
    assert sorted(keys[10:]) == ["a/005.png", "a/006.png", "b/005.png", "b/006.png"]


def test_two_precompute_ranks_write_disjoint_shards_of_one_s3_store(
    s3: str, tmp_path: Path, teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RANK 0/1 of WORLD_SIZE 2 (as torchrun sets them) in two processes (rank 1 a ``disco
    precompute`` subprocess, rank 0 this one), one store in the bucket: each rank owns whole
    shards (the lock-free protocol object storage allows); the store is byte-identical to one
    local process's."""
    url = f"{s3}/ranks.zarr"
    common = dict(teacher=str(teacher), dataset="synthetic:24", views=V, recipe="mocov2",
                  size=16, shard_size=SHARD, batch_size=8, workers=0, device="cpu",
                  progress=False)  # fmt: skip
    args = [sys.executable, "-m", "student_trainer.cli", "precompute", "--teacher", str(teacher),
            "--dataset", "synthetic:24", "--store", url, "--views", str(V), "--shard-size",
            str(SHARD), "--recipe", "mocov2", "--size", "16", "--device", "cpu", "--workers", "0",
            "--batch-size", "8", "--no-progress", "--single-writer", "--json"]  # fmt: skip
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2"}
    rank1 = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("DISCO_SINGLE_WRITER", "1")
    report0 = run_precompute(PrecomputeConfig(store=url, **common))
    out, err = rank1.communicate(timeout=300)
    assert rank1.returncode == 0, err.decode()[-2000:]
    report1 = json.loads(out.decode().strip().splitlines()[-1])
    # 6 shards, split whole between the ranks: 0, 2, 4 and 1, 3, 5
    assert (report0.shards_computed, report1["shards_computed"]) == (3, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    local = tmp_path / "local.zarr"
    run_precompute(PrecomputeConfig(store=str(local), **common))
    remote, ref = EmbeddingStore.open(url), EmbeddingStore.open(str(local))
    assert remote.written_mask().all()
    for s in range(ref.num_shards):
        assert np.array_equal(remote.read_shard_raw(s), ref.read_shard_raw(s)), s


def test_service_writes_through_to_an_s3_store_a_trainer_lazy_fills(
    s3: str, tmp_path: Path, teacher: Path
) -> None:
    """``disco serve --store-root s3://...`` (real uvicorn on loopback) is the single writer of a
    store in the bucket; a trainer that reads the store from the bucket sends what is missing and
    every target it trained on ends up stored, equal to what the teacher gives."""
    stores = f"{s3}/stores"
    manifest = build_manifest(open_dataset("synthetic:16"), "all", progress=False)
    EmbeddingStore.create(f"{stores}/bare", manifest=manifest, recipe=get_recipe("mocov2", 16),
                          seed=0, views=V, shard_size=SHARD, single_writer=True)  # fmt: skip
    # Without the single-writer promise the service refuses to start, in one line.
    res = runner.invoke(app, ["serve", "--teacher", str(teacher), "--store-root", stores])
    assert res.exit_code == 1 and "--single-writer" in res.output, res.output
    args = ["--teacher", str(teacher), "--store-root", stores, "--single-writer", "--device",
            "cpu", "--threads", "1", "--max-wait-ms", "2", "--log-level", "warning"]  # fmt: skip
    proc, url = start_server(args, tmp_path / "server.log", timeout=300)
    used: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def record(step: int, batch: Any, output: Any) -> None:
        used.append((batch.rows.numpy().copy(), batch.views.numpy().copy(),
                     batch.target1.numpy().copy()))  # fmt: skip

    try:
        cfg = TrainConfig(method="disco", arch="tiny", out=str(tmp_path / "run"),
                          store=f"{stores}/bare", teacher_url=url, batch_size=8, epochs=1,
                          queue_size=16, head_hidden=32, num_workers=0, progress=False,
                          seed=5)  # fmt: skip
        train(cfg, step_hook=record)
        names = httpx.get(f"{url}/v1/stores", timeout=10).json()["stores"]
    finally:
        stop_server(proc)
    assert names == ["bare"]
    store = EmbeddingStore.open(f"{stores}/bare")
    assert store.teacher is not None  # attached by the service at its first write
    mask = store.written_mask()
    assert len(used) == 2
    for rows, views, target in used:
        assert mask[rows, views[:, 0]].all()
        stored = np.stack(
            [
                store.read_shard(int(r) // SHARD).embeddings[int(r) % SHARD, v]
                for r, v in zip(rows, views[:, 0], strict=True)
            ]
        )
        assert np.allclose(stored, target, atol=2e-3)
    result = verify_store(f"{stores}/bare", str(teacher), samples=8, device="cpu")
    assert result.passed
