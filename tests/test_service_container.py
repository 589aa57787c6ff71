"""The container files: docker-compose.yml is valid and wired to the service settings; the
Dockerfile builds on a CUDA PyTorch image, runs as a non-root user and starts ``disco serve``.

No Docker engine runs here: ``docker-compose config -q`` (Debian's docker-compose 1.29, or the
``docker compose`` plugin) validates the file when installed; the structural checks always run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from teacher_service.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


def test_compose_config_validates_with_the_cli_when_installed() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker-compose CLI installed; structural checks below still run")
    for profile in ([], ["--profile", "precompute"]):
        done = subprocess.run(
            [*cli, "-f", str(COMPOSE), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


def _gpu_reserved(service: dict[str, Any]) -> bool:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    return any("gpu" in d.get("capabilities", []) for d in devices)


def test_teacher_service_is_wired(compose: dict[str, Any]) -> None:
    teacher = compose["services"]["teacher"]
    assert teacher["command"] == ["disco", "serve"]
    assert _gpu_reserved(teacher)
    assert any(str(p).endswith(":8000") for p in teacher["ports"])
    mounts = [re.search(r":(/[^:]+)(?::r[ow])?$", str(v)).group(1) for v in teacher["volumes"]]  # type: ignore[union-attr]
    assert "/models" in mounts and "/stores" in mounts
    env = teacher["environment"]
    assert env["DISCO_STORE_ROOT"] == "/stores" and env["DISCO_TEACHER"].startswith("/models/")
    assert env["DISCO_HOST"] == "0.0.0.0"
    fields = {f"DISCO_{name.upper()}" for name in ServiceSettings.model_fields}
    unknown = set(env) - fields
    assert not unknown, f"compose sets variables the service does not read: {unknown}"
    test = " ".join(teacher["healthcheck"]["test"])
    assert "/healthz" in test and ":8000" in test


def test_precompute_runs_under_a_profile(compose: dict[str, Any]) -> None:
    job = compose["services"]["precompute"]
    assert job["profiles"] == ["precompute"]
    assert job["command"][:2] == ["disco", "precompute"]
    assert _gpu_reserved(job)
    assert job["volumes"] == compose["services"]["teacher"]["volumes"]


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M)
    assert base is not None and base.group(1).startswith("pytorch/pytorch:")
    assert "cuda" in base.group(1)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^CMD \["disco", "serve"\]', text, re.M)
    assert "pip install ." in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
