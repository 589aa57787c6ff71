"""The kNN monitor under DDP: two gloo processes each embed their own share of the bank and the
queries, all-gather the features and get exactly the one-process record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
import json, os, sys, torch
import torch.distributed as dist
torch.set_num_threads(1)
from store.views import get_recipe
from student_trainer.eval.monitor import KnnMonitor
from student_trainer.train.loop import _preprocessing
from student_trainer.train.models import build_student, student_config

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)  # the same weights on both ranks
encoder = build_student(student_config("tiny", 16, head_hidden=16, small_stem=True))
seen = []
encoder.register_forward_hook(lambda m, inputs, out: seen.append(int(inputs[0].shape[0])))
prep = _preprocessing(get_recipe("digits", 16))
monitor = KnnMonitor.create("digits", "test", prep, torch.device("cpu"), max_queries=61,
                            max_bank=203)
monitor.batch_size = 32
shared = monitor.evaluate(encoder, rank, world)
embedded = sum(seen)
seen.clear()
alone = monitor.evaluate(encoder) if rank == 0 else None
keys = ("knn_weighted", "nn1", "knn_majority", "n_bank", "n_queries", "monitor")
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
    json.dump({"shared": {k: shared[k] for k in keys}, "embedded": embedded,
               "alone": None if alone is None else {k: alone[k] for k in keys},
               "alone_embedded": sum(seen)}, fh)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_embed_half_each_and_score_as_one_process(tmp_path: Path) -> None:
    script = tmp_path / "ddp_monitor.py"
    script.write_text(textwrap.dedent(SCRIPT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    alone = r0["alone"]
    assert alone["n_bank"] == 203 and alone["n_queries"] == 61
    assert r0["shared"] == r1["shared"] == alone  # every rank: the one-process record, exactly
    total = alone["n_bank"] + alone["n_queries"]
    assert r0["alone_embedded"] == total
    # each rank embedded its own share only (ceil/floor halves of bank and queries)
    assert r0["embedded"] == 102 + 31 and r1["embedded"] == 101 + 30
