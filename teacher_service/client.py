"""A synchronous Python client of the teacher service (``disco serve``), on httpx.

::

    from teacher_service.client import TeacherClient

    with TeacherClient("http://127.0.0.1:8000", token="...") as client:
        e = client.embed(images)                                # (N, D) centre views
        e = client.embed(images, views=4, seed=0)               # (N, 4, D) planned server-side
        e = client.embed(images, params=[p0, p1])               # explicit view params
        e = client.embed_planned("mnist5k", images, idx, view)  # (n, D) the store's planned views
        e = client.write_through("mnist5k", images, idx, view)  # ... and written into its slots
        t = client.store_range("mnist5k", 0, 128)               # (128, V, D) cached targets

Images are ``(H, W)`` / ``(H, W, 3)`` uint8 arrays (sent as PNG), PIL images, or encoded file
bytes. Embeddings travel as little-endian float16 (``Accept: application/octet-stream``) and come
back as float32 arrays, L2-normalised. Requests larger than the server's ``max_images`` /
``max_queue`` are split. 429 (queue full) and 503 (not ready) are retried after the server's
``Retry-After`` (else exponential backoff), connection errors with exponential backoff, both at
most ``retries`` times; any other 4xx/5xx raises :class:`ServiceError` naming status and detail.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import numpy as np

from store.errors import DiscoError

__all__ = [
    "ImageLike",
    "ServiceBusyError",
    "ServiceError",
    "ServiceUnavailableError",
    "TeacherClient",
]

ImageLike = np.ndarray | bytes | bytearray | memoryview | str | os.PathLike[str] | Any
"""An image: uint8 array (H, W[, 3]), a PIL image, encoded file bytes, or a file path."""

OCTET = "application/octet-stream"
_RETRY_STATUS = (429, 503)


class ServiceError(DiscoError, RuntimeError):
    """The service refused or failed a request: ``status`` (HTTP code, 0 without an answer) and
    ``detail`` (the server's explanation)."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = "") -> None:
        text = detail if isinstance(detail, str) else json.dumps(detail)[:500]
        where = f" on {method} {path}" if method else ""
        super().__init__(f"teacher service answered {status}{where}: {text}")
        self.status = status
        self.detail = detail


class ServiceBusyError(ServiceError):
    """Still 429 (queue full) or 503 (not ready) after every retry."""


class ServiceUnavailableError(ServiceError, ConnectionError):
    """No answer (connection refused/reset, timeout) after every retry."""


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def encode_image(image: ImageLike) -> bytes:
    """Encoded bytes of ``image``: arrays and PIL images as lossless PNG, bytes as they are,
    a path's file contents. Raises ``ValueError`` for another type or array layout."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    # lazy: Pillow only when encoding an image array (the client needs httpx + numpy)
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"image arrays must be uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise ValueError(f"cannot send an image of type {type(image).__name__}")


def _read_binary(response: httpx.Response) -> np.ndarray:
    """``x-shape`` / ``x-dtype`` little-endian bytes -> float32 (or uint8) array."""
    shape = tuple(int(s) for s in response.headers["x-shape"].split(",") if s)
    dtype = np.dtype(response.headers["x-dtype"]).newbyteorder("<")
    data = np.frombuffer(response.content, dtype=dtype).reshape(shape)
    return data.astype(np.float32) if data.dtype.kind == "f" else data.copy()


class TeacherClient:
    """Client of one teacher service at ``url`` (e.g. ``http://127.0.0.1:8000``).

    ``token``: bearer token (None: none). ``timeout``: seconds per HTTP call. ``retries``: extra
    attempts after a 429/503 or a connection error; waits honour ``Retry-After``, else
    ``backoff_s * 2**attempt`` capped at ``max_backoff_s``. ``transport``: an httpx transport
    (tests); ``sleep``: the wait function (tests record the waits).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("retries, backoff_s and max_backoff_s must be >= 0")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self._model: dict[str, Any] | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        if retry_after is not None:
            with contextlib.suppress(ValueError):  # an HTTP-date: keep the backoff
                delay = max(0.0, float(retry_after))
        self._sleep(delay)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with the retry policy; returns a 2xx response or raises
        :class:`ServiceError` (4xx/5xx), :class:`ServiceBusyError` (429/503 after every retry)
        or :class:`ServiceUnavailableError` (no answer after every retry)."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    detail = f"no answer from {self.url} after {attempt + 1} tries: {exc!r}"
                    raise ServiceUnavailableError(0, detail, method, path) from None
                self._wait(attempt, None)
                continue
            if response.status_code < 400:
                return response
            if response.status_code in _RETRY_STATUS:
                if last:
                    raise ServiceBusyError(response.status_code, _detail(response), method, path)
                self._wait(attempt, response.headers.get("retry-after"))
                continue
            raise ServiceError(response.status_code, _detail(response), method, path)
        raise AssertionError("unreachable")  # the loop returns or raises

    # -- service identity -------------------------------------------------------------------

    def healthz(self) -> bool:
        """True when the process answers ``/healthz`` (no retries)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        """True when ``/readyz`` says the teacher is loaded (no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout_s: float = 120.0, poll_s: float = 0.2) -> None:
        """Block until :meth:`ready`; :class:`ServiceUnavailableError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(0, f"{self.url} not ready after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def model(self) -> dict[str, Any]:
        """``GET /v1/model``: teacher identity (arch, sha256, embed_dim, recipe, device) and the
        server's limits (cached after the first call)."""
        if self._model is None:
            self._model = dict(self.request("GET", "/v1/model").json())
        return self._model

    # -- embeddings -------------------------------------------------------------------------

    def _chunk(self, views: int) -> int:
        info = self.model()
        return max(1, min(int(info["max_images"]), int(info["max_queue"]) // max(1, views)))

    def _post(
        self, images: Sequence[bytes], options: dict[str, Any], dtype: str
    ) -> tuple[np.ndarray, httpx.Response]:
        files = [("image", (f"{i}.img", data, OCTET)) for i, data in enumerate(images)]
        response = self.request(
            "POST",
            "/v1/embeddings",
            params={"dtype": dtype},
            files=files,
            data={"options": json.dumps(options)},
            headers={"Accept": OCTET},
        )
        return _read_binary(response), response

    def embed(
        self,
        images: Sequence[ImageLike],
        params: Sequence[Any] | None = None,
        views: int | None = None,
        seed: int = 0,
        dtype: str = "float16",
    ) -> np.ndarray:
        """Teacher embeddings of ``images`` -> float32, L2-normalised.

        No ``params``/``views``: the centre view, ``(N, D)``. ``views=k``: k views per image
        planned server-side from ``seed`` (the plan keys on the image's position in the whole
        call), ``(N, k, D)``. ``params``: one ``(P,)`` (-> ``(N, D)``) or ``(V, P)`` (->
        ``(N, V, D)``) array per image, in the recipe of :meth:`model`. ``dtype``: wire dtype,
        float16 (half the bytes; exact enough for unit vectors) or float32.
        """
        if params is not None and views is not None:
            raise ValueError("give params or views, not both")
        if params is not None and len(params) != len(images):
            raise ValueError(f"{len(params)} params for {len(images)} images")
        if not images:
            raise ValueError("no images")
        per_image = 1
        if views is not None:
            per_image = views
        elif params is not None:
            first = np.asarray(params[0])
            per_image = first.shape[0] if first.ndim == 2 else 1
        step = self._chunk(per_image)
        if views is not None and len(images) > step:
            raise ValueError(
                f"views= plans by position within one request: send at most {step} images per "
                "call, or explicit params"
            )
        parts = []
        for lo in range(0, len(images), step):
            hi = min(len(images), lo + step)
            options: dict[str, Any] = {}
            if views is not None:
                options.update(views=views, seed=seed)
            if params is not None:
                options["images"] = [
                    {"params": np.asarray(p, dtype=np.float64).tolist()} for p in params[lo:hi]
                ]
            out, _ = self._post([encode_image(im) for im in images[lo:hi]], options, dtype)
            parts.append(out)
        return np.concatenate(parts, axis=0)

    def embed_planned(
        self,
        store: str,
        images: Sequence[ImageLike],
        indices: Sequence[int],
        views: Sequence[int],
        dtype: str = "float16",
    ) -> np.ndarray:
        """The teacher's embedding of the store's planned view ``(indices[k], views[k])`` of each
        image, ``(n, D)`` float32, without writing anything: the slots' params are read from
        the service (``views/params``) and sent back as explicit params. ``images[k]`` must be
        the store's image of row ``indices[k]``. Raises ``ValueError`` when the store's recipe
        is not the one the service renders request params with.
        """
        if not len(images) == len(indices) == len(views):
            raise ValueError("images, indices and views must have one entry each per slot")
        info = self.store_info(store)
        stored, served = info["attrs"].get("recipe") or {}, self.model()["recipe"]
        if (stored.get("name"), stored.get("size")) != (served["name"], served["size"]):
            raise ValueError(
                f"store {store!r} was planned with recipe {stored.get('name')}@"
                f"{stored.get('size')}px, the service renders {served['name']}@"
                f"{served['size']}px; use write_through or a service with that recipe"
            )
        rows = {i: self.store_range(store, i, i + 1, array="params")[0] for i in set(indices)}
        params = [rows[i][v] for i, v in zip(indices, views, strict=True)]
        return self.embed(images, params=params, dtype=dtype)

    def write_through(
        self,
        store: str,
        images: Sequence[ImageLike],
        indices: Sequence[int],
        views: Sequence[int],
        dtype: str = "float16",
        target: str | None = None,
    ) -> np.ndarray:
        """Embed the store's planned view of each slot ``(indices[k], views[k])`` and write it
        into that slot (the service attaches itself as the store's teacher if it has none);
        returns the embeddings ``(n, D)`` float32. ``target``: the teacher of a store of
        several to write (None: its only one)."""
        if not len(images) == len(indices) == len(views):
            raise ValueError("images, indices and views must have one entry each per slot")
        step = self._chunk(1)
        parts = []
        for lo in range(0, len(images), step):
            hi = min(len(images), lo + step)
            options: dict[str, Any] = {
                "store": store,
                **({"target": target} if target is not None else {}),
                "images": [
                    {"index": int(i), "view": int(v)}
                    for i, v in zip(indices[lo:hi], views[lo:hi], strict=True)
                ],
            }
            out, _ = self._post([encode_image(im) for im in images[lo:hi]], options, dtype)
            parts.append(out)
        return np.concatenate(parts, axis=0)

    # -- stores -----------------------------------------------------------------------------

    def stores(self) -> list[str]:
        """Names of the stores under the service's store root."""
        return list(self.request("GET", "/v1/stores").json()["stores"])

    def store_info(self, name: str) -> dict[str, Any]:
        """``GET /v1/stores/{name}``: n, views, dim, written count, missing shards, attrs."""
        return dict(self.request("GET", f"/v1/stores/{name}").json())

    def store_range(
        self,
        name: str,
        start: int = 0,
        stop: int | None = None,
        array: str = "embeddings",
        dtype: str = "float16",
    ) -> np.ndarray:
        """Rows ``[start, stop)`` of a store array: ``embeddings`` ``(n, V, D)`` float32,
        ``params`` ``(n, V, P)`` float32, ``written`` ``(n, V)`` uint8."""
        query: dict[str, Any] = {"start": start, "array": array, "dtype": dtype}
        if stop is not None:
            query["stop"] = stop
        return _read_binary(self.request("GET", f"/v1/stores/{name}/embeddings", params=query))
