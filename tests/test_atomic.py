"""store.atomic: a written file is the old one or the whole new one, never a truncated mix; the
checkpoint, config, feature-cache, ledger and result writers all go through it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from store import atomic
from store.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_replace_and_fsync(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    target = tmp_path / "sub" / "file.json"  # the parent is created
    atomic_write_text(target, "first ✓")
    assert target.read_text(encoding="utf-8") == "first ✓"
    assert len(synced) == 2  # the file's data, then the directory entry
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second" and _leftovers(target.parent) == []


def test_error_inside_the_block_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="boom"), atomic_write(tmp_path / "new.bin") as fh:
        raise RuntimeError("boom")
    assert not (tmp_path / "new.bin").exists()


def test_a_killed_writer_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """The process dies (no cleanup, no exception handling) in the middle of the write."""
    target = tmp_path / "results.json"
    target.write_text('{"old": true}')
    script = textwrap.dedent(
        f"""
        import os
        from store.atomic import atomic_write
        with atomic_write({str(target)!r}) as fh:
            fh.write(b'{{"new": ')
            fh.flush()
            os._exit(3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert proc.returncode == 3
    assert target.read_text() == '{"old": true}'


def test_project_writers_use_the_helper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Checkpoints/training state and TrainConfig.save write through ``atomic_write``."""
    from student_trainer.train.config import TrainConfig
    from teacher_service.weights import atomic_torch_save

    calls: list[str] = []
    real = atomic.atomic_write

    def spy(path: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(atomic, "atomic_write", spy)
    import teacher_service.weights as weights

    monkeypatch.setattr(weights, "atomic_write", spy)
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "last.pt")
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["w"], torch.ones(2))
    TrainConfig(method="mocov2", arch="tiny", out="x", dataset="digits").save(tmp_path / "c.json")
    assert calls == ["last.pt", "c.json"]
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled: torch.save fails
        atomic_torch_save({"f": lambda: 0}, tmp_path / "last.pt")
    assert torch.load(tmp_path / "last.pt", weights_only=True)["w"].sum() == 2
    assert _leftovers(tmp_path) == []
