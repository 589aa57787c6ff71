"""Dataset readers beyond ImageFolder: Hugging Face datasets, Parquet, WebDataset shards, own code.

Each ``open_*(spec, arg, options, storage_options)`` builds the dataset of one spec prefix
(``hfds``, ``parquet``, ``wds``, ``py``); ``store.datasets`` registers them. Every reader yields
encoded image bytes (:class:`EncodedDataset`), so hashes and pixels match an ImageFolder holding
the same files.
"""

from __future__ import annotations

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
