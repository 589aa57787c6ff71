"""A 2-process gloo DDP run (torchrun) trains on disjoint data and saves a checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from teacher_service.checkpoint import load_encoder

SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
from student_trainer.config import TrainConfig
from student_trainer.train import train

out = sys.argv[1]
rows = []
cfg = TrainConfig(method="mocov2", arch="tiny", out=out, dataset="synthetic:64", size=16,
                  batch_size=8, epochs=1, queue_size=16, head_hidden=32, num_workers=0,
                  progress=False, stop_at_step=3)
result = train(cfg, step_hook=lambda step, batch, output: rows.extend(batch.rows.tolist()))
rank = os.environ["RANK"]
with open(os.path.join(out, f"rows{rank}.json"), "w") as fh:
    json.dump({"rows": rows, "steps": result.steps, "batch": len(rows) // result.steps}, fh)
"""


@pytest.mark.slow
def test_two_process_gloo_ddp_trains_and_saves(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, str(script), str(out)], capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "rows0.json").read_text())
    r1 = json.loads((out / "rows1.json").read_text())
    assert r0["steps"] == r1["steps"] == 3 and r0["batch"] == r1["batch"] == 4
    assert not set(r0["rows"]) & set(r1["rows"])  # each rank reads its own share
    loaded = load_encoder(out / "final.pt")
    assert loaded.encoder.head is not None
    state = torch.load(out / "ckpt" / "last.pt", weights_only=True)
    assert state["step"] == 3
    assert state["model"]["queue_count"].item() == 16  # keys of both ranks were enqueued
