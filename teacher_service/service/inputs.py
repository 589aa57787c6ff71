"""Turn a ``POST /v1/embeddings`` body into model rows: parse, check, decode, plan, render.

Two body forms carry the same request:

* ``application/json``: :class:`~teacher_service.service.schemas.EmbedRequest`, images as base64.
* ``multipart/form-data``: one file part per image (any field name, order kept), plus optional
  text parts ``options`` (JSON :class:`~teacher_service.service.schemas.MultipartOptions`) and/or
  ``views`` / ``seed`` / ``store``.

Every problem with the input becomes an ``HTTPException`` with a 4xx status and a ``detail`` that
says what is wrong; nothing here lets bad bytes escape as another exception type.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from fastapi import HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from store.decode import decode_image
from store.errors import DecodeError, DiscoError
from store.views import Recipe, render_center, render_centers, render_view, render_views
from teacher_service.service.jpeg import decode_jpeg_device
from teacher_service.service.schemas import (
    EmbedOptions,
    EmbedRequest,
    ImageOptions,
    MultipartOptions,
)
from teacher_service.service.settings import ServiceSettings
from teacher_service.service.viewparams import ViewParamsError, check_view_params
from teacher_service.sources import to_pixels

__all__ = [
    "ImageJob",
    "ParsedRequest",
    "Prepared",
    "SlotTarget",
    "check_request",
    "parse_json",
    "parse_multipart",
    "prepare",
]

_FORM_FIELDS = ("views", "seed", "store")

Source = np.ndarray | torch.Tensor
"""A decoded image: (H, W, 3) uint8, a numpy array (Pillow) or a tensor on the device (nvjpeg)."""


@dataclass
class ImageJob:
    """One image of a request: encoded bytes and its options (``params`` as sent, unchecked)."""

    key: str
    data: bytes
    params: Any = None
    index: int | None = None
    view: int | None = None


@dataclass
class ParsedRequest:
    """A syntactically valid request: shared options and the images in output order."""

    options: EmbedOptions
    jobs: list[ImageJob]


@dataclass
class SlotTarget:
    """What write-through needs from a store: its recipe and planned views ``(N, V, P)``,
    image sizes ``(N,)`` and validity ``(N,)`` from its manifest."""

    recipe: Recipe
    params: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    valid: np.ndarray


@dataclass
class Prepared:
    """Rendered rows ``(R, 3, S, S)`` uint8 pixels (on the renderer's device) and the leading
    output shape ``(N,)``/``(N, V)``; ``slots`` lists the write-through (index, view) per row,
    else None."""

    rows: torch.Tensor
    shape: tuple[int, ...]
    slots: list[tuple[int, int]] | None


def _unprocessable(detail: Any) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def _validate(model: type[BaseModel], obj: Any) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise _unprocessable(jsonable_encoder(errors)) from None


def _loads(raw: bytes | str, what: str) -> Any:
    try:
        return orjson.loads(raw)  # fast path
    except ValueError:
        pass  # refused: let the stdlib parser say why (it also reads NaN, refused later by name)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise _unprocessable(f"{what} is not valid JSON: {exc}") from None


def _b64(data: str, key: str) -> bytes:
    if data.startswith("data:") and "," in data[:256]:
        data = data.split(",", 1)[1]
    # strict a2b_base64 refuses what b64decode(validate=True) refuses, checked in C instead of
    # by a regex over the whole text (0.19 -> 0.14 ms for a 60 KB image here).
    try:
        try:
            return binascii.a2b_base64(data, strict_mode=True)  # no whitespace: no copy
        except (binascii.Error, ValueError):
            return binascii.a2b_base64("".join(data.split()), strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise _unprocessable(f"{key}.data is not valid base64: {exc}") from None


def parse_json(body: bytes) -> ParsedRequest:
    """Parse a JSON body into a :class:`ParsedRequest` (422 on malformed JSON/base64/fields)."""
    req: EmbedRequest = _validate(EmbedRequest, _loads(body, "the request body"))
    jobs = [
        ImageJob(f"images[{i}]", _b64(img.data, f"images[{i}]"), img.params, img.index, img.view)
        for i, img in enumerate(req.images)
    ]
    options = EmbedOptions(views=req.views, seed=req.seed, store=req.store, target=req.target)
    return ParsedRequest(options, jobs)


def _allowed_part_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media in ("", "application/octet-stream") or media.startswith("image/")


async def parse_multipart(request: Request, settings: ServiceSettings) -> ParsedRequest:
    """Parse a multipart body (file parts = images); 415 for a non-image part type."""
    try:
        form = await request.form(
            max_files=settings.max_images, max_fields=8, max_part_size=1024 * 1024
        )
    except HTTPException as exc:  # starlette's MultiPartException, raised as a 400
        detail = str(exc.detail)
        if "Too many files" in detail:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                detail=f"too many images: at most {settings.max_images} per request",
            ) from None
        raise _unprocessable(f"malformed multipart body: {detail}") from None
    try:
        files: list[tuple[str, UploadFile]] = []
        fields: dict[str, Any] = {}
        options_text: str | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((name, value))
            elif name == "options":
                options_text = value
            elif name in _FORM_FIELDS and name not in fields:
                fields[name] = value
            else:
                raise _unprocessable(
                    f"unexpected form field {name[:64]!r}: send images as file parts and "
                    f"options in 'options' (JSON) or {', '.join(_FORM_FIELDS)}"
                )
        options_obj: dict[str, Any] = {}
        if options_text is not None:
            loaded = _loads(options_text, "the 'options' part")
            if not isinstance(loaded, dict):
                raise _unprocessable("the 'options' part must be a JSON object")
            options_obj = loaded
        for name, value in fields.items():
            if name in options_obj:
                raise _unprocessable(f"{name!r} given both as a field and in 'options'")
            options_obj[name] = value
        opts: MultipartOptions = _validate(MultipartOptions, options_obj)
        if not files:
            raise _unprocessable("no image: send at least one file part")
        per_image: list[ImageOptions] = opts.images or [ImageOptions() for _ in files]
        if len(per_image) != len(files):
            raise _unprocessable(
                f"'options.images' has {len(per_image)} entries for {len(files)} file parts"
            )
        jobs = []
        for i, ((name, upload), img) in enumerate(zip(files, per_image, strict=True)):
            if not _allowed_part_type(upload.content_type):
                raise HTTPException(
                    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                    detail=f"file part {i} ({name[:64]!r}) has content type "
                    f"{upload.content_type!r}; send image/* or application/octet-stream",
                )
            data = await upload.read()
            jobs.append(ImageJob(f"images[{i}]", data, img.params, img.index, img.view))
        return ParsedRequest(
            EmbedOptions(views=opts.views, seed=opts.seed, store=opts.store, target=opts.target),
            jobs,
        )
    finally:
        await form.close()


def check_request(parsed: ParsedRequest, settings: ServiceSettings) -> int:
    """Check counts and option combinations before any decoding (413 / 422); returns the
    number of model rows (image views) the request needs."""
    jobs, opts = parsed.jobs, parsed.options
    if len(jobs) > settings.max_images:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"too many images: {len(jobs)} > max {settings.max_images} per request",
        )
    with_params = [j for j in jobs if j.params is not None]
    with_slot = [j for j in jobs if j.index is not None or j.view is not None]
    if opts.store is not None:
        if with_params or opts.views is not None:
            raise _unprocessable(
                "write-through renders the store's planned view of each slot: "
                "do not send 'params' or 'views' together with 'store'"
            )
        missing = [j.key for j in jobs if j.index is None or j.view is None]
        if missing:
            raise _unprocessable(f"write-through needs 'index' and 'view' for {missing[0]}")
        slots = [(j.index, j.view) for j in jobs]
        if len(set(slots)) != len(slots):
            raise _unprocessable("write-through slots (index, view) must be distinct")
        views = 1
    else:
        if with_slot:
            raise _unprocessable(f"{with_slot[0].key}: 'index'/'view' need 'store' (write-through)")
        if opts.views is not None and with_params:
            raise _unprocessable("give either per-image 'params' or 'views', not both")
        if with_params and len(with_params) != len(jobs):
            raise _unprocessable("either every image has 'params' or none has")
        views = opts.views or 1
        if with_params:
            shapes = {_params_shape(j) for j in jobs}
            if len(shapes) != 1:
                raise _unprocessable(
                    "all images must send params of the same shape, (P,) or (V, P) with one V"
                )
            shape = shapes.pop()
            views = shape[0] if len(shape) == 2 else 1
    if views > settings.max_views:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"too many views: {views} > max {settings.max_views} per image",
        )
    rows = views * len(jobs)
    if rows > settings.max_queue:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"request needs {rows} model rows; the queue holds at most {settings.max_queue}",
        )
    return rows


def _params_shape(job: ImageJob) -> tuple[int, ...]:
    try:
        arr = np.asarray(job.params, dtype=np.float64)
    except (ValueError, TypeError):
        raise _unprocessable(f"{job.key}.params must be a rectangular (V, P) array") from None
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise _unprocessable(f"{job.key}.params must have shape (P,) or (V, P), got {arr.shape}")
    return tuple(arr.shape)


def _decode(job: ImageJob, max_pixels: int, device: torch.device | None = None) -> Source:
    """Decode one image: ``(H, W, 3)`` uint8, on ``device`` (nvjpeg) when given and the bytes
    are a JPEG that path handles, else a numpy array from Pillow (422 for undecodable bytes)."""
    try:
        if device is not None:
            on_device = decode_jpeg_device(job.data, device, key=job.key, max_pixels=max_pixels)
            if on_device is not None:
                return on_device
        return decode_image(job.data, key=job.key, max_pixels=max_pixels)
    except DecodeError as exc:
        raise _unprocessable(str(exc)) from None


def _render(image: np.ndarray, params: np.ndarray, recipe: Recipe, key: str) -> torch.Tensor:
    try:
        return render_view(image, params, recipe)
    except (DiscoError, ValueError, IndexError, RuntimeError) as exc:
        raise _unprocessable(f"{key}: cannot render the view: {exc}") from None


@dataclass
class _Views:
    """What :func:`prepare` renders: per row its source image and params (None: centre view)."""

    recipe: Recipe
    sources: list[Source]
    params: list[np.ndarray | None]
    keys: list[str]


def _render_reference(views: _Views) -> torch.Tensor:
    """Per-view reference renders -> ``(R, 3, S, S)`` uint8 pixels on the CPU (exact inverse of
    the reference's normalisation)."""
    rows = []
    for image, params, key in zip(views.sources, views.params, views.keys, strict=True):
        assert isinstance(image, np.ndarray)
        if params is None:
            rows.append(render_center(image, views.recipe))
        else:
            rows.append(_render(image, params, views.recipe, key))
    return to_pixels(torch.stack(rows), views.recipe.mean, views.recipe.std)


def _render_batched(views: _Views, device: torch.device) -> torch.Tensor:
    """All views of the request in one batched render on ``device``: ``(R, 3, S, S)`` uint8.

    A request is homogeneous (check_request): every row has params, or every row is a centre
    view; a DisCo error (a box outside its image) is a 422 naming the request's images."""
    try:
        if views.params[0] is None:
            return render_centers(views.sources, views.recipe, device)
        params = np.stack([p for p in views.params if p is not None]).astype(np.float32)
        return render_views(views.sources, params, views.recipe, device)
    except (DiscoError, ValueError, IndexError) as exc:
        first, last = views.keys[0], views.keys[-1]
        where = first if first == last else f"{first}..{last}"
        raise _unprocessable(f"{where}: cannot render the views: {exc}") from None


def prepare(
    parsed: ParsedRequest,
    recipe: Recipe,
    target: SlotTarget | None,
    settings: ServiceSettings,
    renderer: str = "reference",
    device: torch.device | str = "cpu",
) -> Prepared:
    """Decode every image, resolve its views and render them (blocking: run in a thread).

    Views: write-through -> the store's ``params[index, view]``; ``views: k`` ->
    ``recipe.sample(seed, position, v, H, W)``; per-image params -> checked against ``recipe``;
    otherwise the un-augmented centre view. ``renderer`` (resolved: ``reference`` or
    ``batched``): ``reference`` renders each view on the CPU with ``render_view``; ``batched``
    renders all the request's views in one ``render_views`` call on ``device`` (the model's),
    same bytes on CPU. With ``settings.decode == "device"``, a CUDA ``device`` and the batched
    renderer, JPEGs of requests without write-through are decoded by nvjpeg on the device.
    Returns rows ``(R, 3, S, S)`` uint8 pixels: on ``device`` (batched) or the CPU (reference).
    """
    opts = parsed.options
    dev = torch.device(device)
    batched = renderer == "batched"
    gpu_decode = batched and settings.decode == "device" and dev.type == "cuda" and target is None
    views_in = _Views(target.recipe if target is not None else recipe, [], [], [])
    slots: list[tuple[int, int]] | None = [] if target is not None else None
    views = 1
    single = True

    def add(image: Source, params: np.ndarray | None, key: str) -> None:
        views_in.sources.append(image)
        views_in.params.append(params)
        views_in.keys.append(key)

    for pos, job in enumerate(parsed.jobs):
        image = _decode(job, settings.max_pixels, dev if gpu_decode else None)
        height, width = int(image.shape[0]), int(image.shape[1])
        if target is not None and slots is not None:
            assert job.index is not None and job.view is not None
            n, v_count = target.params.shape[0], target.params.shape[1]
            if job.index >= n or job.view >= v_count:
                raise _unprocessable(
                    f"{job.key}: slot (index={job.index}, view={job.view}) is outside the "
                    f"store's {n} rows x {v_count} views"
                )
            if not bool(target.valid[job.index]):
                raise _unprocessable(f"{job.key}: store row {job.index} is marked undecodable")
            expect = (int(target.heights[job.index]), int(target.widths[job.index]))
            if (height, width) != expect:
                raise _unprocessable(
                    f"{job.key}: image is {height}x{width} px but store row {job.index} was "
                    f"planned for {expect[0]}x{expect[1]}; is it the right image?"
                )
            add(image, target.params[job.index, job.view], job.key)
            slots.append((job.index, job.view))
        elif opts.views is not None:
            views, single = opts.views, False
            for v in range(opts.views):
                add(image, recipe.sample(opts.seed, pos, v, height, width), job.key)
        elif job.params is not None:
            arr = np.asarray(job.params, dtype=np.float64)
            single = arr.ndim == 1
            try:
                checked = check_view_params(arr.reshape(-1, arr.shape[-1]), recipe, height, width)
            except ViewParamsError as exc:
                raise _unprocessable(f"{job.key}.params: {exc}") from None
            views = checked.shape[0]
            for p in checked:
                add(image, p, job.key)
        else:
            add(image, None, job.key)
    rows = _render_batched(views_in, dev) if batched else _render_reference(views_in)
    n = len(parsed.jobs)
    shape = (n,) if single else (n, views)
    return Prepared(rows, shape, slots)
