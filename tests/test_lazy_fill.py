"""Lazy fill against a real ``disco serve`` (uvicorn subprocess on 127.0.0.1).

A store built by ``disco precompute`` is the reference. A copy with about half of its slots
unmarked, and a store with no teacher attached at all (same manifest, recipe and seed, so the same
view plan), are trained from with ``teacher_url``: the (i, v1, v2) sequence equals the full-store
run's, every target is the full store's within fp16 rounding, and the slots end up written. Two
concurrent CLI trainers leave a store that ``disco store check`` and ``verify`` pass; resume
works; an unreachable service stops ``--missing error`` with one line, ``skip`` drops only the
uncached samples, ``wait`` waits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from store.embedding_store import EmbeddingStore
from store.errors import ConfigError
from student_trainer.cli import app as cli_app
from student_trainer.train.config import TrainConfig
from student_trainer.train.lazyfill import FetchCancelled, LazyFillError, TeacherLink
from student_trainer.train.loop import train
from teacher_service.client import ServiceBusyError, ServiceUnavailableError
from teacher_service.precompute import PrecomputeConfig, run_precompute
from tests.test_precompute import make_teacher
from tests.test_service_e2e import free_port, start_server, stop_server

N, V, SHARD, DIM = 40, 3, 8, 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("lazy_fill")
    teacher = make_teacher(root / "teacher.pt")
    stores = root / "stores"
    stores.mkdir()
    # the service starts (imports torch, loads the teacher) while the reference store is built
    args = ["--teacher", str(teacher), "--store-root", str(stores), "--device", "cpu",
            "--threads", "1", "--max-wait-ms", "2", "--log-level", "warning"]  # fmt: skip
    server: dict[str, Any] = {}

    def serve() -> None:
        try:
            server["proc"], server["url"] = start_server(args, root / "server.log", timeout=540)
        except RuntimeError as exc:
            server["error"] = exc

    starter = threading.Thread(target=serve)
    starter.start()
    full = root / "full"
    run_precompute(
        PrecomputeConfig(
            teacher=str(teacher),
            dataset=f"synthetic:{N}",
            store=str(full),
            views=V,
            recipe="mocov2",
            size=16,
            shard_size=SHARD,
            batch_size=24,
            workers=0,
            device="cpu",
            progress=False,
        )
    )
    full_store = EmbeddingStore.open(str(full))
    # "half": shards 0, 2, 4 unwritten; in shards 1 and 3 view 2 unwritten (data zeroed too)
    half = stores / "half"
    shutil.copytree(full, half)
    hs = EmbeddingStore.open(str(half), mode="r+")
    for s in range(hs.num_shards):
        a, b = hs.shard_bounds(s)
        block = hs.read_shard(s)
        written = np.zeros((b - a, V), bool) if s % 2 == 0 else block.written.copy()
        written[:, 2] = False
        hs.write_shard(s, np.where(written[..., None], block.embeddings, 0.0), written=written)
    # "bare": the same plan, no teacher attached yet (the service attaches at its first write)
    for name in ("bare", "bare2", "resume"):
        EmbeddingStore.create(
            str(stores / name), manifest=full_store.manifest, recipe=full_store.recipe,
            seed=full_store.seed, views=V, shard_size=SHARD,
        )  # fmt: skip
    starter.join()
    if "error" in server:
        raise server["error"]
    try:
        yield {
            "root": root,
            "teacher": teacher,
            "full": full,
            "stores": stores,
            "url": server["url"],
        }
    finally:
        stop_server(server["proc"])


def _cfg(out: Path, store: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        method="disco", arch="tiny", out=str(out), store=str(store), batch_size=8, epochs=2,
        queue_size=16, head_hidden=32, num_workers=0, progress=False, seed=5, stop_at_step=6,
    )  # fmt: skip
    return TrainConfig(**(base | kw))


class Recorder:
    """Step hook recording each step's (row, v1, v2) and both targets."""

    def __init__(self) -> None:
        self.slots: list[list[tuple[int, int, int]]] = []
        self.targets: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, step: int, batch: Any, output: Any) -> None:
        rows, views = batch.rows.tolist(), batch.views.tolist()
        self.slots.append([(r, v[0], v[1]) for r, v in zip(rows, views, strict=True)])
        self.targets.append((batch.target1.numpy().copy(), batch.target2.numpy().copy()))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _log(out: Path) -> list[dict[str, Any]]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "lr" in r]


@pytest.fixture(scope="module")
def reference(env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Recorder:
    rec = Recorder()
    train(_cfg(tmp_path_factory.mktemp("ref_run"), env["full"]), step_hook=rec)
    return rec


@pytest.mark.parametrize("store", ["half", "bare"])
def test_lazy_fill_sees_the_full_store_sequence_and_targets(
    env: dict[str, Any], reference: Recorder, tmp_path: Path, store: str
) -> None:
    path = env["stores"] / store
    before = EmbeddingStore.open(str(path))
    unwritten = np.ones((N, V), bool) if before.teacher is None else ~before.written_mask()
    rec = Recorder()
    result = train(_cfg(tmp_path, path, teacher_url=env["url"]), step_hook=rec)
    assert result.steps == 6
    assert rec.slots == reference.slots  # the same (i, v1, v2) at every step
    for (a1, a2), (b1, b2) in zip(rec.targets, reference.targets, strict=True):
        assert _cos(a1, b1).min() >= 0.9999 and _cos(a2, b2).min() >= 0.9999
    # stored targets are taken as they are, and nothing is fetched twice (the epoch-1 steps
    # re-read their shards and find what epoch 0 filled; the queue prefill fetches some too)
    used = {(r, v) for step in rec.slots for r, v1, v2 in step for v in (v1, v2)}
    fetched = _log(tmp_path)[-1]["fill_fetched"]
    assert sum(unwritten[r, v] for r, v in used) <= fetched <= unwritten.sum()
    assert 0.0 <= _log(tmp_path)[-1]["fill_cached"] <= 1.0
    # every slot the run trained on is now written, with the full store's target
    filled, full = EmbeddingStore.open(str(path)), EmbeddingStore.open(str(env["full"]))
    mask = filled.written_mask()
    assert all(mask[r, v] for r, v in used)
    for r, v in used:
        got = filled.read_shard(r // SHARD).embeddings[r % SHARD, v]
        want = full.read_shard(r // SHARD).embeddings[r % SHARD, v]
        assert _cos(got, want) >= 0.9999
    # a store filled by a mix of precompute and lazy fill (or lazy fill alone) checks clean
    check = CliRunner().invoke(cli_app, ["store", "check", str(path)])
    assert check.exit_code == 0 and "OK" in check.output, check.output


def test_resume_of_a_lazy_run_continues_the_same_sequence(
    env: dict[str, Any], reference: Recorder, tmp_path: Path
) -> None:
    path = env["stores"] / "resume"
    first, second = Recorder(), Recorder()
    train(_cfg(tmp_path, path, teacher_url=env["url"], stop_at_step=3), step_hook=first)
    # without the service the plan would use only the written views: refused while incomplete
    with pytest.raises(ConfigError, match=r"cannot resume.*with --teacher-url"):
        train(_cfg(tmp_path, path, resume=True))
    train(_cfg(tmp_path, path, teacher_url=env["url"], resume=True), step_hook=second)
    assert first.slots + second.slots == reference.slots
    assert [r["step"] for r in _log(tmp_path)] == list(range(1, 7))


def test_two_concurrent_cli_trainers_leave_a_correct_store(
    env: dict[str, Any], tmp_path: Path
) -> None:
    path = env["stores"] / "bare2"
    procs = []
    for seed in (1, 2):  # one trainer renders in a DataLoader worker (forked with the fetcher)
        args = [sys.executable, "-m", "student_trainer.cli", "train", "--method", "disco",
                "--arch", "tiny", "--out", str(tmp_path / f"run{seed}"), "--store", str(path),
                "--teacher-url", env["url"], "--batch-size", "8", "--epochs", "1",
                "--queue-size", "16", "--head-hidden", "32", "--workers", str(seed - 1),
                "--no-progress", "--seed", str(seed), "--threads", "1", "--json"]  # fmt: skip
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        out, err = proc.communicate(timeout=500)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert json.loads(out.decode().splitlines()[-1])["steps"] == N // 8
    store = EmbeddingStore.open(str(path))
    assert store.teacher is not None and store.written_mask().sum() > N  # both runs' pairs
    runner = CliRunner()
    check = runner.invoke(cli_app, ["store", "check", str(path)])
    assert check.exit_code == 0 and "OK" in check.output, check.output
    verify = runner.invoke(
        cli_app,
        ["store", "verify", str(path), "--teacher", str(env["teacher"]), "--device", "cpu",
         "--samples", "200"],
    )  # fmt: skip
    assert verify.exit_code == 0, verify.output


def test_unreachable_service_with_missing_error_is_one_line(
    env: dict[str, Any], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "student_trainer.cli", "train", "--method", "disco", "--arch",
            "tiny", "--out", str(tmp_path), "--store", str(env["stores"] / "half"),
            "--teacher-url", url, "--no-progress", "--workers", "0"]  # fmt: skip
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=400, env={**os.environ, "DISCO_TOKEN": "t0k"}
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "unreachable" in lines[0], proc.stderr
    assert "t0k" not in proc.stderr + proc.stdout


def test_missing_skip_drops_only_uncached_samples(env: dict[str, Any], tmp_path: Path) -> None:
    """The "half" store is partly filled by now; whatever is unwritten is dropped, the rest
    trains with its stored targets."""
    path = env["stores"] / "skipped"
    shutil.copytree(env["full"], path)
    st = EmbeddingStore.open(str(path), mode="r+")
    block = st.read_shard(0)
    written = block.written.copy()
    written[::2, :] = False  # every other row of shard 0 has no target
    st.write_shard(0, block.embeddings, written=written)
    rec = Recorder()
    url = f"http://127.0.0.1:{free_port()}"
    train(_cfg(tmp_path, path, teacher_url=url, missing="skip", epochs=1), step_hook=rec)
    rows = [r for step in rec.slots for r, _, _ in step]
    dropped = list(range(0, SHARD, 2))
    assert not set(rows) & set(dropped)
    assert len(rows) == len(set(rows)) == N - len(dropped)  # one epoch, less the dropped rows
    log = _log(tmp_path)
    assert min(r["batch"] for r in log) < 8 and log[-1]["fill_fetched"] == 0
    assert log[-1]["fill_dropped"] >= len(dropped)  # the queue prefill drops some too


class FlakyClient:
    """A client whose first ``fail`` calls get no answer."""

    def __init__(self, fail: int, busy: bool = False) -> None:
        self.fail, self.busy, self.calls = fail, busy, 0

    def model(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.fail:
            if self.busy:
                raise ServiceBusyError(429, "queue full")
            raise ServiceUnavailableError(0, "no answer from http://x after 4 tries")
        return {"embed_dim": DIM, "sha256": "ab"}

    def store_info(self, name: str) -> dict[str, Any]:
        return {"attrs": {"dataset": {"n": 1}, "recipe": {"name": "r"}}}


def test_link_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("student_trainer.train.lazyfill.WAIT_POLL_S", 0.01)
    attrs = {"dataset": {"n": 1}, "recipe": {"name": "r"}, "teacher": None}
    said: list[str] = []

    def link(missing: str, client: FlakyClient) -> TeacherLink:
        return TeacherLink("http://x", "s", attrs, missing, client=client, status=said.append)  # type: ignore[arg-type]

    with pytest.raises(LazyFillError, match=r"teacher service http://x is unreachable"):
        link("error", FlakyClient(1)).model()
    assert link("error", FlakyClient(2, busy=True)).model() == {"embed_dim": DIM, "sha256": "ab"}
    said.clear()
    waiting = link("wait", FlakyClient(3))
    assert waiting.model() is not None and waiting.status == ""
    assert said[0].startswith("waiting for teacher service http://x") and "answers" in said[-1]
    flaky = FlakyClient(1)
    skipping = link("skip", flaky)
    assert skipping.model() is None and skipping.model() is None  # not retried at once
    assert flaky.calls == 1
    stop = threading.Event()
    stop.set()
    with pytest.raises(FetchCancelled):  # a consumer that left ends the wait
        link("wait", FlakyClient(100)).call(lambda: None, stop)
    bad = {**attrs, "recipe": {"name": "other"}}
    with pytest.raises(ConfigError, match="recipe"):
        TeacherLink("http://x", "s", bad, "error", client=FlakyClient(0)).model()  # type: ignore[arg-type]


def test_lazy_fill_of_one_named_teacher_leaves_the_other(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """A store whose root teacher is another model: `--targets b --teacher-url` fills teacher b
    through the service (request field target) and never touches the root teacher's bytes."""
    full = EmbeddingStore.open(str(env["full"]))
    path = env["stores"] / "two"
    other = EmbeddingStore.create(
        str(path), manifest=full.manifest, recipe=full.recipe, seed=full.seed, views=V,
        shard_size=SHARD, target="a",
    )  # fmt: skip
    other.attach_teacher({"arch": "tiny", "sha256": "0" * 64}, dim=16)
    other.write_shard(0, np.full((SHARD, V, 16), 0.25, np.float32))
    root_files = {p: p.read_bytes() for p in (path / "embeddings").rglob("*") if p.is_file()}
    rec = Recorder()
    cfg = _cfg(tmp_path, path, teacher_url=env["url"], targets="b", stop_at_step=2)
    assert train(cfg, step_hook=rec).steps == 2
    b = EmbeddingStore.open(str(path), target="b")
    used = {(r, v) for step in rec.slots for r, v1, v2 in step for v in (v1, v2)}
    missing = sorted((r, v) for r, v in used if not b.written_mask()[r, v])
    assert used and not missing, (missing, len(used), _log(tmp_path)[-1])
    for r, v in used:
        got = b.read_shard(r // SHARD).embeddings[r % SHARD, v]
        want = full.read_shard(r // SHARD).embeddings[r % SHARD, v]
        assert _cos(got, want) >= 0.9999
    after = {p: p.read_bytes() for p in (path / "embeddings").rglob("*") if p.is_file()}
    assert after == root_files
    assert EmbeddingStore.open(str(path)).teachers == ["a", "b"]
