"""``GET /healthz`` (alive, never needs a token), ``/readyz`` (model loaded) and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import JSONResponse

from teacher_service.service.deps import MetricsDep, StateDep, require_token
from teacher_service.service.metrics import CONTENT_TYPE_LATEST

__all__ = ["open_router", "router"]

open_router = APIRouter(tags=["health"])
router = APIRouter(tags=["health"], dependencies=[Depends(require_token)])


@open_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers HTTP. Always 200, no token needed."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """Readiness: 200 when the teacher is loaded and the batch worker runs, else 503."""
    ready = state.runtime is not None and state.batcher is not None and state.batcher.running
    return JSONResponse(
        {"status": "ready" if ready else "not ready"},
        status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get("/metrics")
async def metrics(registry: MetricsDep) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
