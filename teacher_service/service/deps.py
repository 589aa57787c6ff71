"""FastAPI dependencies of the service, as ``Annotated`` aliases routes declare as parameters.

Every dependency is ``async def``: they only read the app state, and FastAPI runs a plain
``def`` dependency in its thread pool, a thread hop per dependency per request (eight per
embedding request) that the bench measured as time outside the handler under load."""

from __future__ import annotations

import hmac
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from teacher_service.service.batching import DynamicBatcher
from teacher_service.service.metrics import ServiceMetrics
from teacher_service.service.model import TeacherRuntime
from teacher_service.service.settings import ServiceSettings
from teacher_service.service.stores import StoreRegistry

__all__ = [
    "BatcherDep",
    "MetricsDep",
    "PrepPoolDep",
    "RuntimeDep",
    "ServiceState",
    "SettingsDep",
    "StateDep",
    "StoresDep",
    "require_token",
]


@dataclass
class ServiceState:
    """Everything one app instance owns; lives at ``app.state.service``.

    ``runtime``, ``batcher`` and ``prep_pool`` (the threads that decode and render request
    images) are set by the lifespan once the teacher is loaded.
    """

    settings: ServiceSettings
    metrics: ServiceMetrics
    stores: StoreRegistry
    runtime: TeacherRuntime | None = None
    batcher: DynamicBatcher | None = None
    prep_pool: ThreadPoolExecutor | None = None


async def get_state(request: Request) -> ServiceState:
    """The app's :class:`ServiceState`."""
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_service_settings(state: StateDep) -> ServiceSettings:
    """The settings the app was created with (read once; see ``settings.get_settings``)."""
    return state.settings


async def get_metrics(state: StateDep) -> ServiceMetrics:
    """The app's metrics registry."""
    return state.metrics


async def get_stores(state: StateDep) -> StoreRegistry:
    """The app's store registry (names resolved under the store root)."""
    return state.stores


async def get_runtime(state: StateDep) -> TeacherRuntime:
    """The loaded teacher; 503 while it is not loaded."""
    if state.runtime is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="model not loaded")
    return state.runtime


async def get_batcher(state: StateDep) -> DynamicBatcher:
    """The running batcher; 503 while it is not running."""
    if state.batcher is None or not state.batcher.running:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="model worker not running")
    return state.batcher


async def get_prep_pool(state: StateDep) -> ThreadPoolExecutor:
    """The decode/render thread pool; 503 while the service is not running."""
    if state.prep_pool is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="service not running")
    return state.prep_pool


SettingsDep = Annotated[ServiceSettings, Depends(get_service_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
StoresDep = Annotated[StoreRegistry, Depends(get_stores)]
RuntimeDep = Annotated[TeacherRuntime, Depends(get_runtime)]
BatcherDep = Annotated[DynamicBatcher, Depends(get_batcher)]
PrepPoolDep = Annotated[ThreadPoolExecutor, Depends(get_prep_pool)]


async def require_token(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """401 unless ``Authorization: Bearer <token>`` matches the configured token (if any)."""
    if settings.token is None:
        return
    expected = settings.token.get_secret_value()
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), expected.encode("utf-8")
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token" if authorization else "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
