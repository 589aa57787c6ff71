"""The FastAPI app: ``create_app(settings)`` wires routers, limits, metrics and the lifespan.

The lifespan loads the teacher (unless a loaded runtime is passed in), warms it with one forward,
and runs the :class:`~teacher_service.service.batching.DynamicBatcher` until shutdown. An ASGI
guard in front of every route gives the request its id (echoed in ``X-Request-ID``), counts it
by route template and status, writes its access log line (``teacher_service.service.logs``), and
refuses bodies over ``max_body_bytes`` (413) from the ``Content-Length`` header or while they
stream in.

Who needs the bearer token (when ``token`` is set): every ``/v1/*`` route. ``/healthz`` and
``/readyz`` never do (they reveal nothing, and container health checks poll them);
``/metrics`` follows the ``metrics`` switch (open / token / off) and the OpenAPI schema and
pages the ``docs`` switch. Errors map to statuses in one table, :data:`ERROR_STATUS`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.errors import DiscoError, StoreError, StoreMismatchError, StoreNotFoundError
from store.views import render_views, resolve_renderer
from teacher_service.service import routes_embeddings, routes_health, routes_stores
from teacher_service.service.batching import DynamicBatcher
from teacher_service.service.deps import ServiceState, require_token
from teacher_service.service.logs import ACCESS_LOGGER, request_id_of
from teacher_service.service.metrics import ServiceMetrics
from teacher_service.service.model import TeacherRuntime, load_runtime
from teacher_service.service.settings import ServiceSettings, get_settings
from teacher_service.service.stores import InvalidStoreNameError, StoreRegistry, UnknownStoreError
from teacher_service.service.writethrough import StoreWriteError

__all__ = ["ERROR_STATUS", "BodyTooLargeError", "create_app"]

log = logging.getLogger("teacher_service.service")
access_log = logging.getLogger(ACCESS_LOGGER)


class BodyTooLargeError(Exception):
    """The request body grew past ``max_body_bytes`` while streaming in (answer 413)."""


def _route_label(templates: list[tuple[re.Pattern[str], str]], scope: Scope) -> str:
    """The route template of a request (``/v1/stores/{name}``), bounded label cardinality."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    for regex, template in templates:
        if regex.match(scope.get("path", "")):
            return template
    return "unmatched"


class GuardMiddleware:
    """Give every request an id, count it (route template, method, status), log its access line,
    and cap the body size."""

    def __init__(
        self, app: ASGIApp, templates: list[tuple[re.Pattern[str], str]], state: ServiceState
    ) -> None:
        self.app = app
        self.templates = templates
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.state.settings.max_body_bytes
        code = 500
        started = time.perf_counter()
        request_id = request_id_of(scope.get("headers", []))
        # Routes put what the access line should carry (images, timings) in request.state.
        info: dict[str, Any] = scope.setdefault("state", {})
        info["request_id"] = request_id
        echoed = (b"x-request-id", request_id.encode("latin-1"))

        async def send_counted(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), echoed]}
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and (declared < 0 or declared > limit):
                await _json(
                    scope, send_counted, 413, f"request body of {declared} bytes exceeds {limit}"
                )
                return
            received = 0

            async def receive_capped() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLargeError(f"request body exceeds {limit} bytes")
                return message

            await self.app(scope, receive_capped, send_counted)
        finally:
            route = _route_label(self.templates, scope)
            method = scope.get("method", "")
            self.state.metrics.requests.labels(route, method, str(code)).inc()
            if access_log.isEnabledFor(logging.INFO):
                extra: dict[str, Any] = {
                    "request_id": request_id,
                    "route": route,
                    "method": method,
                    "path": scope.get("path", ""),
                    "status": code,
                    "duration_ms": round(1000 * (time.perf_counter() - started), 3),
                }
                extra.update(info.get("access", {}))
                access_log.info("%s %s %d", method, route, code, extra=extra)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


async def _json(scope: Scope, send: Send, code: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=code, headers={"Connection": "close"})
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


ERROR_STATUS: dict[type[Exception], int] = {
    BodyTooLargeError: status.HTTP_413_CONTENT_TOO_LARGE,
    InvalidStoreNameError: status.HTTP_400_BAD_REQUEST,
    UnknownStoreError: status.HTTP_404_NOT_FOUND,
    StoreNotFoundError: status.HTTP_404_NOT_FOUND,
    StoreMismatchError: status.HTTP_409_CONFLICT,
    StoreWriteError: status.HTTP_500_INTERNAL_SERVER_ERROR,
    StoreError: status.HTTP_409_CONFLICT,
    DiscoError: status.HTTP_422_UNPROCESSABLE_CONTENT,
}
"""The one mapping of project errors to HTTP statuses (the most specific class wins; the detail
is the error's message). Library code raises these errors, never ``HTTPException``: another
teacher or rendering in a store is a conflict (409), a store that cannot be written a server
failure (500), any other store error a conflict with the store's state (409)."""


def _install_error_handlers(app: FastAPI) -> None:
    def handler(code: int) -> Any:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            if code >= 500:
                log.error("%s on %s %s: %s", type(exc).__name__, request.method,
                          request.url.path, exc)  # fmt: skip
            return JSONResponse({"detail": str(exc)}, status_code=code)

        return handle

    for error, code in ERROR_STATUS.items():
        app.add_exception_handler(error, handler(code))

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error: {type(exc).__name__}"},
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    app.add_exception_handler(Exception, internal)


def _warm_up(runtime: TeacherRuntime, renderer: str) -> None:
    """One forward (and, for the batched renderer, one render of a planned view on the model's
    device), so the first request pays no start-up cost and a recipe the batched renderer does
    not support fails at start-up (ConfigError naming the reference renderer), not per request."""
    size = runtime.recipe.size
    if renderer == "batched":
        image = np.zeros((size + 8, size + 8, 3), dtype=np.uint8)
        params = runtime.recipe.sample(0, 0, 0, size + 8, size + 8)[None]
        x = render_views([image], params, runtime.recipe, runtime.device)
    else:
        x = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    runtime.embed(x)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the teacher (in a thread), warm it up, run the batch worker until shutdown."""
    state: ServiceState = app.state.service
    settings = state.settings
    if state.runtime is None:
        state.runtime = await run_in_threadpool(
            load_runtime,
            settings.teacher,
            settings.device,
            settings.precision,
            settings.recipe,
            settings.threads,
            settings.size,
            settings.teacher_weights,
            settings.teacher_pooling,
        )
    runtime = state.runtime
    size = runtime.recipe.size
    renderer = resolve_renderer(settings.renderer, runtime.device)
    await run_in_threadpool(_warm_up, runtime, renderer)
    log.info(
        "teacher %s (%s...) on %s, D=%d, recipe %s@%dpx, %s renderer",
        runtime.info.get("arch"),
        runtime.sha256[:12],
        runtime.device,
        runtime.embed_dim,
        runtime.recipe.name,
        size,
        renderer,
    )
    batcher = DynamicBatcher(
        runtime.embed,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000.0,
        max_queue=settings.max_queue,
        metrics=state.metrics,
    )
    await batcher.start()
    state.batcher = batcher
    state.prep_pool = ThreadPoolExecutor(settings.prep_threads, thread_name_prefix="disco-prep")
    try:
        yield
    finally:
        state.batcher = None
        await batcher.stop()
        pool, state.prep_pool = state.prep_pool, None
        pool.shutdown(wait=False, cancel_futures=True)


def create_app(
    settings: ServiceSettings | None = None, runtime: TeacherRuntime | None = None
) -> FastAPI:
    """Build the service app. ``settings`` default to :func:`get_settings` (environment);
    ``runtime`` skips loading the checkpoint in the lifespan (an already-loaded teacher)."""
    settings = settings if settings is not None else get_settings()
    state = ServiceState(
        settings=settings,
        metrics=ServiceMetrics(),
        stores=StoreRegistry(settings.store_root),
        runtime=runtime,
    )
    docs = settings.docs  # the schema holds no secrets: open with a token too, unless switched off
    app = FastAPI(
        title="DisCo teacher service",
        summary="Teacher embeddings on demand, dynamically batched; write-through to stores.",
        version="1",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.service = state
    guarded = [Depends(require_token)]
    routers = [
        (routes_health.router, []),
        (routes_embeddings.router, guarded),
        (routes_stores.router, guarded),
    ]
    if settings.metrics != "off":
        routers.append(
            (routes_health.metrics_router, guarded if settings.metrics == "token" else [])
        )
    templates = []
    for router, dependencies in routers:
        app.include_router(router, dependencies=dependencies)
        templates += [(r.path_regex, r.path) for r in router.routes if isinstance(r, APIRoute)]
    _install_error_handlers(app)
    app.add_middleware(GuardMiddleware, templates=templates, state=state)
    return app
