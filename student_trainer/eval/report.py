"""Evaluation outputs: a markdown table and JSON like DisCo's Table 1, and nearest-neighbour
pictures."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from store.atomic import atomic_write_text
from store.datasets import ImageDataset
from student_trainer.eval.features import FeatureSet
from student_trainer.eval.knn import Neighbours

# (record key, column header); metrics are shown as percentages.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("knn_weighted", "kNN-w"),
    ("nn1", "1-NN"),
    ("knn_majority", "k-NN maj"),
    ("recall_at_1", "R@1"),
    ("recall_at_5", "R@5"),
    ("map_at_r", "mAP@R"),
    ("agreement_at_10", "T-agree@10"),
    ("linear_probe", "Linear"),
    ("knn_l2_sklearn", "L2 k-NN (sklearn)"),
)


def format_params(n: int | None) -> str:
    """Parameter count as text: 11689512 -> "11.69M", 0 -> "0", None -> "—"."""
    if n is None:
        return "—"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def format_pct(value: Any) -> str:
    """A fraction as a percentage with one decimal ("94.0"); "—" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100.0 * float(value):.1f}"


def format_table(records: list[dict[str, Any]]) -> str:
    """Markdown table, one row per record: name, role, method, params, feature dim, metrics in %."""
    shown = [(key, head) for key, head in COLUMNS if any(r.get(key) is not None for r in records)]
    header = ["Model", "Role", "Method", "Params", "Dim"] + [h for _, h in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = [
            str(r.get("name")),
            str(r.get("role") or ""),
            str(r.get("method") or ""),
            format_params(r.get("params")),
            str(r.get("feature_dim") or ""),
        ] + [format_pct(r.get(key)) for key, _ in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def baseline_notes(records: list[dict[str, Any]]) -> list[str]:
    """Sentences naming every model whose weighted kNN is below the raw-pixel cosine baseline."""
    base = [r for r in records if r.get("role") == "baseline" and r.get("knn_weighted") is not None]
    if not base:
        return []
    floor = float(base[0]["knn_weighted"])
    notes = []
    for r in records:
        value = r.get("knn_weighted")
        if r.get("role") != "baseline" and value is not None and float(value) < floor:
            notes.append(
                f"- **{r['name']}** scores below raw pixels "
                f"({format_pct(value)} < {format_pct(floor)} weighted kNN): "
                "it has not learned a useful representation of this data."
            )
    return notes


DEFAULT_ROLES = ("train split", "test split")
"""What the bank and the queries are when one dataset gives both."""


def render_markdown(
    records: list[dict[str, Any]],
    title: str = "Retrieval evaluation",
    roles: tuple[str, str] = DEFAULT_ROLES,
) -> str:
    """The full ``results.md`` text: title, protocol line (``roles``: what the bank and the
    queries are), table, baseline notes."""
    k = next((r.get("k") for r in records if r.get("k") is not None), 20)
    t = next((r.get("temperature") for r in records if r.get("temperature") is not None), 0.07)
    parts = [
        f"# {title}",
        "",
        f"Bank = {roles[0]}, queries = {roles[1]}; cosine similarity on L2-normalised backbone "
        f"features. kNN-w: weighted {k}-NN, vote exp(sim/{t}) (DINO); 1-NN and {k}-NN majority "
        "(CompRess); R@k: a same-label image among the top k; mAP@R (Musgrave et al.); "
        "T-agree@10: share of the teacher's 10 nearest neighbours also among the model's 10; "
        "Linear: logistic-regression probe on frozen features. All in %. Params: deployed "
        "backbone only (no MLP head).",
        "",
        format_table(records),
        "",
    ]
    notes = baseline_notes(records)
    if notes:
        parts += [*notes, ""]
    return "\n".join(parts)


def write_tables(
    records: list[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    title: str = "Retrieval evaluation",
    roles: tuple[str, str] = DEFAULT_ROLES,
) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.json`` (list of records) into ``out_dir``; return both
    paths."""
    out = Path(out_dir)
    md, js = out / "results.md", out / "results.json"
    atomic_write_text(md, render_markdown(records, title, roles))
    atomic_write_text(js, json.dumps(records, indent=2, default=str) + "\n")
    return md, js


def pick_queries(n_queries: int, count: int) -> np.ndarray:
    """``count`` query rows spread evenly over ``n_queries`` (deterministic). (count,) int64."""
    count = min(count, n_queries)
    return np.unique(np.linspace(0, n_queries - 1, count).round().astype(np.int64))


_COLOURS = {"query": (0, 0, 0), "match": (44, 160, 44), "miss": (214, 39, 40)}


def _tile(image: np.ndarray, side: int, border: int, colour: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (side, side, 3) uint8: fitted into the square, framed in ``colour``."""
    # lazy: only when drawing figures
    from PIL import Image

    inner = side - 2 * border
    h, w = image.shape[:2]
    scale = inner / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(image).resize((nw, nh), resample))
    out = np.full((side, side, 3), 255, dtype=np.uint8)
    out[:border], out[-border:], out[:, :border], out[:, -border:] = colour, colour, colour, colour
    top, left = border + (inner - nh) // 2, border + (inner - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def neighbour_figure(
    dataset: ImageDataset,
    fs: FeatureSet,
    neighbours: Neighbours,
    path: str | os.PathLike[str],
    title: str = "",
    queries: int = 6,
    top: int = 5,
    tile: int = 72,
) -> Path:
    """PNG grid: each row a test query then its ``top`` nearest train images, best first.

    Neighbour borders are green when the label matches the query's, red otherwise; the query has a
    black border. Each tile is ``tile`` px; labels are printed above the tiles. Drawn with
    matplotlib's Agg backend (no display needed). Returns the written path.
    """
    # lazy: only when drawing figures
    import matplotlib

    matplotlib.use("Agg")
    # lazy: only when drawing figures
    import matplotlib.pyplot as plt

    top = min(top, neighbours.k)
    rows = pick_queries(len(fs.test.indices), queries)
    gap = tile // 3
    mosaic = np.full((len(rows) * (tile + gap), (top + 1) * tile + gap, 3), 255, dtype=np.uint8)
    captions: list[tuple[float, float, str]] = []

    def name(label: int) -> str:
        return dataset.classes[label] if 0 <= label < len(dataset.classes) else str(label)

    for r, q in enumerate(rows.tolist()):
        q_label = int(fs.test.labels[q])
        tiles = [(int(fs.test.indices[q]), q_label, _COLOURS["query"], "query")]
        for j in range(top):
            bank_row = int(neighbours.indices[q, j])
            label = int(fs.train.labels[bank_row])
            colour = _COLOURS["match" if label == q_label else "miss"]
            tiles.append((int(fs.train.indices[bank_row]), label, colour, str(j + 1)))
        y = r * (tile + gap) + gap
        for c, (ds_index, label, colour, tag) in enumerate(tiles):
            x = c * tile + (gap if c else 0)
            mosaic[y : y + tile, x : x + tile] = _tile(dataset.load(ds_index), tile, 4, colour)
            captions.append((x + tile / 2, y - 2, f"{tag}: {name(label)}"))
    height, width = mosaic.shape[:2]
    fig = plt.figure(figsize=(width / 72, height / 72 + (0.3 if title else 0)), dpi=72)
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + (21.6 if title else 0))))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for cx, cy, text in captions:
        ax.text(cx, cy, text, ha="center", va="bottom", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    plt.close(fig)
    return out
