"""Dataset specs beyond ImageFolder (``hfds:``, ``parquet:``, ``wds:``, ``py:``) on data the test
writes itself: same bytes, labels and views as an ImageFolder of the same images, usable in fresh
processes, and the whole user path through the CLI (store create -> precompute -> verify -> train
one epoch -> eval with --bank/--queries)."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_formats import write_formats
from typer.testing import CliRunner

from store.datasets import ImageDataset, open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import DatasetError, DecodeError
from store.eval_data import open_bank_queries
from store.manifest import build_manifest
from store.views import get_recipe, render_view
from student_trainer.cli import app

READERS = ["hfds", "parquet", "wds", "py"]
N = 24
TEACHER = Path(__file__).resolve().parents[1] / "student_trainer/assets/demo_teacher.pt"
runner = CliRunner()


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Every format of one 24-image set; the py: module importable here and in child processes."""
    root = tmp_path_factory.mktemp("formats")
    specs = write_formats(root, N)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISCO_INDEX_CACHE", str(root / "index-cache"))
        mp.setenv("DISCO_FEATURE_CACHE", str(root / "feature-cache"))
        mp.setenv(
            "PYTHONPATH", os.pathsep.join([str(root / "py"), os.environ.get("PYTHONPATH", "")])
        )
        mp.syspath_prepend(str(root / "py"))
        yield specs


def _classes(name: str, reference: ImageDataset) -> list[str]:
    # WebDataset .cls members hold class numbers only: their names are the numbers.
    return [str(c) for c in range(len(reference.classes))] if name == "wds" else reference.classes


@pytest.mark.parametrize("name", READERS)
def test_same_bytes_labels_and_classes_as_imagefolder(formats: dict[str, str], name: str) -> None:
    ref = open_dataset(formats["imagefolder"])
    ds = open_dataset(formats[name])
    assert ds.spec == formats[name] and len(ds) == len(ref) == N
    assert np.array_equal(ds.labels, ref.labels) and ds.classes == _classes(name, ref)
    assert len(set(ds.keys)) == N
    for i in range(N):
        image, digest = ds.load_with_hash(i)
        ref_image, ref_digest = ref.load_with_hash(i)
        assert digest == ref_digest == ds.sha256(i)  # sha256 of the encoded bytes
        assert np.array_equal(image, ref_image)


@pytest.mark.parametrize("name", READERS)
def test_views_replay_exactly_as_from_the_imagefolder(
    formats: dict[str, str], name: str, tmp_path: Path
) -> None:
    """A store made from each spec plans the ImageFolder store's views; they render the same."""
    recipe = get_recipe("mocov2", 16)
    stores = {}
    for kind in ("imagefolder", name):
        ds = open_dataset(formats[kind])
        stores[kind] = (
            ds,
            EmbeddingStore.create(
                str(tmp_path / f"{kind}.zarr"),
                manifest=build_manifest(ds, "all", progress=False),
                recipe=recipe,
                seed=3,
                views=2,
                shard_size=8,
            ),
        )
    (ref, ref_store), (ds, store) = stores["imagefolder"], stores[name]
    for field in ("sha256", "heights", "widths", "valid", "indices", "labels"):
        assert np.array_equal(getattr(ref_store.manifest, field), getattr(store.manifest, field))
    params, ref_params = store.params, ref_store.params
    assert np.array_equal(params, ref_params)
    for row in range(N):
        i, j = int(store.manifest.indices[row]), int(ref_store.manifest.indices[row])
        for v in range(2):
            view = render_view(ds.load(i), params[row, v], recipe)
            assert torch.equal(view, render_view(ref.load(j), ref_params[row, v], recipe))


def _hashes(args: tuple[bytes, list[int]]) -> list[str]:
    dataset = pickle.loads(args[0])
    return [dataset.sha256(i) for i in args[1]]


def test_readers_rebuild_in_fresh_processes(formats: dict[str, str]) -> None:
    """Pickled readers (as DataLoader workers, ranks and the service get them) read the same bytes
    in a spawned interpreter, which has none of this process's open files or imported modules."""
    jobs, expected = [], []
    for name in READERS:
        ds = open_dataset(formats[name])
        rows = [0, 7, N - 1]
        jobs.append((pickle.dumps(ds), rows))
        expected.append([ds.sha256(i) for i in rows])
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_hashes, jobs) == expected


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", READERS)
def test_cli_create_precompute_verify_train_eval(
    formats: dict[str, str], name: str, tmp_path: Path
) -> None:
    spec, store = formats[name], str(tmp_path / "store.zarr")
    out = _ok(["store", "create", store, "--dataset", spec, "--split", "all", "--size", "16",
               "--views", "2", "--shard-size", "8"])  # fmt: skip
    assert f"N={N} V=2" in out and "(0 undecodable)" in out
    _ok(["precompute", "--teacher", str(TEACHER), "--dataset", spec, "--store", store,
         "--views", "2", "--workers", "0", "--device", "cpu", "--no-progress"])  # fmt: skip
    out = _ok(["store", "verify", store, "--teacher", str(TEACHER), "--samples", "6",
               "--device", "cpu"])  # fmt: skip
    assert "PASS" in out
    _ok(["store", "check", store])
    run = tmp_path / "run"
    # One DataLoader worker: the dataset travels pickled and reopens there.
    _ok(["train", "--method", "disco", "--store", store, "--arch", "tiny", "--epochs", "1",
         "--batch-size", "8", "--queue-size", "16", "--head-hidden", "32", "--workers", "1",
         "--threads", "1", "--no-progress", "--out", str(run)])  # fmt: skip
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(r.get("epoch") == 1 or r.get("step") for r in log)
    out = _ok(["eval", str(run / "deployed.pt"), "--bank", spec, "--queries", spec, "--k", "3",
               "--no-probe", "--no-figures", "--out", str(tmp_path / "eval")])  # fmt: skip
    records = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert records[0]["n_bank"] == int(0.8 * N) and records[0]["n_queries"] == N - int(0.8 * N)
    assert 0.0 <= records[0]["knn_weighted"] <= 1.0


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("?colour=red", "unknown option 'colour'"),
        ("?image=nothere", "no image column 'nothere'"),
    ],
)
def test_bad_table_options_are_one_line_errors(
    formats: dict[str, str], suffix: str, message: str, tmp_path: Path
) -> None:
    spec = formats["hfds"] + suffix
    result = runner.invoke(app, ["store", "create", str(tmp_path / "x.zarr"), "--dataset", spec])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.zarr").exists()


def test_datasetdict_and_protocol_errors_name_the_fix(
    formats: dict[str, str], tmp_path: Path
) -> None:
    import datasets

    hf = datasets.load_from_disk(formats["hfds"].partition(":")[2])
    datasets.DatasetDict({"train": hf, "test": hf}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DatasetError, match=r"splits train, test; .*hfds:.*/dd/train"):
        open_dataset(f"hfds:{tmp_path / 'dd'}")
    assert len(open_dataset(f"hfds:{tmp_path / 'dd' / 'test'}")) == N
    (tmp_path / "halfway.py").write_text("def make():\n    return [1, 2, 3]\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(DatasetError, match="without key, label, encoded"):
            open_dataset("py:halfway:make")
    finally:
        sys.path.remove(str(tmp_path))


def test_flat_folder_with_labels_file_lines_up_by_class_name(
    formats: dict[str, str], tmp_path: Path
) -> None:
    """ImageNet's protocol in small: class folders as the bank, a flat folder of the same images
    with a key,label CSV (names, ImageNet-style ids without extension) as the queries."""
    bank = open_dataset(formats["imagefolder"])
    root = Path(formats["imagefolder"].partition(":")[2])
    flat = tmp_path / "val"
    flat.mkdir()
    rows = ["ImageId,PredictionString"]
    for key, label in zip(bank.keys, bank.labels.tolist(), strict=True):
        name = key.replace("/", "_")
        (flat / name).write_bytes((root / key).read_bytes())
        rows.append(f"{name.rsplit('.', 1)[0]},{bank.classes[label]} 1 2 3 4")
    # A class the bank lacks and reversed name order: indices must come from names, not order.
    (flat / "zz_extra.png").write_bytes((root / bank.keys[0]).read_bytes())
    rows.append("zz_extra,zebra 0 0 1 1")
    (tmp_path / "labels.csv").write_text("\n".join(reversed(rows)) + "\n")
    queries = f"imagefolder:{flat}?labels={tmp_path / 'labels.csv'}"
    joined = open_bank_queries(formats["imagefolder"], queries)
    assert joined.unmatched_classes == ["zebra"]
    q = joined.split_indices("test")
    assert len(joined.split_indices("train")) == N and len(q) == N + 1  # both "all"
    by_key = dict(zip(bank.keys, bank.labels.tolist(), strict=True))
    for i in q.tolist():
        key = joined.keys[i]
        if key == "zz_extra.png":
            assert joined.classes[joined.labels[i]] == "zebra"
        else:
            assert joined.labels[i] == by_key[key.replace("_", "/", 1)]
    out = tmp_path / "eval"
    _ok(["eval", "--bank", formats["imagefolder"], "--queries", queries, "--pixels", "--k", "1",
         "--no-probe", "--no-figures", "--out", str(out)])  # fmt: skip
    pixels = json.loads((out / "results.json").read_text())[0]
    assert pixels["name"] == "raw pixels" and pixels["n_queries"] == N + 1
    # Every query is a bank image: its own copy is the nearest neighbour, except the zebra.
    assert pixels["nn1"] == pytest.approx(N / (N + 1))


def test_readers_at_fsspec_urls(formats: dict[str, str]) -> None:
    """The same files copied to an fsspec URL (``memory://``, in this process) read the same bytes
    through the non-local code paths: fsspec files for Parquet, whole-file reads for Arrow, ranged
    reads for tar members."""
    import fsspec

    fs = fsspec.filesystem("memory")
    local = {name: Path(formats[name].partition(":")[2].split("?")[0]) for name in READERS[:3]}
    fs.pipe("/h24r/table.parquet", local["parquet"].read_bytes())
    for folder in (local["hfds"], local["wds"].parent):
        for file in sorted(folder.iterdir()):
            fs.pipe(f"/h24r/{folder.name}/{file.name}", file.read_bytes())
    specs = {
        "hfds": "hfds:memory://h24r/hf",
        "parquet": "parquet:memory://h24r/table.parquet?image=jpg&label=class&key=name",
        "wds": "wds:memory://h24r/shards/part-{000..001}.tar",
    }
    ref = open_dataset(formats["imagefolder"])
    for name, spec in specs.items():
        ds = open_dataset(spec)
        assert len(ds) == N and np.array_equal(ds.labels, ref.labels), name
        assert [ds.sha256(i) for i in range(N)] == [ref.sha256(i) for i in range(N)], name
        assert np.array_equal(pickle.loads(pickle.dumps(ds)).load(5), ref.load(5)), name


def test_parquet_table_of_relative_paths(formats: dict[str, str], tmp_path: Path) -> None:
    """``parquet:`` with a column of paths (relative to the table file) instead of bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ref = open_dataset(formats["imagefolder"])
    root = Path(formats["imagefolder"].partition(":")[2])
    paths = [f"../{root.name}/{key}" for key in ref.keys]
    table = pa.table({"file": paths, "label": ref.labels.tolist()})
    (root.parent / "tables").mkdir(exist_ok=True)
    pq.write_table(table, root.parent / "tables" / "paths.parquet", row_group_size=7)
    ds = open_dataset(f"parquet:{root.parent / 'tables' / 'paths.parquet'}?image=file&key=file")
    assert ds.keys == paths and np.array_equal(ds.labels, ref.labels)
    assert [ds.sha256(i) for i in range(N)] == [ref.sha256(i) for i in range(N)]
    (root.parent / "tables" / "broken.parquet").unlink(missing_ok=True)
    pq.write_table(pa.table({"file": ["nowhere.png"]}), root.parent / "tables" / "broken.parquet")
    broken = open_dataset(f"parquet:{root.parent / 'tables' / 'broken.parquet'}?image=file")
    with pytest.raises(DecodeError, match=r"nowhere\.png"):
        broken.load(0)


def _fork_hashes(args: tuple[bytes, list[int]]) -> list[str]:
    return _hashes(args)


def test_readers_on_s3(formats: dict[str, str], s3: str, tmp_path: Path) -> None:
    """hfds/parquet/wds and a labels file in a bucket of the loopback S3 server (endpoint from the
    environment): same bytes as the ImageFolder; a copy in a forked process (a DataLoader worker)
    reads from the bucket too; one epoch trains from shards in the bucket with a worker."""
    from store.remote import url_to_fs

    fs, bucket = url_to_fs(s3)
    root = Path(formats["imagefolder"].partition(":")[2]).parent
    for name in ("hf", "shards"):
        fs.put(f"{root / name}/", f"{bucket}/{name}", recursive=True)
    fs.put(str(root / "table.parquet"), f"{bucket}/table.parquet")
    ref = open_dataset(formats["imagefolder"])
    rows = zip(ref.keys, ref.labels.tolist(), strict=True)
    names = "\n".join(f"{key},{ref.classes[label]}" for key, label in rows)
    fs.pipe(f"{bucket}/labels.csv", names.encode())
    fs.invalidate_cache()
    specs = {
        "hfds": f"hfds:{s3}/hf",
        "parquet": f"parquet:{s3}/table.parquet?image=jpg&label=class&key=name",
        "wds": f"wds:{s3}/shards/part-{{000..001}}.tar",
    }
    rows = [0, 11, N - 1]
    for name, spec in specs.items():
        ds = open_dataset(spec)
        assert [ds.sha256(i) for i in range(N)] == [ref.sha256(i) for i in range(N)], name
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.map(_fork_hashes, [(pickle.dumps(ds), rows)])[0]
        assert got == [ref.sha256(i) for i in rows], name
    relabelled = open_dataset(f"{specs['wds']}?labels={s3}/labels.csv")
    assert relabelled.classes == ref.classes and np.array_equal(relabelled.labels, ref.labels)
    store = str(tmp_path / "store.zarr")
    _ok(["precompute", "--teacher", str(TEACHER), "--dataset", specs["wds"], "--store", store,
         "--views", "2", "--size", "16", "--workers", "1", "--device", "cpu",
         "--no-progress"])  # fmt: skip
    _ok(["train", "--method", "disco", "--store", store, "--arch", "tiny", "--epochs", "1",
         "--batch-size", "8", "--queue-size", "16", "--head-hidden", "32", "--workers", "1",
         "--threads", "1", "--no-progress", "--out", str(tmp_path / "run")])  # fmt: skip
    assert (tmp_path / "run" / "deployed.pt").is_file()


@pytest.mark.parametrize("name", READERS)
def test_manifest_in_a_process_pool(formats: dict[str, str], name: str) -> None:
    """The manifest's worker pool (forked processes) probes each reader like the main process:
    header sizes equal decoded sizes, hashes of the encoded bytes; the reader is read before the
    fork too, so open files and clients of the parent must not be reused by the children."""
    ds = open_dataset(formats[name])
    ds.load(0)  # the parent holds open files / a user object now
    pooled = build_manifest(ds, "all", progress=False, workers=2)
    here = build_manifest(open_dataset(formats["imagefolder"]), "all", progress=False, workers=1)
    for field in ("sha256", "heights", "widths", "valid", "labels"):
        assert np.array_equal(getattr(pooled, field), getattr(here, field)), field
    shapes = [ds.load(int(i)).shape[:2] for i in pooled.indices]
    assert [tuple(hw) for hw in zip(pooled.heights, pooled.widths, strict=True)] == shapes
