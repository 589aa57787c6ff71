"""The service in production: health and metrics with a token set, the docs switch, request ids,
JSON access logs from a real ``disco serve``, the one error->status table, the precision
vocabulary, a torch-free client import and the generated settings reference."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from typer.testing import CliRunner

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import ConfigError, StoreError
from store.precision import COMPUTE_DTYPES, PRECISIONS, compute_dtype, parse_precision
from teacher_service.service.app import ERROR_STATUS, create_app
from teacher_service.service.model import load_runtime
from teacher_service.service.settings import ServiceSettings, settings_reference
from teacher_service.service.writethrough import StoreWriteError
from tests.test_service_e2e import make_service_root, start_server, stop_server

TOKEN = "prod-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[1]


def png(seed: int, h: int = 36, w: int = 40, arr: np.ndarray | None = None) -> str:
    if arr is None:
        arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    teacher, stores, _ = make_service_root(tmp_path_factory.mktemp("prod"), ("synth",), seed=0)
    return teacher, stores


def app_client(files: tuple[Path, Path], **settings: Any) -> TestClient:
    teacher, stores = files
    return TestClient(
        create_app(
            ServiceSettings(
                teacher=str(teacher), store_root=stores, token=SecretStr(TOKEN), **settings
            )
        )
    )


@pytest.fixture(scope="module")
def client(files: tuple[Path, Path]) -> Iterator[TestClient]:
    with app_client(files) as c:
        yield c


# --------------------------------------------------------------------------------------------
# Health, metrics and docs with a token set


def test_health_answers_without_the_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/model", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("switch", "anonymous", "with_token"),
    [("open", 200, 200), ("token", 401, 200), ("off", 404, 404)],
)
def test_metrics_switch(
    files: tuple[Path, Path], switch: str, anonymous: int, with_token: int
) -> None:
    with app_client(files, metrics=switch) as c:
        assert c.get("/metrics").status_code == anonymous
        r = c.get("/metrics", headers=AUTH)
        assert r.status_code == with_token
        if with_token == 200:
            assert "disco_requests_total" in r.text
        assert c.get("/readyz").status_code == 200  # health never depends on the switch


def test_openapi_schema_is_open_with_a_token_and_holds_no_secret(client: TestClient) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert "/v1/embeddings" in r.json()["paths"]
    assert TOKEN not in r.text
    assert client.get("/docs").status_code == 200


def test_docs_switch_off(files: tuple[Path, Path]) -> None:
    with app_client(files, docs=False) as c:
        assert c.get("/openapi.json", headers=AUTH).status_code == 404
        assert c.get("/docs", headers=AUTH).status_code == 404


# --------------------------------------------------------------------------------------------
# Request ids and timing headers


def test_request_id_is_echoed_generated_or_replaced(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-1.2:3"}).headers[
        "x-request-id"
    ] == ("abc-1.2:3")
    generated = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert client.get("/healthz").headers["x-request-id"] != generated  # a new one each time
    for bad in ("has space", "x" * 129, "new\u00e9line"):
        sent = {b"X-Request-ID": bad.encode("utf-8")}
        got = client.get("/healthz", headers=sent).headers["x-request-id"]
        assert got != bad and re.fullmatch(r"[0-9a-f]{32}", got)
    # Errors carry it too.
    assert client.get("/v1/model", headers={"X-Request-ID": "e1"}).headers["x-request-id"] == "e1"


def test_embedding_responses_carry_queue_and_inference_times(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"images": [{"data": png(0)}]}, headers=AUTH)
    assert r.status_code == 200, r.text
    for name in ("x-queue-time", "x-inference-time"):
        assert float(r.headers[name]) >= 0.0
    assert float(r.headers["x-inference-time"]) > 0.0
    assert int(r.headers["x-batch-size"]) >= 1


# --------------------------------------------------------------------------------------------
# JSON logs from a real `disco serve`


def test_json_logs_from_a_real_server(files: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, stores = files
    log = tmp_path / "server.log"
    args = ["--teacher", str(teacher), "--store-root", str(stores), "--token", TOKEN,
            "--log-format", "json", "--threads", "1"]  # fmt: skip
    proc, url = start_server(args, log)
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        body = {"images": [{"data": png(1)}, {"data": png(2)}], "views": 2, "seed": 0}
        r = httpx.post(
            f"{url}/v1/embeddings", json=body, headers={**AUTH, "X-Request-ID": "req-42"}
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
        assert httpx.get(f"{url}/v1/stores").status_code == 401
    finally:
        stop_server(proc)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [r for r in records if r["logger"] == "teacher_service.access"]
    (embed,) = [r for r in access if r["request_id"] == "req-42"]
    assert embed["route"] == "/v1/embeddings" and embed["status"] == 200
    assert embed["images"] == 2 and embed["rows"] == 4
    assert embed["queue_ms"] >= 0 and embed["inference_ms"] > 0 and embed["duration_ms"] > 0
    assert any(r["route"] == "/v1/stores" and r["status"] == 401 for r in access)
    assert any("teacher tiny" in r["msg"] for r in records)  # the service's own start-up line


# --------------------------------------------------------------------------------------------
# One error table


def test_a_failed_store_write_is_a_500_from_the_one_table(
    files: tuple[Path, Path], client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ERROR_STATUS[StoreWriteError] == 500 and ERROR_STATUS[StoreError] == 409
    assert issubclass(StoreWriteError, StoreError)

    def broken(self: EmbeddingStore, *args: Any, **kwargs: Any) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(EmbeddingStore, "write_slots", broken)
    rows = EmbeddingStore.open(str(files[1] / "synth")).manifest.indices  # row -> sample
    sample = open_dataset("synthetic:8").load(int(rows[0]))
    image = {"data": png(0, arr=sample), "index": 0, "view": 0}
    r = client.post("/v1/embeddings", json={"images": [image], "store": "synth"}, headers=AUTH)
    assert r.status_code == 500, r.text
    assert r.json()["detail"] == "store write failed: disk full"
    monkeypatch.undo()
    assert client.get("/readyz").status_code == 200


def test_no_route_module_raises_http_errors_for_store_errors() -> None:
    # Store failures are raised as store errors and mapped by the app alone.
    text = (ROOT / "teacher_service/service/writethrough.py").read_text()
    assert "HTTPException" not in text


# --------------------------------------------------------------------------------------------
# Precision vocabulary


def test_precision_names_and_old_spellings(capsys: pytest.CaptureFixture[str]) -> None:
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    assert parse_precision(None) == "fp32"
    pairs: list[tuple[str | bool, str]] = [
        ("none", "fp32"), ("bfloat16", "bf16"), ("float16", "fp16"), (True, "bf16"),
    ]  # fmt: skip
    for old, new in pairs:
        assert parse_precision(old, old_flag="--amp") == new
        assert "deprecated" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="valid: fp32, bf16, fp16"):
        parse_precision("int8")
    assert compute_dtype("bf16", "cuda") == COMPUTE_DTYPES["bf16"] == "bfloat16"
    assert compute_dtype("fp32", "cpu") == "float32"
    for name in ("bf16", "fp16"):
        with pytest.raises(ConfigError, match=rf"--precision {name} needs a CUDA device"):
            compute_dtype(name, "cpu")


def test_serve_precision_and_the_deprecated_dtype(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, _ = files
    settings = ServiceSettings(teacher=str(teacher), dtype="bfloat16")
    assert settings.precision == "bf16"
    assert (
        "DISCO_DTYPE/--dtype bfloat16 is deprecated; use --precision bf16"
        in capsys.readouterr().err
    )
    with pytest.raises(ValueError, match="disagree"):
        ServiceSettings(teacher=str(teacher), dtype="float16", precision="bf16")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        load_runtime(teacher, device="cpu", precision="bf16")
    assert load_runtime(teacher, device="cpu", precision="fp32").dtype == "float32"


def test_serve_cli_refuses_bf16_on_cpu_in_one_line(files: tuple[Path, Path]) -> None:
    from student_trainer.cli import app

    teacher, _ = files
    result = CliRunner().invoke(
        app, ["serve", "--teacher", str(teacher), "--device", "cpu", "--precision", "bf16"]
    )
    assert result.exit_code == 1
    assert "--precision bf16 needs a CUDA device" in result.output
    assert "Traceback" not in result.output


def test_verify_precision(files: tuple[Path, Path], client: TestClient) -> None:
    from teacher_service.config import VerifyConfig
    from teacher_service.verify import verify_store

    teacher, stores = files
    dataset = open_dataset("synthetic:8")
    rows = EmbeddingStore.open(str(stores / "synth")).manifest.indices  # row -> sample
    images = [
        {"data": png(0, arr=dataset.load(int(rows[i]))), "index": i, "view": 1} for i in range(4)
    ]
    r = client.post("/v1/embeddings", json={"images": images, "store": "synth"}, headers=AUTH)
    assert r.status_code == 200, r.text
    url = str(stores / "synth")
    with pytest.raises(ConfigError, match="--precision bf16 needs a CUDA device"):
        verify_store(url, str(teacher), samples=2, device="cpu", precision="bf16")
    assert verify_store(url, str(teacher), samples=2, device="cpu", precision="fp32").passed

    with pytest.raises(ConfigError, match="valid"):
        VerifyConfig(precision="int4")


# --------------------------------------------------------------------------------------------
# The light client and the settings reference


def test_client_imports_no_torch() -> None:
    code = (
        "import sys, teacher_service.client; "
        "heavy = [m for m in ('torch', 'torchvision', 'zarr', 'fastapi') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_settings_reference_is_rendered_from_the_model() -> None:
    table = settings_reference()
    rows = [line for line in table.splitlines() if line.startswith("| `") and "DISCO_" in line]
    assert len(rows) == len(ServiceSettings.model_fields)
    for name, info in ServiceSettings.model_fields.items():
        (row,) = [r for r in rows if r.startswith(f"| `{name}` |")]
        assert f"| `DISCO_{name.upper()}` | `--{name.replace('_', '-')}` |" in row
        assert (info.description or "")[:30] in row.replace("\\|", "|")
    cells = {r.split(" | ")[0][3:-1]: r.split(" | ") for r in rows}
    assert cells["port"][3:5] == ["`int`", "`8000`"]
    assert cells["teacher"][4] == "required"
    assert cells["metrics"][3] == "`open` \\| `token` \\| `off`"
    assert cells["teacher_weights"][3] == "`Path` or `None`"
    assert cells["store_root"][4] == "`None`"
