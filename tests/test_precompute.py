"""Precompute: fills the store, resumes after SIGKILL bitwise-exactly, splits shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from store.embedding_store import EmbeddingStore
from store.errors import ConfigError, StoreMismatchError
from store.views import render_view
from teacher_service.checkpoint import load_encoder, save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder
from teacher_service.precompute import PrecomputeConfig, run_precompute, worker_identity

REPO = Path(__file__).resolve().parents[1]
N, V, SHARD = 40, 3, 8  # 5 shards of 8 rows, 3 views; 4 rows (12 views) per teacher forward


def make_teacher(path: Path, seed: int = 0) -> Path:
    """A tiny small-stem teacher with non-trivial BN statistics, saved in the project format."""
    torch.manual_seed(seed)
    enc = build_encoder(EncoderConfig(arch="tiny", head_hidden=32, head_out=16, small_stem=True))
    enc.train()
    with torch.no_grad():
        for _ in range(3):
            enc(torch.randn(16, 3, 16, 16))
    pre = {"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear",
           "antialias": True, "recipe": "mocov2"}  # fmt: skip
    save_checkpoint(path, enc.eval(), pre)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def config(teacher: Path, store: Path, **kw: Any) -> PrecomputeConfig:
    base: dict[str, Any] = dict(
        teacher=str(teacher), dataset=f"synthetic:{N}", store=str(store), views=V,
        recipe="mocov2", size=16, shard_size=SHARD, batch_size=12, workers=0, device="cpu",
        progress=False,
    )  # fmt: skip
    base.update(kw)
    return PrecomputeConfig(**base)


@pytest.fixture(scope="module")
def reference(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted single-process run (with a DataLoader worker process)."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    report = run_precompute(config(teacher, store, workers=1))
    assert report.shards_computed == N // SHARD and report.shards_skipped == 0
    assert report.views_computed == N * V
    return store


def assert_same_store(a: Path, b: Path) -> None:
    sa, sb = EmbeddingStore.open(str(a)), EmbeddingStore.open(str(b))
    assert sa.num_shards == sb.num_shards
    np.testing.assert_array_equal(sa.written_mask(), sb.written_mask())
    for s in range(sa.num_shards):
        ea, eb = sa.read_shard(s).embeddings, sb.read_shard(s).embeddings
        assert ea.tobytes() == eb.tobytes(), f"shard {s} differs"


def complete_shards(store: Path) -> set[int]:
    """Shards whose written mask is all set; asserts no shard is partly marked written."""
    mask = EmbeddingStore.open(str(store)).written_mask()
    done = set()
    for s in range(N // SHARD):
        m = mask[s * SHARD : (s + 1) * SHARD]
        assert m.all() or not m.any(), f"shard {s} is partly marked written"
        if m.all():
            done.add(s)
    return done


def test_store_filled_and_matches_live_teacher(teacher: Path, reference: Path) -> None:
    store = EmbeddingStore.open(str(reference))
    assert store.written_mask().all()
    attrs = store.teacher
    assert attrs is not None
    loaded = load_encoder(teacher)
    assert attrs["sha256"] == loaded.info["sha256"]
    assert attrs["compute_dtype"] == "float32" and attrs["bn_mode"] == "eval"
    assert attrs["embedding"] == "head" and store.dim == 16
    block = store.read_shard(2)
    norms = np.linalg.norm(block.embeddings, axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    # The stored vector of (row, view) is the live teacher's embedding of the re-rendered view.
    from store.datasets import open_dataset

    ds = open_dataset(f"synthetic:{N}")
    row, view = block.start + 3, 1
    x = render_view(
        ds.load(int(store.manifest.indices[row])), store.params[row, view], store.recipe
    )
    # The teacher normalises the view's uint8 pixels with its own mean/std (0.5 / 0.25 here),
    # not the recipe's.
    from teacher_service.sources import load_teacher, to_pixels

    pixels = to_pixels(x[None], store.recipe.mean, store.recipe.std)
    with torch.inference_mode():
        live = load_teacher(str(teacher)).model(pixels)[0].numpy()
        own = (pixels.float() / 255 - 0.5) / 0.25
        direct = loaded.encoder(own)[0].numpy()
    np.testing.assert_allclose(live, direct, rtol=0, atol=1e-6)
    cached = block.embeddings[3, view]
    assert float(live @ cached / np.linalg.norm(cached)) > 0.99999


CHILD = """
import json, os, signal, sys
import numpy as np
cfg, kill = json.loads(sys.argv[1]), json.loads(sys.argv[2])
from store.embedding_store import EmbeddingStore
from teacher_service.encoders import Encoder
from teacher_service.precompute import PrecomputeConfig, run_precompute
calls = [0]
if kill["at"] == "forward":
    forward = Encoder.forward
    def killing_forward(self, *a, **k):
        calls[0] += 1
        if calls[0] == kill["n"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(self, *a, **k)
    Encoder.forward = killing_forward
elif kill["at"] == "write":
    merge_shard = EmbeddingStore.merge_shard
    def killing_merge(self, s, emb, mask, features=None):
        calls[0] += 1
        if calls[0] == kill["n"]:
            # The crash window: this shard's embeddings are durably written, its mask is not.
            a, b = self.shard_bounds(s)
            self.write_shard(s, emb, features=features, written=self.written_mask()[a:b])
            os.kill(os.getpid(), signal.SIGKILL)
        return merge_shard(self, s, emb, mask, features=features)
    EmbeddingStore.merge_shard = killing_merge
report = run_precompute(PrecomputeConfig(**cfg))
print("REPORT " + json.dumps(report.to_dict()))
"""


def run_child(cfg: PrecomputeConfig, kill: dict[str, Any] | None = None) -> subprocess.Popen:
    args = [sys.executable, "-c", CHILD, json.dumps(cfg.__dict__), json.dumps(kill or {"at": ""})]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def child_report(proc: subprocess.Popen) -> dict[str, Any]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    line = next(x for x in out.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT ") :])


def test_sigkill_twice_then_resume_is_bitwise_equal(
    teacher: Path, reference: Path, tmp_path: Path
) -> None:
    store = tmp_path / "killed.zarr"
    cfg = config(teacher, store)
    # Kill 1: SIGKILL in the middle of shard 2's compute (5th forward; shards 0-1 handed over).
    proc = run_child(cfg, {"at": "forward", "n": 5})
    proc.communicate(timeout=240)
    assert proc.returncode == -9
    done1 = complete_shards(store)
    assert done1 <= {0, 1}
    # Kill 2: resume, SIGKILL inside the 2nd shard write after its data, before its mask.
    proc = run_child(cfg, {"at": "write", "n": 2})
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -9, err[-2000:]
    done2 = complete_shards(store)
    todo = sorted(set(range(5)) - done1)
    assert done2 == done1 | {todo[0]}, (done1, done2)
    # Final resume: computes exactly the unfinished shards, and the store equals the reference.
    report = run_precompute(cfg)
    assert report.shards_skipped == len(done2)
    assert report.computed_shards == sorted(set(range(5)) - done2)
    print(
        f"\nresume counts: after kill 1 {len(done1)}/5 shards complete, after kill 2 "
        f"{len(done2)}/5; final run recomputed {report.shards_computed} shards"
    )
    assert_same_store(store, reference)
    assert run_precompute(cfg).shards_computed == 0


def test_two_workers_equal_one_process(teacher: Path, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "split.zarr"
    # Worker 0 in a child process creates the store; worker 1 (this process) waits for it.
    proc = run_child(config(teacher, store, num_shards=2, shard_index=0))
    mine = run_precompute(config(teacher, store, num_shards=2, shard_index=1))
    theirs = child_report(proc)
    assert (theirs["worker"], theirs["computed_shards"]) == (0, [0, 2, 4])
    assert (mine.worker, mine.computed_shards) == (1, [1, 3])
    assert_same_store(store, reference)


def test_worker_identity_combines_job_array_and_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert worker_identity(num_shards=3, shard_index=2) == (5, 6)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError):
        worker_identity()


def test_existing_store_must_match(teacher: Path, reference: Path, tmp_path: Path) -> None:
    other = make_teacher(tmp_path / "other.pt", seed=1)
    with pytest.raises(StoreMismatchError) as exc:
        run_precompute(config(other, reference))
    assert exc.value.field.startswith("teacher")
    with pytest.raises(StoreMismatchError) as exc:
        run_precompute(config(teacher, reference, views=V + 1))
    assert exc.value.field == "recipe.views"


def test_undecodable_samples_recorded_and_skipped(teacher: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(5):
            rgb = np.full((12 + i, 14, 3), 40 * i, np.uint8)
            rgb[::2, :, 0] = 255
            Image.fromarray(rgb).save(folder / label / f"{i}.png")
    (folder / "a" / "bad.png").write_bytes(b"not an image")
    spec = f"imagefolder:{folder}"
    store = tmp_path / "folder.zarr"
    cfg = config(teacher, store, dataset=spec, shard_size=4, max_shards=0)
    run_precompute(cfg)  # creates the store (manifest marks bad.png invalid), computes nothing
    # A file that breaks after the store was made is skipped at precompute time and recorded.
    keys = list(EmbeddingStore.open(str(store)).manifest.keys)
    broken = next(k for k in keys if k.endswith("3.png"))
    (folder / broken).write_bytes(b"\x89PNG truncated")
    cfg.max_shards = None
    report = run_precompute(cfg)
    assert list(report.errors) == [broken] and report.invalid_rows == 1
    opened = EmbeddingStore.open(str(store))
    mask = opened.written_mask()
    valid = opened.manifest.valid
    assert not valid[keys.index(next(k for k in keys if k.endswith("bad.png")))]
    assert not mask[keys.index(broken)].any()
    assert mask[valid & (np.asarray(keys) != broken)].all()


def test_cli_precompute_and_user_error(teacher: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from teacher_service.cli import precompute_command

    app = typer.Typer()
    app.command()(precompute_command)
    store = tmp_path / "cli.zarr"
    args = ["--teacher", str(teacher), "--dataset", "synthetic:16", "--store", str(store),
            "--views", "2", "--size", "16", "--shard-size", "8", "--workers", "0",
            "--device", "cpu", "--no-progress", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["shards_computed"] == 2
    bad = CliRunner().invoke(app, ["--teacher", str(tmp_path / "missing.pt"), *args[2:]])
    assert bad.exit_code == 1
    assert "checkpoint not found" in bad.output and "Traceback" not in bad.output


def test_reduced_precision_on_cpu_is_a_config_error(teacher: Path, tmp_path: Path) -> None:
    for given in ({"precision": "bf16"}, {"precision": "fp16"}, {"amp": "bf16"}):
        with pytest.raises(ConfigError, match=r"--precision \w+ needs a CUDA device"):
            run_precompute(config(teacher, tmp_path / "x.zarr", **given))
    assert not os.path.exists(tmp_path / "x.zarr")
