"""Device-dependent speed settings for the heavy paths (precompute, service, training, eval).

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

import os

import torch
from torch import nn

__all__ = [
    "CPU_CHANNELS_LAST_MIN",
    "MAX_AUTO_WORKERS",
    "default_workers",
    "prepare_model",
    "to_device",
    "usable_cpus",
]

CPU_CHANNELS_LAST_MIN = 16
"""Narrowest convolution (output channels) for which CPU models go ``channels_last``."""

MAX_AUTO_WORKERS = 16
"""Cap of the automatic worker count per GPU process (more workers mostly cost host RAM)."""


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


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
    if not _is_cuda(device):
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
    if _is_cuda(device) or (convs and min(convs) >= CPU_CHANNELS_LAST_MIN):
        module.to(memory_format=torch.channels_last)
    if _is_cuda(device) and autotune:
        torch.backends.cudnn.benchmark = True
    return module


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Send a batch to ``device``.

    CUDA: ``non_blocking`` copy (asynchronous when ``x`` is in pinned memory) and, for a
    ``(B, 3, H, W)`` image batch, ``channels_last`` layout; values and shape are unchanged.
    CPU: ``x.to(device)`` as plain code would do it (a ``channels_last`` model still runs NHWC:
    oneDNN follows the weights' layout).
    """
    if not _is_cuda(device):
        return x.to(device)
    x = x.to(device, non_blocking=True)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
