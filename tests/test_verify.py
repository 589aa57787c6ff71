"""`disco store verify`: passes on a faithful store, fails on a tampered shard, control works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from store.embedding_store import EmbeddingStore
from store.errors import StoreMismatchError
from teacher_service.checkpoint import save_checkpoint
from teacher_service.cli import verify_command
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.precompute import PrecomputeConfig, run_precompute
from teacher_service.verify import sample_slots, verify_store

PRE = {"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}


def _teacher(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    enc = build_encoder(EncoderConfig(arch="tiny", head_hidden=32, head_out=16, small_stem=True))
    enc.train()
    with torch.no_grad():
        for _ in range(3):
            enc(torch.randn(16, 3, 16, 16))
    save_checkpoint(path, enc.eval(), PRE)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("verify")
    teacher = _teacher(tmp / "t.pt", 0)
    store = tmp / "s.zarr"
    cfg = PrecomputeConfig(
        teacher=str(teacher), dataset="synthetic:32", store=str(store), views=2, size=16,
        shard_size=8, batch_size=16, workers=0, device="cpu", progress=False,
    )  # fmt: skip
    run_precompute(cfg)
    return teacher, store


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(verify_command)
    return app


def test_verify_passes_on_correct_store(built: tuple[Path, Path]) -> None:
    teacher, store = built
    result = verify_store(str(store), str(teacher), samples=24, device="cpu")
    assert result.passed and result.control_ok
    assert result.samples == 24 and result.cos_min >= 0.999
    assert result.control_median < 0.99
    out = CliRunner().invoke(_cli(), [str(store), "--teacher", str(teacher), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "PASS" in out.output


def test_control_of_a_one_row_sample_is_another_rows_view(built: tuple[Path, Path]) -> None:
    """One sampled slot (so one row): the control still embeds a view of a different row (it
    used to fall back to a constant -1 that always passed)."""
    teacher, store = built
    result = verify_store(str(store), str(teacher), samples=1, device="cpu")
    assert result.samples == 1 and result.cos_min >= 0.999
    assert -1.0 < result.control_median < 0.99 and result.control_ok and result.passed


def test_verify_fails_when_no_other_row_can_be_the_control(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    """A store whose only written views are of one row cannot tell a wrong view: verify fails
    (control not ok) even though the cached vectors are right."""
    teacher, full = built
    store = tmp_path / "one.zarr"
    cfg = PrecomputeConfig(
        teacher=str(teacher), dataset="synthetic:32", store=str(store), views=2, size=16,
        shard_size=8, batch_size=16, workers=0, device="cpu", progress=False, max_shards=0,
    )  # fmt: skip
    run_precompute(cfg)
    source = EmbeddingStore.open(str(full)).read_shard(0)
    one = EmbeddingStore.open(str(store), mode="r+")
    computed = np.zeros_like(source.written)
    computed[0] = True
    one.merge_shard(0, source.embeddings, computed)
    result = verify_store(str(store), str(teacher), samples=8, device="cpu")
    assert result.samples == 2 and result.cos_min >= 0.999 and not result.failures
    assert not result.control_ok and not result.passed
    assert "NOT below threshold" in result.summary()


def test_verify_fails_when_one_shard_is_tampered(built: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, original = built
    store = tmp_path / "tampered.zarr"
    import shutil

    shutil.copytree(original, store)
    opened = EmbeddingStore.open(str(store), mode="r+")
    block = opened.read_shard(2)
    rng = np.random.default_rng(0)
    fake = rng.standard_normal(block.embeddings.shape).astype(np.float32)
    fake /= np.linalg.norm(fake, axis=-1, keepdims=True)
    opened.write_shard(2, fake, written=block.written)
    result = verify_store(str(store), str(teacher), samples=8, device="cpu")
    assert not result.passed
    assert result.failures and {f["shard"] for f in result.failures} == {2}
    out = CliRunner().invoke(_cli(), [str(store), "--teacher", str(teacher), "--samples", "8"])
    assert out.exit_code == 1 and "FAIL" in out.output


def test_verify_refuses_other_teacher(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = built
    other = _teacher(tmp_path / "other.pt", 1)
    with pytest.raises(StoreMismatchError) as exc:
        verify_store(str(store), str(other), device="cpu")
    assert exc.value.field == "teacher.sha256"
    out = CliRunner().invoke(_cli(), [str(store), "--teacher", str(other)])
    assert out.exit_code == 1 and "teacher.sha256" in out.output


def test_verify_refuses_render_drift_until_accepted(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    """An edited render fingerprint is refused by name (CLI: one line, exit 1); with
    --accept-render-drift the check runs, passes, and records this install's fingerprint."""
    import shutil

    teacher, src = built
    store = tmp_path / "drift.zarr"
    shutil.copytree(src, store)
    opened = EmbeddingStore.open(str(store), mode="r+")
    opened.group.attrs.update({"render": {**opened.attrs["render"], "fingerprint": "e" * 64}})
    with pytest.raises(StoreMismatchError, match=r"render\.fingerprint"):
        verify_store(str(store), str(teacher), samples=4, device="cpu")
    args = [str(store), "--teacher", str(teacher), "--device", "cpu", "--samples", "8"]
    out = CliRunner().invoke(_cli(), args)
    assert out.exit_code == 1 and "render.fingerprint" in out.output
    assert "--accept-render-drift" in out.output
    out = CliRunner().invoke(_cli(), [*args, "--accept-render-drift"])
    assert out.exit_code == 0, out.output
    assert "PASS" in out.output and "now accepted" in out.output
    assert EmbeddingStore.open(str(store)).check_render() == "accepted"
    result = verify_store(str(store), str(teacher), samples=4, device="cpu")
    assert result.passed and result.render == "accepted" and not result.render_recorded


def test_sample_slots_cover_every_shard_first() -> None:
    written = np.ones((40, 3), bool)
    written[8:16] = False  # shard 1 empty
    slots = sample_slots(written, shard_size=8, samples=4, seed=0)
    assert sorted(set((slots[:, 0] // 8).tolist())) == [0, 2, 3, 4]
    assert written[slots[:, 0], slots[:, 1]].all()
    many = sample_slots(written, shard_size=8, samples=1000, seed=0)
    assert len(many) == written.sum() and len({tuple(x) for x in many.tolist()}) == len(many)
