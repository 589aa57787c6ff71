"""The teacher HTTP service: FastAPI app, dynamic batcher, settings (DESIGN §9)."""

from teacher_service.service.app import create_app
from teacher_service.service.batching import DynamicBatcher
from teacher_service.service.settings import ServiceSettings, get_settings

__all__ = ["DynamicBatcher", "ServiceSettings", "create_app", "get_settings"]
