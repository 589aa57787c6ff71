"""Two gloo processes under torchrun run the real training loop (DDP) and end with the same weights.

Each rank reads its own half of every global batch; DDP averages the gradients, so after every
optimiser step the query encoders must be identical, the momentum key encoders too (an EMA of
identical weights), and the key queues (each rank enqueues the keys gathered from all ranks).
"""

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
import student_trainer.train.loop as train_mod
from student_trainer.train.config import TrainConfig

models = []


class RecordedMoCo(train_mod.MoCo):
    # The real module; only remembered so this rank can save its own weights after training.
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        models.append(self)


train_mod.MoCo = RecordedMoCo
out = sys.argv[1]
rows = []
cfg = TrainConfig(method="mocov2", arch="tiny", out=out, dataset="synthetic:64", size=16,
                  batch_size=8, epochs=1, queue_size=16, head_hidden=32, num_workers=0,
                  progress=False, stop_at_step=3, device="auto", knn_every=1)
result = train_mod.train(cfg, step_hook=lambda step, b, output: rows.extend(b.rows.tolist()))
rank = os.environ["RANK"]
(model,) = models
torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
           os.path.join(out, f"state{rank}.pt"))
with open(os.path.join(out, f"rows{rank}.json"), "w") as fh:
    json.dump({"rows": rows, "steps": result.steps, "batch": len(rows) // result.steps,
               "knn": [{k: r[k] for k in ("step", "knn_weighted", "n_bank", "n_queries")}
                       for r in result.knn],
               "local_rank": os.environ["LOCAL_RANK"]}, fh)
"""


@pytest.mark.slow
def test_two_process_gloo_ddp_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [*cmd, str(script), str(out)], capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "rows0.json").read_text())
    r1 = json.loads((out / "rows1.json").read_text())
    assert (r0["local_rank"], r1["local_rank"]) == ("0", "1")
    assert r0["steps"] == r1["steps"] == 3 and r0["batch"] == r1["batch"] == 4
    assert not set(r0["rows"]) & set(r1["rows"])  # each rank reads its own share
    # the kNN monitor before step 1: each rank embedded its share; both got the same record
    assert r0["knn"] == r1["knn"] and len(r0["knn"]) == 1 and r0["knn"][0]["n_bank"] > 20

    s0 = torch.load(out / "state0.pt", weights_only=True)
    s1 = torch.load(out / "state1.pt", weights_only=True)
    assert s0.keys() == s1.keys()
    saved = torch.load(out / "ckpt" / "last.pt", weights_only=True)["model"]
    shared = [k for k in s0 if k.startswith(("query.", "key.", "queue"))]
    # BatchNorm running statistics are per rank (DDP without SyncBN: each sees its own images).
    own_stats = ("running_mean", "running_var", "num_batches_tracked")
    weights = [k for k in shared if not k.endswith(own_stats)]
    assert any(k.startswith("query.") for k in weights) and "queue" in weights
    for key in weights:
        assert torch.equal(s0[key], s1[key]), f"{key} differs between ranks"
        assert torch.equal(s0[key], saved[key]), f"{key} differs from rank 0's saved state"
    assert s0["queue_count"].item() == 16  # keys of both ranks were enqueued (2 x 4 x 2 steps)
    conv = "query.backbone.conv1.weight"
    assert conv in weights and float(s0[conv].abs().sum()) > 0
    loaded = load_encoder(out / "final.pt")  # rank 0 exported
    assert loaded.encoder.head is not None
    for name, value in loaded.encoder.state_dict().items():
        if not name.endswith(own_stats):
            assert torch.equal(value, s1[f"query.{name}"]), name
