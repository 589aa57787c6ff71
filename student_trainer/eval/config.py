"""``EvalConfig``: the settings of ``disco eval`` (the checkpoints aside), checked when built.

Imports no torch: ``disco eval --help`` derives its options from this dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from store.devices import parse_device_name
from store.errors import ConfigError

__all__ = ["EvalConfig"]


@dataclass
class EvalConfig:
    """How ``disco eval`` scores checkpoints by kNN retrieval (train split = bank, test split =
    queries)."""

    dataset: str = "mnist5k"
    """Dataset spec (any ``disco store create --dataset`` spec): its train split is the bank, its
    test split the queries."""
    bank: str | None = None
    """Bank dataset spec (default: --dataset), e.g. imagefolder:/data/train."""
    queries: str | None = None
    """Query dataset spec (default: the bank), e.g.
    imagefolder:/data/val?labels=/data/val_labels.csv. Labels line up by class name."""
    bank_split: str | None = None
    """Bank split: all, train, test (default: train of a shared dataset, else all)."""
    queries_split: str | None = None
    """Query split: all, train, test (default: test of a shared dataset, else all)."""
    teacher: str | None = None
    """Teacher (checkpoint, timm:, hf:, open_clip:, py:): adds its row and the neighbour agreement
    column."""
    teacher_weights: str | None = None
    """Teacher weights (.safetensors, .pth, snapshot folder)."""
    teacher_pooling: str | None = None
    """ViT teacher pooling: cls, mean, cls+mean."""
    out: Path = Path("eval_out")
    """Directory for results.md, results.json, neighbour PNGs."""
    k: int = 20
    """Neighbours for the kNN votes."""
    temperature: float = 0.07
    """Weighted-kNN vote temperature: weight exp(sim / T)."""
    size: int | None = None
    """Input size in pixels (default: each checkpoint's own size)."""
    pixels: bool | None = None
    """Raw-pixel baseline rows (default: on for mnist5k, digits, synthetic)."""
    probe: bool = True
    """Run the linear probe."""
    probe_epochs: int = 30
    """Linear-probe epochs."""
    backend: str = "auto"
    """kNN backend: auto (fastest exact), faiss, torch, brute; faiss-ivf (approximate)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    batch_size: int = 256
    """Images per forward pass."""
    cache_dir: Path | None = None
    """Feature cache (default $DISCO_FEATURE_CACHE or ~/.cache/disco)."""
    figures: bool = True
    """Write neighbour PNGs."""

    def __post_init__(self) -> None:
        parse_device_name(self.device)
        if self.k < 1 or self.batch_size < 1 or self.probe_epochs < 1:
            raise ConfigError(
                f"k, batch_size and probe_epochs must be >= 1, got {self.k}, {self.batch_size}, "
                f"{self.probe_epochs}"
            )
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.size is not None and self.size < 8:
            raise ConfigError(f"size must be >= 8 px, got {self.size}")
