"""Service settings: environment variables ``DISCO_*`` (or CLI flags), validated once.

Every knob of the HTTP service lives here, typed and bounded; :func:`get_settings` reads the
environment once (cached) and :func:`teacher_service.service.app.create_app` takes an explicit
instance when the caller (the CLI, a test) builds one itself.
"""

from __future__ import annotations

import os
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.precision import parse_precision
from store.remote import is_remote
from teacher_service.config import parse_teacher

__all__ = ["ServiceSettings", "get_settings", "settings_reference"]


class ServiceSettings(BaseSettings):
    """Settings of the teacher-embedding service (env prefix ``DISCO_``, e.g. ``DISCO_TEACHER``)."""

    # An empty DISCO_X means "the default": docker-compose.yml passes every variable through as
    # ${DISCO_X:-}, so it never restates a default.
    model_config = SettingsConfigDict(
        env_prefix="DISCO_", extra="forbid", frozen=True, env_ignore_empty=True
    )

    teacher: str = Field(
        description="teacher: timm:NAME, hf:PATH_OR_ID, open_clip:ARCH, py:MODULE:FUNCTION or a "
        "checkpoint file"
    )
    teacher_weights: Path | None = Field(
        default=None,
        description="teacher weights: .safetensors, .pth/.bin state dict or a snapshot folder",
    )
    teacher_pooling: Literal["cls", "mean", "cls+mean"] | None = Field(
        default=None, description="ViT teachers: cls, mean or cls+mean instead of their own"
    )
    store_root: str | None = Field(
        default=None,
        description="directory or object-storage URL (s3://bucket/prefix) holding the stores "
        "served and written (None: none)",
    )
    host: str = Field(default="127.0.0.1", description="address uvicorn binds")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port uvicorn binds")
    device: str = Field(default="auto", description="torch device: auto, cpu, cuda, cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="compute precision: fp32, or CUDA autocast in bf16/fp16 (an error on CPU)",
    )
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        default=None,
        description="deprecated spelling of precision (float32, bfloat16, float16)",
    )
    renderer: Literal["auto", "reference", "batched"] = Field(
        default="auto",
        description="view renderer: auto (batched on CUDA, reference on CPU), reference (per "
        "view) or batched (each request's views at once on the model's device)",
    )
    decode: Literal["cpu", "device"] = Field(
        default="cpu",
        description="image decoding: cpu (Pillow, the stores' decoder) or device (JPEGs with "
        "nvjpeg on CUDA under the batched renderer; not for write-through; other pixels)",
    )
    recipe: str | None = Field(
        default=None,
        description="view recipe for request params (None: the checkpoint's, else mocov2)",
    )
    size: int | None = Field(
        default=None, ge=8, le=4096, description="view side in px (None: the checkpoint's)"
    )
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="rows per model batch")
    max_wait_ms: float = Field(
        default=5.0, ge=0.0, le=10_000.0, description="longest a batch waits to fill, ms"
    )
    max_queue: int = Field(
        default=512, ge=1, le=1_000_000, description="rows (image views) queued; over it: 429"
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="largest request body in bytes; over: 413"
    )
    max_images: int = Field(default=64, ge=1, description="images per request; over: 413")
    max_views: int = Field(default=64, ge=1, description="views per image; over: 413")
    max_pixels: int = Field(
        default=36_000_000, ge=1, description="pixels (H*W) per image, checked before decoding"
    )
    max_range_rows: int = Field(
        default=65_536, ge=1, description="rows per GET /v1/stores/{name}/embeddings call"
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After seconds sent with 429")
    token: SecretStr | None = Field(
        default=None,
        description="bearer token required on /v1/* (health, and metrics/docs per their "
        "switches, stay open)",
    )
    metrics: Literal["open", "token", "off"] = Field(
        default="open",
        description="GET /metrics: open (no token: counts and timings only), token (needs the "
        "bearer token when one is set) or off (404)",
    )
    docs: bool = Field(
        default=True,
        description="serve the OpenAPI schema (/openapi.json) and its pages (/docs, /redoc) "
        "without a token (the schema holds no secrets); false: none",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="log lines: text (uvicorn's) or json (one object per line: request id, "
        "route, status, images, queue and inference ms)",
    )
    prep_threads: int = Field(
        default=2, ge=1, le=64, description="threads decoding and rendering request images"
    )
    threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads for the model (None: torch's)"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="log level of the service and uvicorn"
    )

    @model_validator(mode="before")
    @classmethod
    def _dtype_is_precision(cls, data: Any) -> Any:
        # DISCO_DTYPE / --dtype (the old spelling) still work, with one deprecation line.
        if isinstance(data, dict) and data.get("dtype") not in (None, ""):
            old = parse_precision(data["dtype"], old_flag="DISCO_DTYPE/--dtype")
            given = data.get("precision")
            if given not in (None, "") and parse_precision(given) != old:
                raise ValueError(f"precision {given!r} and dtype {data['dtype']!r} disagree")
            data = {**data, "precision": old}
        return data

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_path_as_str(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("teacher")
    @classmethod
    def _teacher_exists(cls, value: str) -> str:
        try:
            prefix, name = parse_teacher(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if prefix == "checkpoint" and not Path(name).is_file():
            raise ValueError(f"teacher checkpoint {name!r} is not a file")
        return value

    @field_validator("teacher_weights")
    @classmethod
    def _weights_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"teacher weights {str(value)!r} do not exist")
        return value

    @field_validator("store_root", mode="before")
    @classmethod
    def _root_is_dir(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and is_remote(value)):
            return value  # a bucket prefix: existence shows when a store is opened
        if isinstance(value, str | Path) and not Path(value).is_dir():
            raise ValueError(f"store root {str(value)!r} is not a directory")
        return str(value) if isinstance(value, Path) else value

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        return value


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    """Read :class:`ServiceSettings` from the environment once (cached for the process)."""
    return ServiceSettings()  # type: ignore[call-arg]


def _type_text(annotation: Any) -> str:
    """``int``, ``Path or None``, ```a` \\| `b``` for a Literal: the type as a reader wants it."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{c}`" for c in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        named = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or `None`" if type(None) in args else "")
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def _cell(text: object) -> str:
    """One Markdown table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def settings_reference(model: type[BaseSettings] = ServiceSettings) -> str:
    """The settings reference: a Markdown table rendered from ``model``'s fields, one row per
    setting with its ``DISCO_*`` variable, ``disco serve`` flag, type, default and meaning (the
    docs build writes it into the reference page; nothing is copied by hand)."""
    prefix = str(model.model_config.get("env_prefix") or "")
    rows = [
        "| setting | environment | flag | type | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in model.model_fields.items():
        if info.default is PydanticUndefined and info.default_factory is None:
            default = "required"
        elif info.default_factory is not None:
            default = "(computed)"
        else:
            default = f"`{info.default}`"
        rows.append(
            f"| `{name}` | `{prefix}{name.upper()}` | `--{name.replace('_', '-')}` "
            f"| {_type_text(info.annotation)} | {default} | {_cell(info.description or '')} |"
        )
    return "\n".join(rows) + "\n"
