"""Dataset readers beyond ImageFolder: Hugging Face datasets, Parquet, WebDataset shards, own code.

Each ``open_*(spec, arg, options, storage_options)`` builds the dataset of one spec prefix
(``hfds``, ``parquet``, ``wds``, ``py``); ``store.datasets`` registers them. Every reader yields
encoded image bytes (:class:`EncodedDataset`), so hashes and pixels match an ImageFolder holding
the same files. Names load from their modules on first use (``store.lazy``), so the registry can
import the option helpers without importing the readers (pyarrow, fsspec).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.lazy import lazy_exports

if TYPE_CHECKING:
    from store.readers.encoded import EncodedDataset
    from store.readers.options import label_values, read_label_file, relabel, split_options
    from store.readers.python import PythonDataset, open_python
    from store.readers.table import TableDataset, open_hfds, open_parquet
    from store.readers.wds import WebDatasetShards, open_wds

__all__ = [
    "EncodedDataset",
    "PythonDataset",
    "TableDataset",
    "WebDatasetShards",
    "label_values",
    "open_hfds",
    "open_parquet",
    "open_python",
    "open_wds",
    "read_label_file",
    "relabel",
    "split_options",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EncodedDataset": "store.readers.encoded",
        "PythonDataset": "store.readers.python",
        "TableDataset": "store.readers.table",
        "WebDatasetShards": "store.readers.wds",
        "label_values": "store.readers.options",
        "open_hfds": "store.readers.table",
        "open_parquet": "store.readers.table",
        "open_python": "store.readers.python",
        "open_wds": "store.readers.wds",
        "read_label_file": "store.readers.options",
        "relabel": "store.readers.options",
        "split_options": "store.readers.options",
    },
)
