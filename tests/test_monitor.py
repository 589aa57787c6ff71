"""The kNN monitor of ``disco train --knn-every``: per-epoch figures equal to ``disco eval``'s,
``best.pt`` at the best epoch, no effect on the weights, resume, held-out splits, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from store.datasets import open_dataset
from store.errors import ConfigError
from student_trainer.cli import app
from student_trainer.eval.evaluate import evaluate
from student_trainer.eval.monitor import MonitorData, best_record
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import train
from teacher_service.checkpoint import read_checkpoint

TINY: dict[str, Any] = dict(
    method="mocov2",
    arch="tiny",
    dataset="synthetic:64",
    size=16,
    batch_size=8,
    epochs=2,
    queue_size=16,
    head_hidden=32,
    num_workers=0,
    progress=False,
    checkpoint_every=4,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _knn(out: Path) -> list[dict[str, Any]]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "knn_weighted" in r]


def test_knn_every_1_logs_each_epoch_as_disco_eval_scores_it_and_keeps_the_best(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    args = ["train", "--method", "mocov2", "--arch", "tiny", "--dataset", "digits"]
    args += ["--size", "16", "--batch-size", "64", "--epochs", "2", "--queue-size", "256"]
    args += ["--head-hidden", "32", "--workers", "0", "--threads", "1", "--no-progress"]
    args += ["--knn-every", "1", "--keep-best", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "kNN monitor (weighted 20-NN)" in result.output
    knn = _knn(out)
    assert [r["epoch"] for r in knn] == [0, 1, 2]  # the initial weights, then every epoch
    assert [r["step"] for r in knn] == [0, 22, 44]  # 1437 train images / 64 = 22 steps
    for r in knn:
        assert r["monitor"] == "digits#test" and (r["n_bank"], r["n_queries"]) == (1437, 360)
        assert 0.5 < r["knn_weighted"] <= 1.0 and 0.5 < r["nn1"] <= 1.0  # 10 classes: chance 0.1
        assert r["knn_seconds"] > 0 and r["seconds"] >= 0
    assert (out / "loss_curves.png").stat().st_size > 0
    best = best_record(knn)
    assert best is not None
    saved = read_checkpoint(out / "best.pt")
    assert saved["meta"]["epoch"] == best["epoch"] and saved["meta"]["steps"] == best["step"]
    # disco eval's own path (checkpoint -> EncoderFeatures -> extract_features -> score) gives
    # exactly the monitor's figures for best.pt and for final.pt (the weights after epoch 2)
    records = evaluate(
        [str(out / "best.pt"), str(out / "final.pt")],
        "digits",
        pixels=False,
        probe=None,
        cache_dir=tmp_path / "features",
        progress=False,
    )
    assert records[0]["knn_weighted"] == pytest.approx(best["knn_weighted"], abs=1e-9)
    assert records[1]["knn_weighted"] == pytest.approx(knn[-1]["knn_weighted"], abs=1e-9)
    assert records[1]["nn1"] == pytest.approx(knn[-1]["nn1"], abs=1e-9)


def test_monitor_leaves_the_weights_alone_and_survives_a_resume(tmp_path: Path) -> None:
    plain = train(TrainConfig(out=str(tmp_path / "plain"), **TINY))
    full = train(TrainConfig(out=str(tmp_path / "full"), knn_every=1, keep_best=True, **TINY))
    assert not plain.knn and [r["epoch"] for r in full.knn] == [0, 1, 2]
    a = read_checkpoint(tmp_path / "plain" / "final.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "full" / "final.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the monitor uses no random state

    split = tmp_path / "split"
    train(TrainConfig(out=str(split), knn_every=1, keep_best=True, stop_at_step=8, **TINY))
    assert [r["epoch"] for r in _knn(split)] == [0, 1]
    # resume: the monitor settings may change on resume (here: every epoch stays every epoch)
    resumed = train(TrainConfig(out=str(split), knn_every=1, keep_best=True, resume=True, **TINY))
    drop = ("seconds", "knn_seconds")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in _knn(split)]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in full.knn]
    assert [r["epoch"] for r in resumed.knn] == [0, 1, 2]  # earlier records count for best.pt
    x = read_checkpoint(tmp_path / "full" / "best.pt")
    y = read_checkpoint(split / "best.pt")
    assert x["meta"]["epoch"] == y["meta"]["epoch"]
    assert all(torch.equal(x["state_dict"][k], y["state_dict"][k]) for k in x["state_dict"])
    seconds = [
        r["seconds"] for r in map(json.loads, (split / "log.jsonl").read_text().splitlines())
    ]
    assert seconds == sorted(seconds)  # training time continues across the resume


def test_held_out_splits() -> None:
    digits = open_dataset("digits")
    train_idx, test_idx = digits.split_indices("train"), digits.split_indices("test")
    test = MonitorData.held_out(digits, "test")
    assert np.array_equal(test.split_indices("train"), train_idx)
    assert np.array_equal(test.split_indices("test"), test_idx)
    val = MonitorData.held_out(digits, "val")
    bank, queries = val.split_indices("train"), val.split_indices("test")
    assert len(queries) == round(0.2 * len(train_idx)) and len(bank) + len(queries) == 1437
    assert not set(bank) & set(queries) and set(queries) <= set(train_idx)
    assert not set(queries) & set(test_idx)  # val never touches the test split
    assert np.array_equal(val.load(int(queries[0])), digits.load(int(queries[0])))
    few = MonitorData.held_out(digits, "test", max_queries=100)
    assert len(few.split_indices("test")) == 100 and few.spec == "digits#test[queries 100]"
    small = MonitorData.held_out(digits, "val", max_queries=50, max_bank=200)
    assert len(small.split_indices("train")) == 200 and len(small.split_indices("test")) == 50
    assert set(small.split_indices("train")) <= set(bank) and small.spec.endswith(
        "[bank 200, queries 50]"
    )
    with pytest.raises(ConfigError, match="too small"):
        MonitorData.held_out(open_dataset("synthetic:16"), "val")
    with pytest.raises(ConfigError, match="keep_best needs"):
        TrainConfig(keep_best=True, out="x", **{k: v for k, v in TINY.items() if k != "out"})
    with pytest.raises(ConfigError, match="monitor_split"):
        TrainConfig(monitor_split="train", knn_every=1, out="x", **TINY)


def test_val_monitor_split_in_training(tmp_path: Path) -> None:
    cfg = dict(TINY, epochs=1, dataset="synthetic:128")
    result = train(TrainConfig(out=str(tmp_path), knn_every=1, monitor_split="val", **cfg))
    assert [r["monitor"] for r in result.knn] == ["synthetic:128#val"] * 2
    assert (result.knn[0]["n_bank"], result.knn[0]["n_queries"]) == (82, 20)


DDP_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from student_trainer.train.config import TrainConfig
from student_trainer.train.loop import train
import os
cfg = TrainConfig(method="mocov2", arch="tiny", out=sys.argv[1], dataset="synthetic:64", size=16,
                  batch_size=8, epochs=2, queue_size=16, head_hidden=32, num_workers=0,
                  progress=False, knn_every=1, keep_best=True, device="cpu")
result = train(cfg)
with open(os.path.join(sys.argv[1], "knn%s.json" % os.environ["RANK"]), "w") as fh:
    json.dump([r["knn_weighted"] for r in result.knn], fh)
"""


@pytest.mark.slow
def test_monitor_under_two_process_ddp(tmp_path: Path) -> None:
    script = tmp_path / "ddp_monitor.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [*cmd, str(script), str(out)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "knn0.json").read_text())
    r1 = json.loads((out / "knn1.json").read_text())
    assert len(r0) == 3 and r0 == r1  # rank 0 evaluated, rank 1 received the same figures
    assert [r["knn_weighted"] for r in _knn(out)] == r0  # logged once, by rank 0
    assert read_checkpoint(out / "best.pt")["meta"]["epoch"] == int(np.argmax(r0))
