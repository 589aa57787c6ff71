"""``disco eval --bank SPEC --queries SPEC``: one dataset's train/test splits through the
bank/queries path are the same evaluation as ``--dataset`` (same images, order, labels, table)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from store.datasets import open_dataset
from store.errors import DatasetError
from store.eval_data import BankQueries, default_splits, open_bank_queries
from student_trainer.cli import app


def test_mnist5k_bank_and_queries_are_its_train_and_test_splits() -> None:
    base = open_dataset("mnist5k")
    joined = open_bank_queries("mnist5k", "mnist5k")
    assert default_splits("mnist5k", "mnist5k") == ("train", "test")
    bank, queries = joined.split_indices("train"), joined.split_indices("test")
    assert np.array_equal(bank, base.split_indices("train"))  # 4,000 in permutation order
    assert np.array_equal(queries - len(base), base.split_indices("test"))  # the last 1,000
    assert np.array_equal(joined.labels[bank], base.labels[base.split_indices("train")])
    assert np.array_equal(joined.labels[queries], base.labels[base.split_indices("test")])
    assert joined.classes == base.classes and not joined.unmatched_classes
    i = int(queries[0])
    assert np.array_equal(joined.load(i), base.load(i - len(base)))


def test_cli_bank_queries_reproduce_the_dataset_table(tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--pixels", "--no-probe", "--no-figures", "--cache-dir", str(tmp_path / "cache")]
    tables = []
    for name, extra in (("one", ["--dataset", "digits"]),
                        ("two", ["--bank", "digits", "--queries", "digits"])):  # fmt: skip
        result = runner.invoke(app, ["eval", *extra, *common, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        tables.append(json.loads((tmp_path / name / "results.json").read_text()))
    assert tables[0] == tables[1]
    assert tables[0][0]["n_bank"] == 1437 and tables[0][0]["n_queries"] == 360
    assert tables[0][0]["knn_weighted"] > 0.9  # raw pixels on digits: a real score


def test_class_names_not_numbers_line_up(tmp_path: Path) -> None:
    """Bank classes [b, c]; query classes [a, b, c]: query 'b' (number 1) is bank label 0."""
    from store.builtin import ArrayDataset

    img = np.zeros((4, 4, 3), dtype=np.uint8)
    bank = ArrayDataset("bank", [img] * 4, np.array([0, 1, 0, 1]), ["b", "c"])
    queries = ArrayDataset("queries", [img] * 3, np.array([0, 1, 2]), ["a", "b", "c"])
    joined = BankQueries(bank, "all", queries, "all")
    assert joined.classes == ["b", "c", "a"] and joined.unmatched_classes == ["a"]
    assert joined.labels.tolist() == [0, 1, 0, 1, 2, 0, 1]


def test_unlabelled_queries_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), k, dtype=np.uint8)).save(tmp_path / f"{k}.png")
    with pytest.raises(DatasetError, match=r"no labelled image.*labels=FILE\.csv"):
        open_bank_queries("digits", f"imagefolder:{tmp_path}")
