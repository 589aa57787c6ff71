"""CUDA paths agree with the CPU paths (run on a GPU host: ``pytest -m gpu``; skipped without CUDA).

* precompute under bf16 autocast + channels_last: every stored embedding has cosine >= 0.999 to
  the fp32 CPU run's, and the store records ``teacher.compute_dtype = bfloat16``;
* kNN: FAISS (GPU index when faiss has GPU support) and torch brute force on CUDA return exactly
  the CPU neighbours;
* eval features on CUDA match CPU features;
* the HTTP service loads its teacher on the GPU (``/v1/model`` says cuda) and serves embeddings
  that match the CPU teacher;
* the service's batched renderer on CUDA (``auto``) and nvjpeg decoding (``decode = device``)
  serve embeddings close to the CPU reference service's, and write-through on CUDA decodes with
  Pillow and records ``{"renderer": "batched", "device": "cuda"}`` in the store;
* a training step (mocov2 and online disco, bf16 autocast) runs on CUDA and records ``amp``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.views import get_recipe, render_center, render_view
from student_trainer.eval.features import EncoderFeatures
from student_trainer.eval.knn import faiss_candidates, faiss_has_gpu, l2_normalise, search
from teacher_service.checkpoint import load_encoder, save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.precompute import PrecomputeConfig, run_precompute

pytestmark = pytest.mark.gpu

SIZE = 32
PRE = {
    "size": SIZE,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear",
    "antialias": True,
    "recipe": "mocov2",
}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 layout at width 32, small stem, MoCo-v2 head, random weights."""
    path = tmp_path_factory.mktemp("gpu") / "teacher.pt"
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="resnet18", width=32, small_stem=True))
    save_checkpoint(path, enc, PRE)
    return path


def test_precompute_bf16_on_cuda_matches_cpu(teacher: Path, tmp_path: Path) -> None:
    def run(device: str, amp: str) -> EmbeddingStore:
        cfg = PrecomputeConfig(
            teacher=str(teacher), dataset="synthetic:64", store=str(tmp_path / f"{device}.zarr"),
            views=2, size=SIZE, shard_size=32, batch_size=32, workers=2, device=device,
            precision=amp, progress=False,
        )  # fmt: skip
        report = run_precompute(cfg)
        assert report.shards_computed == 2 and report.device.startswith(device)
        return EmbeddingStore.open(cfg.store)

    cpu, gpu = run("cpu", "fp32"), run("cuda", "bf16")
    assert gpu.teacher is not None and gpu.teacher["compute_dtype"] == "bfloat16"
    assert cpu.teacher is not None and cpu.teacher["compute_dtype"] == "float32"
    a = np.concatenate([cpu.read_shard(s).embeddings for s in range(cpu.num_shards)])
    b = np.concatenate([gpu.read_shard(s).embeddings for s in range(gpu.num_shards)])
    assert a.shape == b.shape == (64, 2, 128)
    assert cosine(a, b).min() >= 0.999


def test_knn_neighbours_on_cuda_identical_to_cpu() -> None:
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((5000, 64), dtype=np.float32)
    queries = rng.standard_normal((300, 64), dtype=np.float32)
    ref = search(bank, queries, 20, "faiss", "cpu")
    for backend in ("faiss", "brute"):
        got = search(bank, queries, 20, backend, "cuda")
        assert np.array_equal(got.indices, ref.indices), backend
        assert np.allclose(got.similarities, ref.similarities)
    if faiss_has_gpu():
        # The raw GPU index (no exact re-ranking): the same top-1 wherever there is no near-tie.
        b, q = l2_normalise(bank), l2_normalise(queries)
        gpu_top = faiss_candidates(b, q, 20, "cuda")
        cpu_top = faiss_candidates(b, q, 20, "cpu")
        assert (gpu_top[:, 0] == cpu_top[:, 0]).mean() >= 0.99


def test_eval_features_on_cuda_match_cpu(teacher: Path) -> None:
    dataset = open_dataset("synthetic:16")
    cpu = EncoderFeatures(teacher, device="cpu")
    gpu = EncoderFeatures(teacher, device="cuda")
    x = torch.stack([cpu.prepare(dataset.load(i)) for i in range(len(dataset))])
    a, b = cpu.embed(x).numpy(), gpu.embed(x).numpy()
    assert b.dtype == np.float32 and a.shape == b.shape
    assert cosine(a, b).min() >= 0.999


def test_service_serves_from_the_gpu(teacher: Path) -> None:
    from fastapi.testclient import TestClient

    from teacher_service.service import ServiceSettings, create_app

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    bodies = []
    for arr in images:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        bodies.append({"data": base64.b64encode(buf.getvalue()).decode()})
    settings = ServiceSettings(teacher=teacher, device="cuda", dtype="bfloat16")
    with TestClient(create_app(settings)) as client:
        info = client.get("/v1/model").json()
        assert info["device"].startswith("cuda") and info["dtype"] == "bfloat16"
        r = client.post("/v1/embeddings", json={"images": bodies})
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["embeddings"], dtype=np.float32)
    encoder = load_encoder(teacher).encoder
    recipe = get_recipe("mocov2", SIZE)
    with torch.inference_mode():
        want = encoder(torch.stack([render_center(a, recipe) for a in images])).numpy()
    assert cosine(got, want).min() >= 0.999


def _jpeg_bodies(n: int, seed: int = 2) -> tuple[list[np.ndarray], list[bytes]]:
    """Photo-like sources (smooth fields + mild noise) and their quality-90 JPEG bytes."""
    rng = np.random.default_rng(seed)
    arrays, jpegs = [], []
    for k in range(n):
        h, w = 60 + 7 * k, 80 - 5 * k
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack(
            [127 + 100 * np.sin(xx / (9 + k)), 127 + 100 * np.cos(yy / 13), (xx + yy) % 256], -1
        )
        arr = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
        arrays.append(arr)
    return arrays, jpegs


def test_service_batched_renderer_and_nvjpeg_on_cuda(teacher: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from store.decode import decode_image
    from store.manifest import build_manifest
    from teacher_service.service import ServiceSettings, create_app
    from teacher_service.service.jpeg import decode_jpeg_device

    _, jpegs = _jpeg_bodies(4)
    images = [{"data": base64.b64encode(b).decode()} for b in jpegs]
    bodies = [{"images": images}, {"images": images, "views": 3, "seed": 5}]
    # nvjpeg decodes on the device, within a few grey levels of Pillow (libjpeg-turbo).
    for data in jpegs:
        on_gpu = decode_jpeg_device(data, torch.device("cuda"))
        assert on_gpu is not None and on_gpu.device.type == "cuda"
        diff = (on_gpu.cpu().int() - torch.from_numpy(decode_image(data)).int()).abs()
        assert diff.float().mean().item() <= 2.0, diff.float().mean().item()

    def serve(**kw: Any) -> list[np.ndarray]:
        with TestClient(create_app(ServiceSettings(teacher=teacher, **kw))) as client:
            info = client.get("/v1/model").json()
            want = "batched" if kw["device"] == "cuda" else "reference"
            assert info["renderer"] == want and info["decode"] == kw.get("decode", "cpu")
            out = []
            for body in bodies:
                r = client.post("/v1/embeddings", json=body)
                assert r.status_code == 200, r.text
                out.append(np.asarray(r.json()["embeddings"], dtype=np.float32))
            return out

    ref = serve(device="cpu", renderer="reference")
    batched = serve(device="cuda")  # auto -> batched on CUDA, fp32
    nvjpeg = serve(device="cuda", decode="device")
    for a, b, c in zip(ref, batched, nvjpeg, strict=True):
        assert a.shape == b.shape == c.shape
        assert cosine(a, b).min() >= 0.999  # render within +-1, fp32 (TF32 convolutions)
        assert cosine(a, c).min() >= 0.99  # other decoder: a few grey levels
    # Write-through on CUDA: Pillow decode (the store's), renderer recorded.
    root = tmp_path / "stores"
    root.mkdir()
    dataset = open_dataset("synthetic:4")
    recipe = get_recipe("mocov2", SIZE)
    EmbeddingStore.create(
        str(root / "s"), manifest=build_manifest(dataset, "all", progress=False), recipe=recipe,
        seed=0, views=2, shard_size=4,
    )  # fmt: skip
    settings = ServiceSettings(teacher=teacher, device="cuda", decode="device", store_root=root)
    slot_images = []
    rows = build_manifest(dataset, "all", progress=False).indices  # store row -> sample
    for i in range(2):
        buf = io.BytesIO()
        Image.fromarray(dataset.load(int(rows[i]))).save(buf, format="PNG")
        slot_images.append({"data": base64.b64encode(buf.getvalue()).decode(), "index": i,
                            "view": 1})  # fmt: skip
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/embeddings", json={"store": "s", "images": slot_images})
        assert r.status_code == 200, r.text
    store = EmbeddingStore.open(str(root / "s"))
    assert store.attrs["renderers"]["producers"] == [{"renderer": "batched", "device": "cuda"}]
    got = store.read_shard(0).embeddings[:2, 1]
    encoder = load_encoder(teacher).encoder
    views = torch.stack(
        [render_view(dataset.load(int(rows[i])), store.params[i, 1], recipe) for i in range(2)]
    )
    with torch.inference_mode():
        want = encoder(views).numpy()
    assert cosine(got, want).min() >= 0.999


def test_training_steps_run_on_cuda(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every training forward gets CUDA views under bf16 autocast (recorded inside the step, not
    read back from the config the test passed in)."""
    import student_trainer.train.loop as loop
    from student_trainer.train.config import TrainConfig
    from student_trainer.train.loop import train

    seen: list[tuple[str, bool, torch.dtype]] = []

    class RecordingMoCo(loop.MoCo):
        def forward(self, view1: Any, view2: Any, *args: Any, **kwargs: Any) -> Any:
            on = torch.is_autocast_enabled("cuda")
            seen.append((view1.device.type, on, torch.get_autocast_dtype("cuda")))
            return super().forward(view1, view2, *args, **kwargs)

    monkeypatch.setattr(loop, "MoCo", RecordingMoCo)

    tiny: dict[str, Any] = dict(
        arch="tiny", dataset="synthetic:64", size=SIZE, batch_size=16, epochs=1, queue_size=32,
        head_hidden=32, num_workers=2, progress=False, device="cuda", precision="bf16",
        stop_at_step=2,
    )  # fmt: skip
    runs: list[tuple[str, dict[str, Any]]] = [
        ("mocov2", {}),
        ("disco", {"online_teacher": str(teacher)}),
    ]
    for method, extra in runs:
        out = tmp_path / method
        seen.clear()
        result = train(TrainConfig(method=method, out=str(out), **tiny, **extra))
        assert result.steps == 2, method
        assert seen == [("cuda", True, torch.bfloat16)] * 2, (method, seen)
        assert all(np.isfinite(v) for v in result.last_terms.values()), result.last_terms
        # Weights trained in channels_last on the GPU load into a plain CPU encoder.
        deployed = load_encoder(result.deployed_path).encoder
        with torch.inference_mode():
            feat = deployed(torch.randn(2, 3, SIZE, SIZE), output="feature")
        assert feat.shape[0] == 2 and bool(torch.isfinite(feat).all()), method
