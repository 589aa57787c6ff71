"""Where and how the heavy paths (precompute, service, training, eval, verify) run: one home.

* :func:`resolve_device` turns ``auto|cpu|cuda|cuda:N`` into a ``torch.device``; under ``torchrun``
  a plain ``cuda`` (or ``auto`` on a GPU host) becomes ``cuda:LOCAL_RANK`` and the process's
  current CUDA device is set to it, so each rank owns its own GPU.
* :func:`autocast` is the one mixed-precision switch: a no-op on CPU or in float32, CUDA autocast
  in float16/bfloat16 otherwise; :data:`DTYPES` maps the dtype names configs and stores use.
* :func:`prepare_model`, :func:`to_device` and :func:`default_workers` are the device-dependent
  speed settings.

On CUDA: convolution weights and input batches in ``channels_last`` (NHWC: what cuDNN's tensor-core
kernels want under bf16/fp16), cuDNN autotuning (``cudnn.benchmark``; input shapes are fixed per
job), host-to-device copies from pinned memory with ``non_blocking=True`` (the copy overlaps the
previous batch's compute), and enough DataLoader workers that decoding and rendering keep up.
On CPU: ``channels_last`` weights for models whose convolutions all have >= 16 channels (oneDNN
then runs the whole network NHWC: a half-width ResNet-18 training step at 32 px took 1.52 s instead
of 1.81 s on this project's 2-core machine), but not for narrower ones, where NHWC BatchNorm was
3x slower (8-channel "tiny"). Values and shapes never change; the settings are switched by the
device, never required (STYLE §7).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from store.devices import DEVICE_NAMES, parse_device_name
from store.errors import ConfigError

__all__ = [
    "CPU_CHANNELS_LAST_MIN",
    "DEVICE_NAMES",
    "DTYPES",
    "MAX_AUTO_WORKERS",
    "autocast",
    "cuda_index",
    "default_workers",
    "is_cuda",
    "prepare_model",
    "resolve_device",
    "to_device",
    "usable_cpus",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""Compute dtype names (as configs, checkpoints and stores record them) -> torch dtypes."""

CPU_CHANNELS_LAST_MIN = 16
"""Narrowest convolution (output channels) for which CPU models go ``channels_last``."""

MAX_AUTO_WORKERS = 16
"""Cap of the automatic worker count per GPU process (more workers mostly cost host RAM)."""


def is_cuda(device: torch.device | str) -> bool:
    """True for a CUDA device (``cuda``, ``cuda:N`` or such a ``torch.device``)."""
    return torch.device(device).type == "cuda"


def cuda_index(device: torch.device | str) -> int:
    """The GPU index of CUDA ``device``: its own (``cuda:N``), else the process's current device
    (``cuda:LOCAL_RANK`` once :func:`resolve_device` ran under torchrun)."""
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else int(index)


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device a job runs on: ``auto`` (or None), ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` is CUDA when a GPU is visible, else CPU. A plain ``cuda`` (also from ``auto``) is
    ``cuda:LOCAL_RANK`` under ``torchrun`` (one GPU per process) and ``cuda:0`` otherwise; an
    explicit ``cuda:N`` is kept. For CUDA the process's current device is set to the result
    (``torch.cuda.set_device``), so NCCL, ``torch.cuda`` calls and bare ``"cuda"`` tensors land on
    this rank's GPU, not on GPU 0. Raises ``ConfigError`` for another name, for CUDA without a GPU
    and for an index that is not visible.
    """
    text = "auto" if name is None else str(name)
    kind, explicit = parse_device_name(text)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {text!r} requested but CUDA is not available")
    index = explicit if explicit is not None else int(os.environ.get("LOCAL_RANK") or 0)
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        where = " (from LOCAL_RANK)" if explicit is None else ""
        raise ConfigError(f"device cuda:{index}{where} is not one of the {count} visible GPUs")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def autocast(
    device: torch.device | str, dtype: str | torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """The mixed-precision context of a forward on ``device`` in compute dtype ``dtype``.

    ``dtype`` is a name of :data:`DTYPES` (or the torch dtype; None = float32). float32, or any
    dtype on a non-CUDA device, gives ``nullcontext()`` (CPU paths stay float32, bit-stable);
    float16/bfloat16 on CUDA give ``torch.autocast("cuda", dtype)``. Unknown names raise a
    ``ConfigError`` naming the valid ones.
    """
    if dtype is None:
        torch_dtype = torch.float32
    elif isinstance(dtype, torch.dtype):
        torch_dtype = dtype
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise ConfigError(f"unknown compute dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if torch_dtype == torch.float32 or not is_cuda(device):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch_dtype)


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def default_workers(device: torch.device | str, cpu_default: int = 2) -> int:
    """DataLoader worker processes for a job on ``device``.

    CPU: ``cpu_default`` (the model competes with the workers for the same cores). CUDA: the usable
    cores shared among this node's GPU processes (``LOCAL_WORLD_SIZE`` from torchrun, default 1),
    minus one for the main process, between ``cpu_default`` and :data:`MAX_AUTO_WORKERS`.
    """
    if not is_cuda(device):
        return cpu_default
    per_process = usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(cpu_default, min(MAX_AUTO_WORKERS, per_process - 1))


def prepare_model(
    module: nn.Module, device: torch.device | str, autotune: bool = True
) -> nn.Module:
    """Move ``module`` to ``device`` and, on CUDA or (CPU) when every convolution has at least
    :data:`CPU_CHANNELS_LAST_MIN` output channels, to ``channels_last`` (4-D weights NHWC; values
    unchanged). On CUDA with ``autotune`` also turn on cuDNN autotuning (worth it for fixed batch
    shapes; it re-tunes for every new input shape). Returns the same module (changed in place)."""
    module.to(device)
    convs = [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]
    if is_cuda(device) or (convs and min(convs) >= CPU_CHANNELS_LAST_MIN):
        module.to(memory_format=torch.channels_last)
    if is_cuda(device) and autotune:
        torch.backends.cudnn.benchmark = True
    return module


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Send a batch to ``device``.

    CUDA: ``non_blocking`` copy (asynchronous when ``x`` is in pinned memory) and, for a
    ``(B, 3, H, W)`` image batch, ``channels_last`` layout; values and shape are unchanged.
    CPU: ``x.to(device)`` as plain code would do it (a ``channels_last`` model still runs NHWC:
    oneDNN follows the weights' layout).
    """
    if not is_cuda(device):
        return x.to(device)
    x = x.to(device, non_blocking=True)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
