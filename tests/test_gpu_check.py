"""bench/gpu_check.sh, the prepared GPU-host check, runs end to end on CPU with ``--tiny``: every
step prints its JSON line and writes it to the one output file."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
BENCHES = [
    "env", "gpu_tests", "precompute", "train_throughput", "knn", "service", "render", "time_budget"
]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    return env


@pytest.mark.slow
def test_tiny_run_writes_every_bench_line(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.jsonl"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--tiny", "--out", str(out)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["bench"] for r in lines] == BENCHES
    for record in lines:
        assert record.get("status") != "failed", record
        assert json.dumps(record) in proc.stdout  # printed as well as written
    by = {r["bench"]: r for r in lines}
    assert by["env"]["cuda"] is False and by["env"]["gpu"] is None
    # Without CUDA every gpu-marked test skips; none fails or errors.
    assert by["gpu_tests"]["skipped"] >= 5 and by["gpu_tests"]["failed"] == 0
    assert by["gpu_tests"]["errors"] == 0
    pre = by["precompute"]
    # the ratios are the printed medians' ratios (a bench that mixed up its stages would not be)
    assert pre["device"] == "cpu" and pre["store_cost_ratio"] == pytest.approx(
        pre["pipeline_store_img_s"] / pre["pipeline_null_img_s"], rel=0.02
    )
    assert pre["pipeline_ratio"] == pytest.approx(
        pre["pipeline_store_img_s"] / pre["bare_img_s"], rel=0.02
    )
    train = by["train_throughput"]
    runs = ("mocov2_sps", "disco_cached_sps", "disco_ram_sps", "disco_online_sps")
    # each samples/s figure is the median of its repeats; the ratios are medians of the
    # per-repeat ratios of the printed figures
    reps = train["sps_repeats"]
    for k in runs:
        assert train[k] == pytest.approx(statistics.median(reps[k.removesuffix("_sps")]), abs=0.01)
    assert train["lazy_fill_vs_online"] == pytest.approx(
        train["lazy_fill_sps"] / train["disco_online_sps"], rel=0.01
    )

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(reps[a], reps[b], strict=True))

    assert train["read_cost_ratio"] == pytest.approx(paired("disco_cached", "disco_ram"), rel=5e-3)
    measured = paired("disco_cached", "disco_online")
    assert train["speedup_vs_online"] == pytest.approx(measured, rel=5e-3)
    assert train["speedup_vs_prediction"] == pytest.approx(
        train["speedup_vs_online"] / train["predicted_speedup_vs_online"], rel=5e-3
    )
    assert train["lazy_fill_log"]["epoch1"]["fill_fetched"] > 0  # the service filled targets
    assert by["knn"]["agreement"] == 1.0 and by["knn"]["faiss_gpu"] is False
    assert by["service"]["errors"] == 0 and by["service"]["service_ratio"] == pytest.approx(
        by["service"]["service_img_s"] / by["service"]["inprocess_img_s"], rel=0.01
    )
    assert by["render"]["cpu_exact"] is True and by["render"]["render_ratio"] > 0
    assert by["time_budget"]["train_forward_ms"] > 0 and by["time_budget"]["store_write_ms"] > 0


def test_bad_argument_exits_2_and_scripts_parse(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--bogus"], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--tiny" in proc.stderr
    for script in ("gpu_check.sh", "fetch_gpu_wheels.sh"):
        check = subprocess.run(["bash", "-n", str(ROOT / "bench" / script)], capture_output=True)
        assert check.returncode == 0, check.stderr
