"""``GET /healthz`` (alive), ``/readyz`` (model loaded): never a token; ``/metrics`` (Prometheus).

Health reveals nothing but "up" / "ready", so probes and container health checks need no
secret. ``/metrics`` is mounted by the app per the ``metrics`` setting: open (default), behind
the token, or not at all."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse

from teacher_service.service.deps import MetricsDep, StateDep
from teacher_service.service.metrics import CONTENT_TYPE_LATEST

__all__ = ["metrics_router", "router"]

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["metrics"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers HTTP. Always 200, no token needed."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """Readiness: 200 when the teacher is loaded and the batch worker runs, else 503. No token."""
    ready = state.runtime is not None and state.batcher is not None and state.batcher.running
    return JSONResponse(
        {"status": "ready" if ready else "not ready"},
        status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@metrics_router.get("/metrics")
async def metrics(registry: MetricsDep) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
