"""The teacher HTTP service: FastAPI app, dynamic batcher, settings (DESIGN §9).

The names load from their modules on first use (``store.lazy``): importing the package, as
``disco --help`` does, imports no torch, zarr or torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.lazy import lazy_exports

if TYPE_CHECKING:
    from teacher_service.service.app import create_app
    from teacher_service.service.batching import DynamicBatcher
    from teacher_service.service.settings import ServiceSettings, get_settings

__all__ = [
    "DynamicBatcher",
    "ServiceSettings",
    "create_app",
    "get_settings",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DynamicBatcher": "teacher_service.service.batching",
        "ServiceSettings": "teacher_service.service.settings",
        "create_app": "teacher_service.service.app",
        "get_settings": "teacher_service.service.settings",
    },
)
