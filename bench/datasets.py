"""Dataset readers benchmark: per-sample cost of each spec next to ImageFolder, on the same images.

Writes N generated 224-px JPEGs (a noise texture makes them photograph-sized) as an ImageFolder and,
in its order, as a Hugging Face ``save_to_disk`` dataset, a Parquet file (100 rows per row group,
as Hugging Face writes image datasets; ``parquet16``: 16 rows per group), WebDataset tar shards
and a ZIP behind a ``py:`` module (``tests/dataset_formats.py``). Each spec is opened once (the
WebDataset index is built then and reported apart), then every sample is loaded (read + decode to
(H, W, 3) uint8) in a seeded random order, as training reads rows; the specs take turns every 16
samples (in rotating order), and the figure is the median over repeats. Parquet is also read in
table order (``parquet_sequential_*``). Times are the process's CPU time (``time.process_time``:
all its threads, user + system), not wall time: on a shared machine other jobs' load would
otherwise decide the ratios; every file is in the page cache (written just before). Prints a table,
then as the LAST line one JSON object: ``<spec>_ms_per_sample`` and ``<spec>_ratio`` (to
ImageFolder) for hfds, parquet, parquet16, wds, py, plus ``imagefolder_ms_per_sample`` and the
bytes-only read cost ``<spec>_read_ms``.

    python bench/datasets.py                 # 512 images, 5 repeats
    python bench/datasets.py --n 128 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

# Python puts this script's folder first on sys.path, where this file would shadow the Hugging Face
# ``datasets`` package; the test-data writer lives in tests/.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "tests"))
from dataset_formats import write_formats  # noqa: E402

from store.datasets import ImageDataset, open_dataset  # noqa: E402

SPECS = ("imagefolder", "hfds", "parquet", "parquet16", "wds", "py")
CHUNK = 16
"""Samples each spec loads before the next one takes its turn."""


def _read(ds: ImageDataset, i: int) -> bytes:
    """Encoded bytes of sample ``i`` without decoding (ImageFolder keeps its reader private)."""
    reader = getattr(ds, "read_bytes", None) or ds._read  # type: ignore[attr-defined]
    data: bytes = reader(i)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512, help="Images.")
    parser.add_argument("--size", type=int, default=224, help="Image side in pixels.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed passes per spec.")
    parser.add_argument("--row-group", type=int, default=100, help="Parquet rows per row group.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="disco-bench-datasets-") as tmp:
        root = Path(tmp)
        os.environ["DISCO_INDEX_CACHE"] = str(root / "index")
        specs = write_formats(root, args.n, args.size, jpeg=True, row_group=args.row_group)
        small = root / "small-groups"
        small.mkdir()
        specs["parquet16"] = write_formats(small, args.n, args.size, jpeg=True, row_group=16)[
            "parquet"
        ]
        sys.path.insert(0, str(root / "py"))
        opened: dict[str, ImageDataset] = {}
        open_s: dict[str, float] = {}
        for name in SPECS:
            t0 = time.perf_counter()
            opened[name] = open_dataset(specs[name])
            open_s[name] = time.perf_counter() - t0
        n = len(opened["imagefolder"])
        order = np.random.default_rng(0).permutation(n).tolist()
        mean_bytes = float(np.mean([len(_read(opened["imagefolder"], i)) for i in range(n)]))
        chunks = [order[a : a + CHUNK] for a in range(0, n, CHUNK)]
        load: dict[str, list[float]] = {name: [] for name in SPECS}
        read: dict[str, list[float]] = {name: [] for name in SPECS}
        sequential: list[float] = []
        for _ in range(args.repeats):
            # Specs take turns every CHUNK samples, so the load of a shared machine hits all alike.
            spent = dict.fromkeys(SPECS, 0.0)
            spent_read = dict.fromkeys(SPECS, 0.0)
            for c, chunk in enumerate(chunks):
                for name in (
                    SPECS[c % len(SPECS) :] + SPECS[: c % len(SPECS)]
                ):  # each spec first alike
                    ds = opened[name]
                    t0 = time.process_time()
                    for i in chunk:
                        ds.load(i)
                    t1 = time.process_time()
                    for i in chunk:
                        _read(ds, i)
                    spent[name] += t1 - t0
                    spent_read[name] += time.process_time() - t1
            for name in SPECS:
                load[name].append(spent[name] * 1e3 / n)
                read[name].append(spent_read[name] * 1e3 / n)
            t0 = (
                time.process_time()
            )  # Parquet in table order (manifest, eval): one group read per group
            for i in range(n):
                opened["parquet"].load(i)
            sequential.append((time.process_time() - t0) * 1e3 / n)

    ms = {name: statistics.median(v) for name, v in load.items()}
    read_ms = {name: statistics.median(v) for name, v in read.items()}
    table = Table(
        title=f"{n} JPEGs at {args.size} px (mean {mean_bytes / 1024:.1f} KiB), random order"
    )
    for col in ("spec", "open s", "read ms/sample", "load ms/sample", "ratio to imagefolder"):
        table.add_column(col, justify="left" if col == "spec" else "right")
    for name in SPECS:
        table.add_row(
            name,
            f"{open_s[name]:.2f}",
            f"{read_ms[name]:.3f}",
            f"{ms[name]:.3f}",
            f"{ms[name] / ms['imagefolder']:.2f}",
        )
    Console().print(table)
    out: dict[str, object] = {
        "bench": "datasets",
        "n": n,
        "size": args.size,
        "mean_kib": round(mean_bytes / 1024, 1),
        "parquet_row_group": args.row_group,
        "repeats": args.repeats,
    }
    for name in SPECS:
        out[f"{name}_ms_per_sample"] = round(ms[name], 4)
        out[f"{name}_read_ms"] = round(read_ms[name], 4)
        if name != "imagefolder":
            out[f"{name}_ratio"] = round(ms[name] / ms["imagefolder"], 3)
    out["parquet_sequential_ms_per_sample"] = round(statistics.median(sequential), 4)
    out["parquet_sequential_ratio"] = round(statistics.median(sequential) / ms["imagefolder"], 3)
    out["wds_open_s"] = round(open_s["wds"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
