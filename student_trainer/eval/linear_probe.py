"""Linear probe: multinomial logistic regression on frozen, standardised features (the papers'
headline).

Deterministic: zero-initialised weights, a seeded ``torch.Generator`` for the batch order, and
CPU float32 arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from store.errors import ConfigError


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the linear probe."""

    epochs: int = 30
    """Passes over the training features."""
    batch_size: int = 256
    """Mini-batch size (samples)."""
    lr: float = 1e-2
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """L2 penalty on the weights (AdamW-style decoupled decay)."""
    seed: int = 0
    """Seed of the batch order."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("probe epochs and batch_size must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("probe lr must be > 0 and weight_decay >= 0")


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both (N, F) feature sets by the train mean / std per dimension -> float32 tensors.

    Dimensions with zero train variance are only centred.
    """
    tr = torch.as_tensor(np.asarray(train, dtype=np.float32))
    te = torch.as_tensor(np.asarray(test, dtype=np.float32))
    mean = tr.mean(dim=0)
    std = tr.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (tr - mean) / std, (te - mean) / std


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    config: ProbeConfig | None = None,
) -> float:
    """Test top-1 accuracy of a logistic-regression classifier trained on frozen features.

    ``train_features`` (N, F) / ``test_features`` (M, F) any float, labels (N,) / (M,) int64.
    Test labels unseen in training count as errors. Returns a fraction in [0, 1].
    """
    cfg = config or ProbeConfig()
    classes = np.unique(np.asarray(train_labels, dtype=np.int64))
    if classes.size < 2:
        raise ConfigError("the linear probe needs at least two classes in the training split")
    x_tr, x_te = standardise(train_features, test_features)
    y_tr = torch.as_tensor(np.searchsorted(classes, train_labels), dtype=torch.int64)
    layer = torch.nn.Linear(x_tr.shape[1], classes.size)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.AdamW(layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = x_tr.shape[0]
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(layer(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.inference_mode():
        pred = classes[layer(x_te).argmax(dim=1).numpy()]
    return float(np.mean(pred == np.asarray(test_labels, dtype=np.int64)))
