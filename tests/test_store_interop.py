"""disco-store/3 interop: tensorstore reads every numeric array of a store `disco precompute`
wrote, equal to zarr-python; hashes are (N, 32) uint8; disco-store/1 stores still open."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import torch
import zarr
from typer.testing import CliRunner

from store.datasets import open_dataset
from store.embedding_store import SCHEMA, EmbeddingStore
from store.manifest import build_manifest, sha256_from_bytes, sha256_to_bytes
from store.views import get_recipe
from student_trainer.cli import app as disco
from teacher_service.checkpoint import save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder

runner = CliRunner()


def _teacher(path: Path) -> Path:
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="tiny", head_hidden=32, head_out=16, small_stem=True))
    save_checkpoint(path, enc.eval(), {"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3})
    return path


def _numeric_arrays(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out: dict[str, zarr.Array] = {}
    for name, item in group.members():
        if isinstance(item, zarr.Group):
            out |= _numeric_arrays(item, f"{prefix}{name}/")
        elif isinstance(item, zarr.Array) and item.dtype.kind in "biuf":
            out[f"{prefix}{name}"] = item
    return out


@pytest.mark.parametrize(("codec", "dtype"), [("zstd", "int8"), ("blosc-bitshuffle", "float16")])
def test_tensorstore_reads_every_numeric_array_of_a_precomputed_store(
    tmp_path: Path, codec: str, dtype: str
) -> None:
    teacher = _teacher(tmp_path / "t.pt")
    url = str(tmp_path / "s.zarr")
    made = runner.invoke(
        disco,
        ["store", "create", url, "--dataset", "synthetic:20", "--split", "all", "--size", "16",
         "--views", "2", "--shard-size", "8", "--codec", codec],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    res = runner.invoke(
        disco,
        ["precompute", "--teacher", str(teacher), "--dataset", "synthetic:20", "--store", url,
         "--views", "2", "--dtype", dtype, "--features", "--workers", "0", "--device", "cpu",
         "--batch-size", "16", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    group = zarr.open_group(url, mode="r")
    assert group.attrs["schema"] == SCHEMA == "disco-store/3"
    arrays = _numeric_arrays(group)
    expected = {
        "manifest/indices", "manifest/labels", "manifest/sha256", "manifest/heights",
        "manifest/widths", "manifest/valid", "views/params", "embeddings", "written", "features",
    } | ({"embeddings_scale"} if dtype == "int8" else set())  # fmt: skip
    assert set(arrays) == expected
    assert arrays["manifest/sha256"].shape == (20, 32) and arrays["manifest/sha256"].dtype == "u1"
    assert bool(np.asarray(arrays["written"][:]).all())
    for name, arr in sorted(arrays.items()):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{url}/{name}"}}
        got = ts.open(spec, read=True).result().read().result()
        want = np.asarray(arr[:])
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    # Keys are the one non-core array (variable-length strings), documented as such.
    meta = json.loads((Path(url) / "manifest" / "keys" / "zarr.json").read_text())
    assert meta["data_type"] == "string"


def test_sha256_bytes_round_trip_and_unreadable_rows() -> None:
    hexes = np.array(["ab" * 32, "", "0f" * 32])
    raw = sha256_to_bytes(hexes)
    assert raw.shape == (3, 32) and raw.dtype == np.uint8
    assert raw[0, 0] == 0xAB and not raw[1].any()
    assert sha256_from_bytes(raw).tolist() == hexes.tolist()


def _write_v1(url: str, n: int) -> dict[str, Any]:
    """A store in the disco-store/1 layout, written the way the v1 code wrote it: zarr-python
    defaults (zstd) for the manifest, ``manifest/sha256`` as hex strings, no render record."""
    ds = open_dataset(f"synthetic:{n}")
    manifest = build_manifest(ds, "all", progress=False)
    recipe = get_recipe("mocov2", 16)
    v2 = EmbeddingStore.create(url + ".tmp", manifest=manifest, recipe=recipe, seed=0, views=2)
    group = zarr.open_group(url, mode="w")
    m = group.create_group("manifest")
    for name in ("indices", "keys", "labels", "sha256", "heights", "widths", "valid"):
        arr = np.asarray(getattr(manifest, name))
        za = m.create_array(name, shape=(n,), dtype=str if arr.dtype.kind == "U" else arr.dtype)
        za[:] = arr
    m.attrs.update({"errors": {}})
    pa = group.create_group("views").create_array(
        "params", shape=v2.params.shape, chunks=v2.params.shape, dtype="float32",
        compressors=None, fill_value=0.0,
    )  # fmt: skip
    pa[:] = v2.params
    attrs = {k: v for k, v in v2.attrs.items() if k != "render"}
    group.attrs.update({**attrs, "schema": "disco-store/1"})
    return {"manifest": manifest, "params": v2.params}


def test_disco_store_1_still_opens_reads_and_takes_a_teacher(tmp_path: Path) -> None:
    url = str(tmp_path / "v1.zarr")
    made = _write_v1(url, 10)
    assert zarr.open_group(url, mode="r")["manifest/sha256"].dtype.kind in "TUO"
    store = EmbeddingStore.open(url, mode="r+")
    assert store.schema == "disco-store/1"
    assert store.manifest.sha256.tolist() == made["manifest"].sha256.tolist()
    assert store.manifest.hash == made["manifest"].hash
    np.testing.assert_array_equal(store.params, made["params"])
    with pytest.warns(UserWarning, match="no render fingerprint"):
        assert store.check_render() == "unrecorded"
    store.attach_teacher({"arch": "tiny", "sha256": "a" * 64}, dim=4)
    emb = np.eye(4, dtype=np.float32)[np.arange(20) % 4].reshape(10, 2, 4)
    store.write_shard(0, emb)
    again = EmbeddingStore.open(url)
    np.testing.assert_array_equal(again.read_shard(0).embeddings, emb)
    assert again.schema == "disco-store/1"  # writing never silently upgrades the layout


def test_new_stores_are_v3_with_the_same_manifest_hash(tmp_path: Path) -> None:
    manifest = build_manifest(open_dataset("synthetic:5"), "all", progress=False)
    store = EmbeddingStore.create(
        str(tmp_path / "s.zarr"), manifest=manifest, recipe=get_recipe("digits", 16), seed=0,
        views=2,
    )  # fmt: skip
    reopened = EmbeddingStore.open(store.url)
    assert reopened.schema == "disco-store/3"
    assert reopened.manifest.hash == manifest.hash
    assert reopened.manifest.sha256.tolist() == manifest.sha256.tolist()
