"""Teacher sources end to end: precompute + verify a store with each source, one DisCo epoch of a
timm student from such a store, exports that load with plain timm / torchvision code, and
``disco serve`` answering with a timm teacher. Tiny models, local weights, nothing downloaded.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from teacher_zoo import SIZE, Zoo, build_zoo
from test_service_e2e import start_server, stop_server
from typer.testing import CliRunner

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import StoreMismatchError
from store.inspection import store_info
from store.views import get_recipe, render_center
from student_trainer.cli import app
from student_trainer.train.config import TrainConfig
from student_trainer.train.export import export_deployed
from student_trainer.train.loop import train
from student_trainer.train.models import build_student, deployed_backbone, student_config
from teacher_service.config import PrecomputeConfig
from teacher_service.precompute import run_precompute
from teacher_service.sources import load_teacher, to_pixels
from teacher_service.verify import verify_store

N = 6
SOURCES = ["timm_vit", "timm_cnn", "hf_dinov2", "hf_clip", "open_clip", "py"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return build_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def stores(zoo: Zoo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One V=2 store of synthetic:6 per source, at 32 px."""
    root = tmp_path_factory.mktemp("stores")
    out = {}
    for name in SOURCES:
        spec, weights, _ = zoo[name]
        url = str(root / f"{name}.zarr")
        cfg = PrecomputeConfig(
            teacher=spec,
            teacher_weights=weights,
            dataset=f"synthetic:{N}",
            store=url,
            views=2,
            size=SIZE,
            batch_size=12,
            workers=0,
            device="cpu",
            shard_size=4,
            progress=False,
        )
        report = run_precompute(cfg)
        assert report.views_computed == N * 2
        out[name] = url
    return out


@pytest.mark.parametrize("name", SOURCES)
def test_store_precomputed_and_verified(zoo: Zoo, stores: dict[str, str], name: str) -> None:
    spec, weights, _ = zoo[name]
    result = verify_store(stores[name], spec, samples=8, device="cpu", teacher_weights=weights)
    assert result.passed and result.cos_min >= 0.999, result.summary()
    info = store_info(stores[name])
    teacher = info["teacher"]
    loaded = load_teacher(spec, weights)
    for key in ("source", "name", "sha256", "mean", "std", "embed_dim", "input_size"):
        assert teacher[key] == loaded.info[key], key
    assert info["dim"] == loaded.model.embed_dim


def test_verify_refuses_other_weights(zoo: Zoo, stores: dict[str, str]) -> None:
    spec, _, _ = zoo["hf_clip"]
    with pytest.raises(StoreMismatchError, match=r"teacher\.source"):
        verify_store(stores["hf_clip"], zoo["timm_cnn"][0], teacher_weights=zoo["timm_cnn"][1])
    other = Path(zoo["timm_vit"][1]).parent / "other_clip.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(zoo["hf_clip"][1])
    save_file({k: v + 0.01 for k, v in state.items()}, str(other))
    with pytest.raises(StoreMismatchError, match=r"teacher\.sha256"):
        verify_store(stores["hf_clip"], spec, teacher_weights=str(other))


def test_cli_precompute_verify_info(zoo: Zoo, tmp_path: Path) -> None:
    spec, weights, _ = zoo["timm_vit"]
    store = str(tmp_path / "cli.zarr")
    runner = CliRunner()
    common = ["--teacher", spec, "--teacher-weights", weights]
    r = runner.invoke(
        app,
        ["precompute", *common, "--dataset", f"synthetic:{N}", "--store", store, "--views", "2",
         "--workers", "0", "--device", "cpu", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["store", "verify", store, *common, "--samples", "6", "--device", "cpu"])
    assert r.exit_code == 0 and "PASS" in r.output, r.output
    r = runner.invoke(app, ["store", "info", store, "--json"])
    teacher = json.loads(r.output)["teacher"]
    assert teacher["source"] == "timm" and teacher["name"] == "vit_tiny_patch16_224"
    assert teacher["mean"] == [0.5, 0.5, 0.5] and teacher["embed_dim"] == 192
    assert EmbeddingStore.open(store).recipe.size == SIZE  # the teacher's input size by default
    r = runner.invoke(app, ["store", "estimate", "--dataset", "synthetic:10", "--views", "4",
                            *common])  # fmt: skip
    assert r.exit_code == 0 and "10 x 4 x 192 x 2 B = 15.0 KiB" in r.output, r.output
    r = runner.invoke(app, ["precompute", "--teacher", "nope:x", "--dataset", "synthetic:4",
                            "--store", str(tmp_path / "x.zarr")])  # fmt: skip
    assert r.exit_code == 1 and "unknown teacher source 'nope'" in r.output


def test_disco_epoch_of_a_timm_student(stores: dict[str, str], tmp_path: Path) -> None:
    import timm

    out = tmp_path / "student"
    cfg = TrainConfig(
        method="disco",
        arch="timm:mobilenetv3_small_050",
        out=str(out),
        store=stores["timm_vit"],
        epochs=1,
        batch_size=4,
        queue_size=8,
        head_hidden=32,
        num_workers=0,
        device="cpu",
        progress=False,
    )
    result = train(cfg)
    assert result.steps >= 1 and np.isfinite(result.last_terms["loss"])
    final = torch.load(out / "final.pt", weights_only=True)
    assert final["encoder"]["head_out"] == 192  # the store's D, without a flag
    # The student normalised views with timm's own data config (ImageNet mean/std here).
    assert final["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    model = timm.create_model("mobilenetv3_small_050", num_classes=0).eval()
    model.load_state_dict(torch.load(out / "deployed.pt", weights_only=True), strict=True)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out / "deployed.safetensors")), strict=True)
    from teacher_service.checkpoint import load_encoder

    ours = load_encoder(out / "deployed.pt").encoder
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ours(x, output="feature"))
    side = json.loads((out / "deployed.json").read_text())
    assert side["constructor"] == "timm.create_model('mobilenetv3_small_050', num_classes=0)"


def test_torchvision_student_export_loads_in_torchvision(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    student = build_student(student_config("mobilenet_v3_small", 16, head_hidden=32))
    deployed = deployed_backbone(student).eval()
    paths = export_deployed(tmp_path, deployed, {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    model = torchvision.models.mobilenet_v3_small()
    model.classifier = torch.nn.Identity()
    model.load_state_dict(torch.load(paths["pt"], weights_only=True), strict=True)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), deployed(x, output="feature"))
    assert json.loads(Path(paths["json"]).read_text())["constructor"].startswith(
        "torchvision.models.mobilenet_v3_small()"
    )


def test_serve_a_timm_teacher(zoo: Zoo, tmp_path: Path) -> None:
    spec, weights, _ = zoo["timm_vit"]
    args = [
        "--teacher",
        spec,
        "--teacher-weights",
        weights,
        "--device",
        "cpu",
        "--max-wait-ms",
        "0",
    ]
    env_before = dict(os.environ)
    proc, url = start_server(args, tmp_path / "serve.log", timeout=180.0)
    try:
        image = open_dataset("synthetic:2").load(1)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        body: dict[str, Any] = {"images": [{"data": base64.b64encode(buf.getvalue()).decode()}]}
        r = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60.0)
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["embeddings"], np.float32)
        model = httpx.get(f"{url}/v1/model", timeout=10.0).json()
        assert model["source"] == "timm" and model["mean"] == [0.5, 0.5, 0.5]
    finally:
        stop_server(proc)
    assert dict(os.environ) == env_before
    recipe = get_recipe("mocov2", SIZE)
    pixels = to_pixels(render_center(image, recipe)[None], recipe.mean, recipe.std)
    with torch.inference_mode():
        want = load_teacher(spec, weights).model(pixels).numpy()
    assert got.shape == (1, 192) and float((got * want).sum()) >= 0.9999
