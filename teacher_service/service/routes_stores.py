"""``GET /v1/stores``, ``/v1/stores/{name}`` and cached ranges for remote trainers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response, status
from starlette.concurrency import run_in_threadpool

from teacher_service.service.deps import SettingsDep, StoresDep
from teacher_service.service.routes_embeddings import OCTET, binary_response
from teacher_service.service.schemas import ErrorResponse, StoreList
from teacher_service.service.stores import StoreRegistry

__all__ = ["router"]

router = APIRouter(prefix="/v1/stores", tags=["stores"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422)
}


@router.get("", responses=_ERRORS)
async def list_stores(stores: StoresDep) -> StoreList:
    """Names of the stores directly under the store root."""
    return StoreList(stores=await run_in_threadpool(stores.names))


def _info(stores: StoreRegistry, name: str) -> dict[str, Any]:
    with stores.lock(name):
        store = stores.open(name)
        written = store.written_mask() if store.dim is not None else None
        return {
            "name": name,
            "n": store.n,
            "views": store.views,
            "dim": store.dim,
            "num_params": store.num_params,
            "shard_size": store.shard_size,
            "num_shards": store.num_shards,
            "written": int(written.sum()) if written is not None else 0,
            "missing_shards": store.missing_shards() if written is not None else None,
            "attrs": store.attrs,
        }


@router.get("/{name}", responses=_ERRORS)
async def store_info(name: str, stores: StoresDep) -> dict[str, Any]:
    """Shape, sharding, progress (written slots, missing shards) and attrs of one store."""
    return await run_in_threadpool(_info, stores, name)


def _read_range(stores: StoreRegistry, name: str, array: str, start: int, stop: int) -> np.ndarray:
    with stores.lock(name):
        store = stores.open(name)
        if not 0 <= start < stop <= store.n:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"need 0 <= start < stop <= {store.n}, got start={start}, stop={stop}",
            )
        if array in ("embeddings", "written") and store.dim is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail=f"store {name!r} has no teacher attached yet"
            )
        if array == "params":
            return np.asarray(store.params[start:stop])
        size = store.shard_size
        parts = []
        for shard in range(start // size, (stop - 1) // size + 1):
            block = store.read_shard(shard)
            lo, hi = max(start, block.start), min(stop, block.stop)
            data = getattr(block, array)
            parts.append(data[lo - block.start : hi - block.start])
        return np.concatenate(parts, axis=0)


@router.get(
    "/{name}/embeddings",
    responses={**_ERRORS, 200: {"content": {OCTET: {}}, "description": "raw little-endian"}},
)
async def store_range(
    name: str,
    stores: StoresDep,
    settings: SettingsDep,
    start: Annotated[int, Query(ge=0, description="first row")] = 0,
    stop: Annotated[int | None, Query(ge=1, description="row after the last (default: n)")] = None,
    array: Annotated[
        Literal["embeddings", "written", "params"], Query(description="which array")
    ] = "embeddings",
    dtype: Annotated[
        Literal["float16", "float32"], Query(description="float output dtype")
    ] = "float16",
) -> Response:
    """Rows ``[start, stop)`` of a store array as raw little-endian bytes.

    ``embeddings`` -> ``(n, V, D)`` in ``dtype`` (dequantised), ``written`` -> ``(n, V)`` uint8,
    ``params`` -> ``(n, V, P)`` float32. Headers ``x-shape``, ``x-dtype``, ``x-start``, ``x-stop``.
    """
    if stop is None:
        total: int = await run_in_threadpool(lambda: stores.open(name).n)
        stop = total
    if stop - start > settings.max_range_rows:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"range of {stop - start} rows exceeds max {settings.max_range_rows}",
        )
    data = await run_in_threadpool(_read_range, stores, name, array, start, stop)
    out_dtype = {"embeddings": dtype, "written": "uint8", "params": "float32"}[array]
    return binary_response(data, out_dtype, {"x-start": str(start), "x-stop": str(stop)})
