"""Reading and hashing weights: checkpoint files, state dicts, weight folders.

The leaf every loader imports (``checkpoint``, the teacher sources, the student export): it
imports no encoder or source, so none of them import each other to read a file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from store.atomic import atomic_write
from store.errors import CheckpointError
from teacher_service.extras import require

__all__ = [
    "WEIGHT_SUFFIXES",
    "atomic_torch_save",
    "file_sha256",
    "load_strict",
    "read_checkpoint",
    "read_state_dict",
    "state_sha256",
    "weights_sha256",
]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` through :func:`store.atomic.atomic_write`: a crash never leaves a
    truncated file (temporary file beside ``path``, fsync, rename, directory fsync)."""
    with atomic_write(path) as fh:
        torch.save(obj, fh)


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")`` with clear errors.

    Raises ``CheckpointError`` if the file is missing, or needs arbitrary unpickling (refused).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {os.fspath(path)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), "")
        why = f": {detail.strip()}" if detail else ""
        raise CheckpointError(
            f"refusing checkpoint {os.fspath(path)}: it needs arbitrary unpickling, which could "
            f"run code (torch.load weights_only=True failed{why}). Re-save it as a plain dict of "
            "tensors and basic values."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {os.fspath(path)}: {str(exc).splitlines()[0]}"
        ) from None


def _hash_file(path: Path, h: Any) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a weights file; for a snapshot folder, of its weight files' names and bytes
    (``*.safetensors``, ``*.bin``, ``*.pth``, ``*.pt`` in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise CheckpointError(f"no weight files (*.safetensors, *.bin, *.pth) in {p}")
        for f in files:
            h.update(str(f.relative_to(p)).encode())
            _hash_file(f, h)
    else:
        _hash_file(p, h)
    return h.hexdigest()


def state_sha256(module: nn.Module) -> str:
    """Hex sha256 over a module's state dict (names, dtypes, shapes, bytes): the identity of
    weights that did not come from a local file (a library's own download)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as
        # bytes; for every other tensor the bytes, and so the digest, are unchanged.
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from ``.safetensors`` or a ``torch.save``'d file (loaded with
    ``weights_only=True``; ``{"state_dict": ...}``/``{"model": ...}`` wrappers and a ``module.``
    prefix are unwrapped). Raises ``CheckpointError``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"teacher weights not found: {p}")
    if p.suffix == ".safetensors":
        st = require("safetensors.torch", "reading .safetensors weights")
        try:
            state: Any = st.load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {p}: {str(exc).splitlines()[0]}") from None
    else:
        state = read_checkpoint(p)
        for key in ("state_dict", "model"):
            if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{p} is not a state dict (a flat mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a one-line ``CheckpointError`` naming
    the first missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = [
        f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{what}: weights do not fit the model ({'; '.join(problems)})")
    module.load_state_dict(dict(state), strict=True)
