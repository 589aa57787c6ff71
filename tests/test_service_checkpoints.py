"""`disco serve` serves the checkpoints the project itself writes, through a real uvicorn process:
the shipped demo teacher (a ``disco-checkpoint/1`` file whose recipe is a dict) and a student
``final.pt`` trained here. A store built from the demo teacher by ``disco precompute`` with no
recipe/size flags gets the teacher's recipe, and the service answers a planned view of that store
with the store's own target."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.views import render_view
from student_trainer.cli import app as cli_app
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import train
from teacher_service.checkpoint import load_encoder, read_checkpoint, recipe_for

DEMO_TEACHER = Path(__file__).resolve().parents[1] / "student_trainer/assets/demo_teacher.pt"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(
    args: list[str], log: Path, timeout: float = 400.0
) -> tuple[subprocess.Popen[bytes], str]:
    """``disco serve ARGS`` (the console script's module) on a free loopback port; waits for
    ``/readyz`` 200 (the teacher is loaded and warmed). The generous timeout is for a shared
    machine under heavy load, where importing torch alone has taken minutes."""
    for _ in range(3):
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "student_trainer.cli", "serve", *args, "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        stop(proc)
        if b"address already in use" not in log.read_bytes():
            break
    raise RuntimeError(f"server did not become ready:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_recipe_for_reads_every_recorded_form() -> None:
    demo = read_checkpoint(DEMO_TEACHER)["preprocessing"]
    assert isinstance(demo["recipe"], dict)  # what `disco train` writes
    recipe = recipe_for(demo)
    assert (recipe.name, recipe.size) == ("digits", 32)
    assert recipe_for(demo, size=48).size == 48
    assert recipe_for(demo, name="mocov2").name == "mocov2"
    assert (recipe_for({"recipe": "digits", "size": 24}).name, recipe_for({"size": 24}).size) == (
        "digits",
        24,
    )
    assert (recipe_for(None).name, recipe_for(None).size) == ("mocov2", 224)
    with pytest.raises(ValueError, match="unknown view recipe 'nope'"):
        recipe_for(demo, name="nope")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve_ckpt")


@pytest.fixture(scope="module")
def demo_store(root: Path) -> Path:
    """synthetic:6 x 2 views built by `disco precompute` from the demo teacher, no recipe flags."""
    stores = root / "stores"
    stores.mkdir()
    result = CliRunner().invoke(
        cli_app,
        [
            "precompute",
            "--teacher",
            str(DEMO_TEACHER),
            "--store",
            str(stores / "demo"),
            *[
                "--dataset",
                "synthetic:6",
                "--views",
                "2",
                "--device",
                "cpu",
                "--workers",
                "0",
                "--no-progress",
            ],
        ],
    )
    assert result.exit_code == 0, result.output
    return stores


def test_precompute_defaults_to_the_teachers_recipe(demo_store: Path) -> None:
    store = EmbeddingStore.open(str(demo_store / "demo"))
    assert (store.recipe.name, store.recipe.size) == ("digits", 32)
    assert store.written_mask().all()


def test_serve_demo_teacher_answers_a_planned_view_with_the_store_target(
    demo_store: Path, root: Path
) -> None:
    proc, url = serve(
        [
            "--teacher",
            str(DEMO_TEACHER),
            "--store-root",
            str(demo_store),
            *["--device", "cpu", "--threads", "1", "--log-level", "warning"],
        ],
        root / "demo.log",
    )
    try:
        model = httpx.get(f"{url}/v1/model", timeout=10).json()
        assert (model["recipe"]["name"], model["recipe"]["size"]) == ("digits", 32)
        store = EmbeddingStore.open(str(demo_store / "demo"))
        dataset = open_dataset("synthetic:6")
        params = np.asarray(store.params)
        rows = store.manifest.indices  # store row -> sample of synthetic:6
        targets = store.read_shard(0).embeddings.astype(np.float32)
        slots = [(0, 0), (3, 1), (5, 0)]
        body = {
            "images": [
                {"data": _b64(png(dataset.load(int(rows[i])))), "params": params[i, v].tolist()}
                for i, v in slots
            ]
        }
        r = httpx.post(
            f"{url}/v1/embeddings?dtype=float16",
            json=body,
            headers={"Accept": "application/octet-stream"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        got = np.frombuffer(r.content, dtype="<f2").reshape(len(slots), -1).astype(np.float32)
        want = np.stack([targets[i, v] for i, v in slots])
        assert cosine(got, want).min() >= 0.999
        # A deliberately wrong view (another slot's params) is far from the target: the check
        # above can fail.
        assert cosine(got[:1], targets[0, 1][None]).min() < 0.999
    finally:
        stop(proc)
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def student(root: Path) -> Path:
    """A tiny MoCo-v2 student trained here for one epoch on sklearn digits at 16 px."""
    torch.set_num_threads(1)
    out = root / "student"
    cfg = TrainConfig(
        method="mocov2",
        arch="tiny",
        out=str(out),
        dataset="digits",
        split="test",
        size=16,
        epochs=1,
        batch_size=64,
        queue_size=128,
        head_hidden=32,
        num_workers=0,
        device="cpu",
        progress=False,
    )
    train(cfg)
    assert (out / "final.pt").is_file()
    return out / "final.pt"


def test_serve_a_student_trained_here(student: Path, root: Path) -> None:
    loaded = load_encoder(student)
    recipe = recipe_for(loaded.info["preprocessing"])
    assert (recipe.name, recipe.size) == ("digits", 16)
    proc, url = serve(
        ["--teacher", str(student), "--device", "cpu", "--threads", "1", "--log-level", "warning"],
        root / "student.log",
    )
    try:
        model = httpx.get(f"{url}/v1/model", timeout=10).json()
        assert model["sha256"] == loaded.info["sha256"]
        image = open_dataset("digits").load(7)
        r = httpx.post(
            f"{url}/v1/embeddings",
            json={"images": [{"data": _b64(png(image))}], "views": 3, "seed": 5},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["embeddings"], dtype=np.float32)
        assert got.shape == (1, 3, loaded.encoder.embed_dim)
        views = torch.stack(
            [render_view(image, recipe.sample(5, 0, v, *image.shape[:2]), recipe) for v in range(3)]
        )
        with torch.inference_mode():
            want = loaded.encoder(views, output="embedding").numpy()
        assert cosine(got, want).min() >= 0.9999
    finally:
        stop(proc)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
