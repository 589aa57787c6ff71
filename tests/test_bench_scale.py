"""bench/scale.py, the scale rehearsal, runs end to end at toy sizes and ends with one JSON line
whose figures are within their meaningful bounds (no wall-clock thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = (
    "manifest_ms_per_image", "manifest_pool_speedup", "plan_rows_per_s", "classes_per_batch_ratio",
    "trainer_rss_mb", "resume_jump_s", "slot_writes_per_s",
)  # fmt: skip


def test_tiny_rehearsal_prints_its_figures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "bench/scale.py", "--tiny", "--dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bench"] == "scale" and out["tiny"] is True
    assert set(KEYS) <= set(out)
    # Manifest: every generated JPEG is valid, timed at 1 worker and at all cores.
    assert out["manifest_invalid"] == 0 and out["files"] == 48
    assert out["manifest_ms_per_image"] > 0 and out["manifest_pool_speedup"] > 0
    assert out["mean_file_kb"] > 10  # 500x375 JPEGs, not thumbnails
    # Rows in a seeded permutation mix classes like uniform sampling; dataset order does not.
    assert 0.9 <= out["classes_per_batch_ratio"] <= 1.1
    assert out["classes_per_batch_ratio_dataset_order"] < 0.9
    assert out["classes_per_batch"] <= out["classes_per_batch_uniform"] * 1.1
    # Slot writes: all requested slots landed in the logs (disjoint requests, none lost).
    assert out["slots_logged"] == 6 * out["slot_request"] and out["slot_writes_per_s"] > 0
    # Trainer side: the plan, a fresh process's real data path (RSS), the resume jump.
    for key in ("plan_rows_per_s", "trainer_rss_mb", "resume_jump_s", "epoch_plan_s"):
        assert out[key] > 0
    assert out["trainer_rss_mb"] == max(out["trainer_big_rss_mb"], out["trainer_768_rss_mb"])
    for prefix, dim in (("trainer_big_", 8), ("trainer_768_", 768)):
        # a batch's targets are one (b, 2, D) float32 copy; the block is not held
        assert out[prefix + "batch_targets_bytes"] == 256 * 2 * dim * 4
        assert out[prefix + "dim"] == dim
        # held at once: the shards one batch's window spans, not the epoch's
        window = -(-(256 + 2 * out[prefix + "buffer"]) // out[prefix + "shard_rows"]) + 2
        assert 1 <= out[prefix + "live_shards_peak"] <= window
        assert 1 <= out[prefix + "resume_shards_read"] <= out[prefix + "shards"]
    # the jump to 5 batches before the end read only the shards those batches need
    window = -(-(5 * 256 + 2 * out["trainer_big_buffer"]) // out["trainer_big_shard_rows"]) + 2
    assert out["trainer_big_resume_shards_read"] <= window < out["trainer_big_shards"]
    assert out["manifest_1p28m_16_cores_min"] > 0
