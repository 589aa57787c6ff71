"""Several teachers in one store (#28): each added, resumed, read, appended and inspected on its
own; the first teachers' bytes never change when another is added; old stores read unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from store.cli import app as store_app
from store.embedding_store import TARGETS_SCHEMA, EmbeddingStore
from store.errors import ConfigError, StoreError, StoreMismatchError
from store.inspection import check_store, store_info
from store.targets import parse_targets
from teacher_service.precompute import run_precompute
from tests.test_precompute import CHILD, SHARD, N, V, config, make_teacher, run_child

SMALL = "synthetic:24"  # 3 shards: fast enough for several precompute runs per test


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("teachers")
    return [make_teacher(root / f"t{k}.pt", seed=k) for k in range(3)]


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (relative path -> hex)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def target_files(store: Path, name: str | None) -> dict[str, str]:
    """Digests of one teacher's array files (root teacher: name None)."""
    digests = tree_digest(store)
    if name is None:
        keep = ("embeddings/", "written/")
        return {k: v for k, v in digests.items() if k.startswith(keep)}
    return {k: v for k, v in digests.items() if k.startswith(f"targets/{name}/")}


def test_third_teacher_leaves_first_two_byte_identical(
    teachers: list[Path], tmp_path: Path
) -> None:
    store = tmp_path / "s.zarr"
    run_precompute(config(teachers[0], store, dataset=SMALL))  # no --as: the root teacher
    run_precompute(config(teachers[1], store, target="b", dataset=SMALL))
    before_root, before_b = target_files(store, None), target_files(store, "b")
    assert before_root and before_b
    run_precompute(config(teachers[2], store, target="c", dataset=SMALL))
    assert target_files(store, None) == before_root
    assert target_files(store, "b") == before_b
    opened = EmbeddingStore.open(str(store))
    assert opened.teachers == ["default", "b", "c"]
    assert opened.schema == TARGETS_SCHEMA
    # Each teacher's targets are its own: the same views, different embeddings.
    sa, sc = opened.for_target("default"), opened.for_target("c")
    assert sa.written_mask().all() and sc.written_mask().all()
    ea, ec = sa.read_shard(1).embeddings, sc.read_shard(1).embeddings
    np.testing.assert_allclose(np.linalg.norm(ec, axis=-1), 1.0, atol=2e-3)
    assert float(np.abs(ea - ec).max()) > 0.1
    np.testing.assert_array_equal(sa.read_shard(1).params, sc.read_shard(1).params)
    # Resuming one teacher computes nothing and names it in the identity check.
    again = run_precompute(config(teachers[2], store, target="c", dataset=SMALL))
    assert again.shards_computed == 0
    with pytest.raises(StoreMismatchError, match=r"teacher\.(name|sha256)"):
        run_precompute(config(teachers[0], store, target="c", dataset=SMALL))


def test_ambiguous_and_unknown_teacher_names(teachers: list[Path], tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    run_precompute(config(teachers[0], store, target="a", max_shards=1))
    run_precompute(config(teachers[1], store, target="b", max_shards=1))
    opened = EmbeddingStore.open(str(store))
    assert opened.teachers == ["a", "b"] and opened.target is None
    with pytest.raises(StoreError, match=r"several teachers \(a, b\)"):
        opened.read_shard(0)
    with pytest.raises(StoreError, match=r"no teacher 'zz' \(teachers: a, b\)"):
        EmbeddingStore.open(str(store), target="zz")
    with pytest.raises(ConfigError, match="not valid"):
        EmbeddingStore.open(str(store), target="../x")
    one = EmbeddingStore.open(str(store), target="b")
    assert (
        one.attrs["teacher"]["sha256"]
        != EmbeddingStore.open(str(store), target="a").attrs["teacher"]["sha256"]
    )
    # The store's first teacher lives at the root and is named by `--as`.
    assert "embeddings" in opened.group and "targets/b/embeddings" in opened.group


def test_each_teacher_resumes_after_sigkill(teachers: list[Path], tmp_path: Path) -> None:
    store = tmp_path / "k.zarr"
    ref = tmp_path / "ref.zarr"
    run_precompute(config(teachers[0], store, dataset=SMALL))
    run_precompute(config(teachers[1], ref, dataset=SMALL))
    root_before = target_files(store, None)
    cfg = config(teachers[1], store, target="b", dataset=SMALL)
    # SIGKILL inside the 2nd shard write, after its data and before its mask
    proc = run_child(cfg, {"at": "write", "n": 2})
    proc.communicate(timeout=240)
    assert proc.returncode == -9
    b = EmbeddingStore.open(str(store), target="b")
    done = b.written_mask().reshape(-1, SHARD, V).all(axis=(1, 2))
    assert 0 < done.sum() < 24 // SHARD, done
    assert target_files(store, None) == root_before  # the other teacher is untouched
    report = run_precompute(cfg)
    assert report.shards_skipped == int(done.sum())
    b = EmbeddingStore.open(str(store), target="b")
    r = EmbeddingStore.open(str(ref))
    for s in range(b.num_shards):
        assert b.read_shard(s).embeddings.tobytes() == r.read_shard(s).embeddings.tobytes()
    assert target_files(store, None) == root_before
    assert CHILD  # the same child script as the single-teacher kill test


def test_old_store_converts_in_place_and_appends_every_teacher(
    teachers: list[Path], tmp_path: Path
) -> None:
    store = tmp_path / "old.zarr"
    run_precompute(config(teachers[0], store, dataset="synthetic:24"))
    old = EmbeddingStore.open(str(store))
    assert old.teachers == ["default"] and old.target == "default"
    root_before = target_files(store, None)
    runner = CliRunner()
    res = runner.invoke(store_app, ["convert", str(store), "--name", "moco"])
    assert res.exit_code == 0, res.output
    assert "teachers moco" in res.output
    assert target_files(store, None) == root_before
    conv = EmbeddingStore.open(str(store), target="moco")
    assert conv.written_mask().all() and conv.schema == TARGETS_SCHEMA
    run_precompute(config(teachers[1], store, dataset="synthetic:24", target="b"))
    # Appending grows every teacher's arrays; the new rows are unwritten for both.
    from store.append import append_rows

    append_rows(str(store), f"synthetic:{N}", progress=False)
    grown = EmbeddingStore.open(str(store))
    for name in ("moco", "b"):
        mask = grown.for_target(name).written_mask()
        assert mask.shape == (N, V)
        assert mask[: 24 - 0].sum() > 0 and not mask[-1].any()
    # Each teacher's new rows resume on their own.
    run_precompute(config(teachers[1], store, dataset=f"synthetic:{N}", target="b"))
    assert EmbeddingStore.open(str(store), target="b").written_mask().all()
    assert not EmbeddingStore.open(str(store), target="moco").written_mask().all()


def test_info_and_check_list_teachers(teachers: list[Path], tmp_path: Path) -> None:
    store = tmp_path / "i.zarr"
    run_precompute(config(teachers[0], store, target="a"))
    run_precompute(config(teachers[1], store, target="b", max_shards=2))
    info = store_info(str(store))
    by_name = {t["name"]: t for t in info["teachers"]}
    assert list(by_name) == ["a", "b"]
    assert by_name["a"]["complete"] and by_name["a"]["written_fraction"] == 1.0
    assert not by_name["b"]["complete"]
    assert by_name["b"]["written_fraction"] == pytest.approx(2 / (N // SHARD))
    assert by_name["a"]["bytes_per_view"] == 16 * 2
    assert info["dim"] is None  # several teachers, none named
    assert store_info(str(store), "b")["dim"] == 16
    report = check_store(str(store), check_dataset=False)
    assert report.ok and report.total_slots == 2 * N * V
    assert report.written_slots == N * V + 2 * SHARD * V
    assert any(n.startswith("b: 3 shards not fully written") for n in report.notes)
    res = CliRunner().invoke(store_app, ["info", str(store)])
    assert res.exit_code == 0, res.output
    assert "teacher a" in res.output and "teacher b" in res.output
    res = CliRunner().invoke(store_app, ["info", str(store), "--json", "--target", "zz"])
    assert (res.exit_code == 1 and res.exception is None) or isinstance(res.exception, SystemExit)
    assert "no teacher 'zz' (teachers: a, b)" in res.output


def test_parse_targets() -> None:
    assert parse_targets("a:2, b") == [("a", 2.0), ("b", 1.0)]
    for bad in ("", "a:0", "a:x", "a,a", "a:-1", "a:inf"):
        with pytest.raises(ConfigError):
            parse_targets(bad)
