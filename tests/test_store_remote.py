"""Storage options for object-storage URLs: environment, ``--storage-options`` JSON, refusals."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import ConfigError
from store.manifest import build_manifest
from store.remote import (
    SINGLE_WRITER_ENV,
    STORAGE_OPTIONS_ENV,
    RemoteStorageError,
    export_storage_options,
    is_remote,
    parse_storage_options,
    single_writer_acknowledged,
    storage_options_for,
    storage_options_from_env,
)
from store.views import get_recipe


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_NO_SIGN_REQUEST",
                 STORAGE_OPTIONS_ENV, SINGLE_WRITER_ENV):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_standard_aws_variables_map_to_s3fs_options() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://general:1",
        "AWS_ENDPOINT_URL_S3": "http://s3-only:2",
        "AWS_PROFILE": "lab",
        "AWS_NO_SIGN_REQUEST": "YES",
    }
    assert storage_options_from_env("s3", env) == {
        "endpoint_url": "http://s3-only:2",  # the service-specific variable wins, as in botocore
        "profile": "lab",
        "anon": True,
    }
    assert storage_options_from_env("s3", {"AWS_ENDPOINT_URL": "http://general:1"}) == {
        "endpoint_url": "http://general:1"
    }
    assert storage_options_from_env("gs", env) == {}  # AWS variables are for s3:// only


def test_json_overrides_environment_and_local_paths_take_none(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", "http://env:1")
    clean_env.setenv(STORAGE_OPTIONS_ENV, json.dumps({"key": "k", "secret": "s"}))
    assert storage_options_for("s3://b/p") == {
        "endpoint_url": "http://env:1", "key": "k", "secret": "s"
    }  # fmt: skip
    explicit = storage_options_for("s3://b/p", {"endpoint_url": "http://flag:2"})
    assert explicit == {"endpoint_url": "http://flag:2"}  # explicit dict replaces the JSON env
    assert storage_options_for("/data/x") == {}
    assert storage_options_for("file:///data/x") == {}
    assert storage_options_for("s3://b", {"anonymous": True})["anon"] is True
    assert storage_options_for("gs://b", {"anonymous": True}) == {"token": "anon"}
    export_storage_options('{"endpoint_url": "http://exported:3"}')
    assert storage_options_for("s3://b")["endpoint_url"] == "http://exported:3"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"s3"'])
def test_bad_storage_options_are_one_line_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--storage-options") as info:
        parse_storage_options(text)
    assert "\n" not in str(info.value)


def test_remote_writes_need_the_single_writer_promise(clean_env: pytest.MonkeyPatch) -> None:
    assert is_remote("s3://b/s.zarr") and not is_remote("/tmp/s.zarr")
    single_writer_acknowledged("/tmp/s.zarr")  # local: flock does the job
    single_writer_acknowledged("memory://s.zarr")  # one process by construction
    with pytest.raises(RemoteStorageError, match="--single-writer"):
        single_writer_acknowledged("s3://b/s.zarr")
    single_writer_acknowledged("s3://b/s.zarr", single_writer=True)
    clean_env.setenv(SINGLE_WRITER_ENV, "1")
    single_writer_acknowledged("s3://b/s.zarr")


def test_file_urls_lock_like_local_paths(tmp_path: Path) -> None:
    """``file://`` is local disk: its writers take the cross-process flock (no promise needed)."""
    manifest = build_manifest(open_dataset("synthetic:6"), "all", progress=False)
    url = f"file://{tmp_path}/s.zarr"
    store = EmbeddingStore.create(url, manifest=manifest, recipe=get_recipe("mocov2", 16),
                                  seed=0, views=1, shard_size=4)  # fmt: skip
    store.attach_teacher({"arch": "x", "sha256": "0" * 64}, dim=4)
    store.write_shard(1, np.ones((2, 1, 4), np.float32) / 2)
    assert (tmp_path / "s.zarr" / ".locks" / "shard-00001.lock").is_file()
    assert EmbeddingStore.open(url).written_mask()[4:].all()


def test_unreachable_endpoint_is_one_line(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No server at the endpoint: store commands and imagefolder: stop with one line naming the
    URL and the client's reason (not a botocore traceback, not rows masked as undecodable)."""
    from typer.testing import CliRunner

    from student_trainer.cli import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    clean_env.setenv("AWS_ACCESS_KEY_ID", "testing")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    opts = json.dumps({"endpoint_url": f"http://127.0.0.1:{port}",
                       "config_kwargs": {"retries": {"max_attempts": 1}}})  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(app, ["store", "info", "s3://no-bucket/s.zarr", "--storage-options", opts])
    assert res.exit_code == 1 and res.output.startswith("error: cannot open store"), res.output
    assert "EndpointConnectionError" in res.output and "Traceback" not in res.output
    data = "imagefolder:s3://no-bucket/imgs"
    create = ["store", "create", str(tmp_path / "s.zarr"), "--dataset", data]
    res = runner.invoke(app, [*create, "--storage-options", opts])
    assert res.exit_code == 1 and "imagefolder: cannot list 's3://no-bucket/imgs'" in res.output
    assert not (tmp_path / "s.zarr").exists()
    res = runner.invoke(app, ["store", "info", "s3://b/s.zarr", "--storage-options", "{bad"])
    assert res.exit_code == 1 and "--storage-options is not valid JSON" in res.output
