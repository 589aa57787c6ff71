"""The same small labelled image set written in every format a dataset spec reads.

:func:`write_formats` writes N generated images (PNG and JPEG, varied sizes, 4 classes) as an
ImageFolder and, in the ImageFolder's own order, as a Hugging Face ``save_to_disk`` dataset, a
Parquet file (several row groups), WebDataset tar shards and a ZIP read by a ``py:`` module. It
returns one spec per format; every spec yields the same encoded bytes, labels and class names.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from store.builtin import SHAPES, synthetic_image
from store.imagefolder import ImageFolder

PY_MODULE = '''
"""A user's own dataset: images in a ZIP file, labels in its JSON index (the py: protocol)."""
import json
import zipfile


class ZipImages:
    def __init__(self, path):
        self.path = path
        with zipfile.ZipFile(path) as z:
            index = json.loads(z.read("index.json"))
        self.names = index["names"]
        self.targets = index["labels"]
        self.classes = index["classes"]
        self._zip = None

    def __len__(self):
        return len(self.names)

    def key(self, i):
        return self.names[i]

    def label(self, i):
        return self.targets[i]

    def encoded(self, i):
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.read(self.names[i])


def make(path):
    return ZipImages(path)
'''


def _encoded(i: int, size: int | None, jpeg: bool = False) -> tuple[bytes, str, int]:
    """(encoded bytes, extension, label) of generated image ``i`` (every third one a JPEG, or all
    with ``jpeg``). Resized images (``size`` px) get a fixed noise texture, so their JPEGs are about
    as large as photographs of that size."""
    img, label = synthetic_image(i)
    if size is not None:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
        noise = np.random.default_rng(i).normal(0.0, 10.0, img.shape)
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    if jpeg or i % 3 == 2:
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        return buf.getvalue(), "jpg", label
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), "png", label


def write_imagefolder(root: Path, n: int, size: int | None = None, jpeg: bool = False) -> Path:
    """An ImageFolder of ``n`` generated images (class subfolders named after the shapes)."""
    for i in range(n):
        data, ext, label = _encoded(i, size, jpeg)
        path = root / SHAPES[label] / f"img{i:04d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_formats(
    root: Path, n: int = 24, size: int | None = None, jpeg: bool = False, row_group: int = 5
) -> dict[str, str]:
    """Write every format under ``root``; returns {format: dataset spec}.

    Formats: ``imagefolder``, ``hfds`` (save_to_disk, Image + ClassLabel features), ``parquet``
    (binary column ``jpg``, class names as strings, ``row_group`` rows per row group; Hugging Face
    writes 100 per group for image datasets), ``wds`` (two shards,
    ``.png``/``.jpg`` + ``.cls`` members), ``py`` (module ``userdata`` under ``root/py``, which the
    caller puts on ``sys.path``/``PYTHONPATH``).
    """
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = write_imagefolder(root / "imagefolder", n, size, jpeg)
    ref = ImageFolder(folder)
    blobs = [(folder / key).read_bytes() for key in ref.keys]
    names = [ref.classes[int(c)] for c in ref.labels]
    labels = [int(c) for c in ref.labels]

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(ref.classes))}
    )
    hf = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in blobs], "label": labels}, features=features
    )
    hf.save_to_disk(str(root / "hf"))

    table = pa.table({"name": ref.keys, "jpg": pa.array(blobs, pa.binary()), "class": names})
    pq.write_table(table, root / "table.parquet", row_group_size=row_group)

    (root / "shards").mkdir()
    half = (len(blobs) + 1) // 2
    for s, part in enumerate((range(half), range(half, len(blobs)))):
        with tarfile.open(root / "shards" / f"part-{s:03d}.tar", "w") as tar:
            for i in part:
                stem = ref.keys[i].rsplit(".", 1)[0]
                ext = ref.keys[i].rsplit(".", 1)[1]
                for name, payload in (
                    (f"{stem}.{ext}", blobs[i]),
                    (f"{stem}.cls", b"%d" % labels[i]),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))

    with zipfile.ZipFile(root / "images.zip", "w") as z:
        for key, blob in zip(ref.keys, blobs, strict=True):
            z.writestr(key, blob)
        index = {"names": ref.keys, "labels": labels, "classes": list(ref.classes)}
        z.writestr("index.json", json.dumps(index))
    (root / "py").mkdir()
    (root / "py" / "userdata.py").write_text(PY_MODULE)

    return {
        "imagefolder": f"imagefolder:{folder}",
        "hfds": f"hfds:{root / 'hf'}",
        "parquet": f"parquet:{root / 'table.parquet'}?image=jpg&label=class&key=name",
        "wds": f"wds:{root / 'shards'}/part-{{000..001}}.tar",
        "py": f"py:userdata:make?path={root / 'images.zip'}",
    }
