"""Render fingerprint: golden probe digests, drift refused by name, drift accepted explicitly."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import StoreMismatchError
from store.manifest import build_manifest
from store.views import get_recipe, library_versions, probe_images, render_fingerprint
from store.views.fingerprint import _PROBE_SEED, _PROBE_VIEWS, PROBE_VERSION, check_render

# sha256 of the probe renders per (recipe, size, interpolation) on the pinned stack
# (torch 2.14.1, torchvision 0.29.1, numpy 2.4.6; constraints.txt).
GOLDEN = {
    ("mocov2", 32, "bilinear"): "9fb4ba0937248edcc2a6ea010287770dbf29fb4ce2dd0d4cf822f40c990838db",
    ("digits", 32, "bilinear"): "6f068af5514a5326f49edfa4fd00e37c41b3add77953aa96758858ed9f8a4c36",
    ("mocov2", 48, "bicubic"): "a53de797f21e8cb5758c52f46ff13661e2bef767b0e82a0c548410648d077cf6",
    ("digits", 32, "nearest"): "a8dcd60a74052bbaf4e3b95213616c4536f79fbab14bbed8b6d09af3bd25009d",
}


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_probe_renders_match_the_golden_digests(key: tuple[str, int, str]) -> None:
    got = render_fingerprint(get_recipe(*key))
    assert got == GOLDEN[key], (
        f"the pixels of {key} views changed on this install ({library_versions()}): every store "
        "created before now is refused by `disco train`, `disco store verify` and write-through "
        "(render.fingerprint). If the upgrade is intended: run `disco store verify STORE --teacher "
        "CKPT --accept-render-drift` on the stores you keep, write the new pins in constraints.txt "
        f"and set GOLDEN[{key}] = {got!r} in tests/test_render_fingerprint.py"
    )


def test_fingerprint_is_the_same_in_a_fresh_process_at_1_and_2_threads() -> None:
    code = (
        "import torch\nfrom store.views import get_recipe, render_fingerprint\n"
        "for n in (1, 2):\n    torch.set_num_threads(n)\n    render_fingerprint.cache_clear()\n"
        "    print(render_fingerprint(get_recipe('mocov2', 32)))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert res.stdout.split() == [GOLDEN[("mocov2", 32, "bilinear")]] * 2


def test_probes_exercise_every_mocov2_op() -> None:
    recipe = get_recipe("mocov2", 32)
    images = probe_images()
    assert [im.shape[:2] for im in images] == [(29, 37), (64, 64), (17, 90), (260, 300)]
    assert all(im.dtype == np.uint8 and im.std() > 0 for im in images)
    params = np.concatenate(
        [
            recipe.sample_batch(
                _PROBE_SEED,
                np.full(_PROBE_VIEWS, k),
                np.arange(_PROBE_VIEWS),
                np.full(_PROBE_VIEWS, im.shape[0]),
                np.full(_PROBE_VIEWS, im.shape[1]),
            )
            for k, im in enumerate(images)
        ]
    )
    jitter = params[:, 5] == 1
    assert params[:, 4].any() and jitter.any() and params[:, 14].any() and (params[:, 15] > 0).any()
    # Each of brightness, contrast, saturation, hue comes first in some jittered view.
    assert set(params[jitter, 10].astype(int).tolist()) == {0, 1, 2, 3}


def _store(tmp: Path, name: str = "s.zarr") -> EmbeddingStore:
    manifest = build_manifest(open_dataset("synthetic:6"), "all", progress=False)
    return EmbeddingStore.create(
        str(tmp / name), manifest=manifest, recipe=get_recipe("digits", 16), seed=0, views=2
    )


def _edit_fingerprint(url: str) -> None:
    store = EmbeddingStore.open(url, mode="r+")
    render = {**store.attrs["render"], "fingerprint": "0" * 64}
    render["versions"] = {**render["versions"], "torchvision": "0.1.0"}
    store.group.attrs.update({"render": render})


def test_store_records_the_fingerprint_and_refuses_an_edited_one(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record = store.attrs["render"]
    assert record["fingerprint"] == render_fingerprint(get_recipe("digits", 16))
    assert record["probe_version"] == PROBE_VERSION and record["versions"] == library_versions()
    assert EmbeddingStore.open(store.url).check_render() == "match"
    _edit_fingerprint(store.url)
    edited = EmbeddingStore.open(store.url)
    with pytest.raises(StoreMismatchError, match=r"render\.fingerprint") as err:
        edited.check_render()
    msg = str(err.value)
    assert err.value.field == "render.fingerprint"
    assert "torchvision 0.1.0" in msg and f"torchvision {library_versions()['torchvision']}" in msg
    assert "--accept-render-drift" in msg and "disco store verify" in msg
    with pytest.warns(UserWarning, match="render.fingerprint"):
        assert edited.check_render(accept_drift=True) == "drift-accepted"
    # A passing verify records this install's fingerprint as accepted; then it is not refused.
    EmbeddingStore.open(store.url, mode="r+").accept_render({"verify": {"cos_min": 0.9999}})
    again = EmbeddingStore.open(store.url)
    assert again.check_render() == "accepted"
    assert again.attrs["render"]["fingerprint"] == "0" * 64  # the original record is kept
    assert again.attrs["render"]["accepted"][0]["evidence"] == {"verify": {"cos_min": 0.9999}}


def test_store_without_a_fingerprint_warns_and_can_adopt_one(tmp_path: Path) -> None:
    store = _store(tmp_path)
    attrs = dict(store.group.attrs)
    attrs.pop("render")
    store.group.attrs.clear()
    store.group.attrs.update(attrs)
    old = EmbeddingStore.open(store.url, mode="r+")
    with pytest.warns(UserWarning, match="no render fingerprint"):
        assert old.check_render() == "unrecorded"
    old.accept_render({"verify": {}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert EmbeddingStore.open(store.url).check_render() == "match"


def test_check_render_of_another_recipe_differs() -> None:
    stored = {"fingerprint": render_fingerprint(get_recipe("digits", 32)), "probe_version": 1}
    with pytest.raises(StoreMismatchError):
        check_render(stored, get_recipe("digits", 32, "bicubic"))
