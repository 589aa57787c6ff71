"""Request and response bodies of the HTTP API (pydantic v2 models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EmbedOptions",
    "EmbedRequest",
    "EmbedResponse",
    "ErrorResponse",
    "ImageIn",
    "ImageOptions",
    "MultipartOptions",
    "StoreList",
]

# A view is (P,) numbers; several views are (V, P). Values are checked against the recipe later.
ParamsIn = list[float] | list[list[float]]


class ImageOptions(BaseModel):
    """Per-image options: explicit view params, or the store slot to write through."""

    model_config = ConfigDict(extra="forbid")

    params: ParamsIn | None = Field(
        default=None, description="one view (P,) or several (V, P) in the recipe's schema"
    )
    index: int | None = Field(default=None, ge=0, description="write-through: store row")
    view: int | None = Field(default=None, ge=0, description="write-through: store view")


class ImageIn(ImageOptions):
    """One image in a JSON request: standard base64 of the encoded file bytes."""

    data: str = Field(min_length=1, description="base64 (RFC 4648) of the image file")


class EmbedOptions(BaseModel):
    """Request-wide options shared by the JSON and multipart forms."""

    model_config = ConfigDict(extra="forbid")

    views: int | None = Field(
        default=None, ge=1, description="plan this many views per image server-side"
    )
    seed: int = Field(default=0, ge=0, lt=2**63, description="seed of server-side planned views")
    store: str | None = Field(
        default=None, min_length=1, max_length=255, description="write-through store name"
    )
    target: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="write-through: the teacher of a store of several (default: its only one)",
    )


class EmbedRequest(EmbedOptions):
    """``POST /v1/embeddings`` JSON body."""

    images: list[ImageIn] = Field(min_length=1, description="images in output order")


class MultipartOptions(EmbedOptions):
    """The optional ``options`` text part of a multipart request (per-image list by file order)."""

    images: list[ImageOptions] | None = Field(
        default=None, description="per-image options, one per file part, same order"
    )


class EmbedResponse(BaseModel):
    """JSON answer: ``embeddings`` nested lists of shape ``shape`` ((N, D) or (N, V, D))."""

    object: str = "embeddings"
    model: str = Field(description="sha256 of the teacher checkpoint")
    shape: list[int]
    dtype: str = "float32"
    embeddings: list[Any]
    written: list[list[int]] | None = Field(
        default=None, description="write-through slots written, as [index, view] pairs"
    )


class StoreList(BaseModel):
    """``GET /v1/stores``: names of the stores under the store root."""

    stores: list[str]


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: ``detail`` says what is wrong (a string or pydantic's error list)."""

    detail: Any
