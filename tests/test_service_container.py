"""The container: compose files wired to the service settings, and (opt-in) the real thing.

Always: the compose files parse, pass ``docker-compose config -q`` when a compose CLI is
installed (CPU default, GPU override, precompute profile), pass every ``DISCO_*`` setting the
service reads, and need no GPU, no host checkpoint and no python alias by default.
With ``DISCO_DOCKER_SMOKE=1`` and a Docker engine that answers: ``scripts/docker_smoke.sh``
(``make docker-smoke``) builds the image and runs it (see README "Container").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from teacher_service.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
FIELDS = {f"DISCO_{name.upper()}" for name in ServiceSettings.model_fields}


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, GPU]], ids=["cpu-default", "gpu-override"])
def test_compose_config_validates_with_the_cli_when_installed(files: list[Path]) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI installed; the structural checks still run")
    args = [a for f in files for a in ("-f", str(f))]
    for profile in ([], ["--profile", "precompute"], ["--profile", "monitoring"]):
        done = subprocess.run(
            [*cli, *args, *profile, "config", "-q"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("DISCO_")},
        )
        assert done.returncode == 0, done.stderr


def test_cpu_default_needs_no_gpu_and_passes_every_setting() -> None:
    teacher = _load(COMPOSE)["services"]["teacher"]
    assert "deploy" not in teacher  # no device reservation: runs on a host without NVIDIA
    assert teacher["command"] == ["disco", "serve"]
    env = teacher["environment"]
    disco = {k for k in env if k.startswith("DISCO_")}
    assert disco == FIELDS, f"missing {FIELDS - disco}, unknown {disco - FIELDS}"
    assert set(env) - disco == {"HF_TOKEN", "HF_HUB_OFFLINE"}
    assert env["DISCO_DEVICE"] == "${DISCO_DEVICE:-auto}"
    assert env["DISCO_STORE_ROOT"] == "/stores" and env["DISCO_HOST"] == "0.0.0.0"
    # The default model is the demo teacher baked into the image, not a host file.
    assert env["DISCO_TEACHER"].endswith(":-/app/student_trainer/assets/demo_teacher.pt}")
    # Optional settings pass through empty, which the service reads as "its default".
    optional = [k for k, v in env.items() if v == "${" + k + ":-}"]
    assert len(optional) >= 15
    # A missing checkpoint exits once (no restart loop by default); stores on a named volume.
    assert teacher["restart"] == "${DISCO_RESTART:-no}"
    assert "${DISCO_STORES:-stores}:/stores" in teacher["volumes"]
    assert "stores" in _load(COMPOSE)["volumes"]
    test = " ".join(teacher["healthcheck"]["test"])
    assert "/readyz" in test and test.split()[1].startswith("/opt/venv/bin/python")


def test_hub_teachers_cache_and_monitoring() -> None:
    data = _load(COMPOSE)
    teacher = data["services"]["teacher"]
    # Hub teachers: the models extra by default, a weights cache volume, hub variables passed.
    assert data["x-build"]["args"]["EXTRAS"] == "${DISCO_EXTRAS-models}"
    assert "${DISCO_CACHE:-cache}:/cache" in teacher["volumes"] and "cache" in data["volumes"]
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE"):
        assert teacher["environment"][name] == "${" + name + ":-}"
        assert data["services"]["precompute"]["environment"][name] == "${" + name + ":-}"
    assert "--precision" in data["services"]["precompute"]["command"]
    # Monitoring: a profile with Prometheus scraping the teacher's open /metrics.
    prom = data["services"]["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    mount = next(v for v in prom["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["teacher:8000"]
    assert ServiceSettings.model_fields["metrics"].default == "open"
    # The healthcheck polls /readyz, which needs no token.
    assert ServiceSettings.model_fields["token"].default is None


def test_dockerfile_extras_and_cache() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG EXTRAS=models$", text, re.M)
    assert "HF_HOME=/cache/huggingface" in text and "TORCH_HOME=/cache/torch" in text
    assert "chown 10001:10001 /stores /home/disco /cache" in text
    assert 'scripts/requirements.py "$EXTRAS"' in text
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "requirements.py"), "models"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = done.stdout.split()
    assert any(r.startswith("torch") for r in lines) and any(r.startswith("timm") for r in lines)
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "requirements.py"), "nope"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "valid:" in bad.stderr


def test_empty_variables_mean_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FIELDS:
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("DISCO_TEACHER", __file__)
    settings = ServiceSettings()  # type: ignore[call-arg]
    assert (settings.size, settings.recipe, settings.token) == (None, None, None)
    assert settings.max_queue == ServiceSettings.model_fields["max_queue"].default


def test_gpu_override_reserves_a_gpu() -> None:
    gpu = _load(GPU)["services"]
    for name in ("teacher", "precompute"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["teacher"]["environment"]["DISCO_DEVICE"] == "${DISCO_DEVICE:-cuda}"


def test_dockerfile_and_context() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert "ARG TORCH_INDEX_URL" in text and "ARG WHEELHOUSE_URL" in text
    assert text.count("pip-install -c constraints.txt") == 2  # dependencies + project, pinned
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "chown 10001:10001 /stores" in text
    assert re.search(r'^CMD \["disco", "serve"\]', text, re.M)
    health = re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"(\S+)\"", text, re.M)
    assert health is not None and health.group(1) == "/opt/venv/bin/python"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "runs" in ignored
    assert "!student_trainer/assets/demo_teacher.pt" in ignored


def _engine() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], capture_output=True).returncode == 0


@pytest.mark.skipif(
    os.environ.get("DISCO_DOCKER_SMOKE") != "1" or not _engine(),
    reason="opt-in: DISCO_DOCKER_SMOKE=1 and a running Docker engine (make docker-smoke)",
)
def test_docker_smoke() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "docker_smoke.sh")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["uid"] != 0 and figures["healthy_s"] > 0
