"""Object storage: fsspec storage options from the standard environment and ``--storage-options``.

Every dataset reader and store opener that takes a URL (``s3://bucket/prefix``, ``gs://``...)
calls :func:`url_to_fs` or :func:`storage_options_for` with the caller's ``storage_options`` dict;
``None`` means "from the environment", so DataLoader workers, torchrun ranks and the service see
the same options as the command that started them. Options for a URL, lowest priority first:

1. for ``s3://`` URLs, the standard AWS variables botocore users know: ``AWS_ENDPOINT_URL_S3`` or
   ``AWS_ENDPOINT_URL`` -> ``endpoint_url`` (MinIO, Ceph, R2, moto), ``AWS_PROFILE`` ->
   ``profile``, ``AWS_NO_SIGN_REQUEST=YES`` -> ``anon`` (public buckets, as the AWS CLI's
   ``--no-sign-request``). Credentials (``AWS_ACCESS_KEY_ID``...) stay with botocore;
2. the JSON object in ``DISCO_STORAGE_OPTIONS`` (what ``--storage-options`` sets), or the
   caller's explicit dict instead of it. Its keys are the filesystem's own keyword arguments
   (s3fs: ``endpoint_url``, ``key``, ``secret``, ``anon``, ``client_kwargs``...); the portable
   key ``"anonymous": true`` becomes s3fs ``anon=True`` / gcsfs ``token="anon"``.

Local paths and ``file://`` URLs take no options. Nothing here imports s3fs: fsspec loads the
backend when a URL of its protocol is opened (``pip install 'disco-cache[s3]'``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from store.errors import ConfigError, DiscoError

__all__ = [
    "SINGLE_WRITER_ENV",
    "STORAGE_OPTIONS_ENV",
    "RemoteStorageError",
    "export_single_writer",
    "export_storage_options",
    "is_remote",
    "parse_storage_options",
    "protocol",
    "single_writer_acknowledged",
    "storage_errors",
    "storage_options_for",
    "storage_options_from_env",
    "url_to_fs",
]

STORAGE_OPTIONS_ENV = "DISCO_STORAGE_OPTIONS"
"""Environment variable holding the ``--storage-options`` JSON object (inherited by children)."""
SINGLE_WRITER_ENV = "DISCO_SINGLE_WRITER"
"""Environment variable of ``--single-writer`` (``1``): the user's promise that no other process
writes the shards this one writes in a remote store (object storage has no locks here)."""
_S3 = ("s3", "s3a")
_GCS = ("gs", "gcs")
_LOCAL = ("", "file", "local")
_TRUE = ("1", "true", "yes", "on")


class RemoteStorageError(DiscoError, OSError):
    """An object-storage URL cannot be opened (backend not installed, bad options, no access)."""


def protocol(url: str) -> str:
    """The fsspec protocol of ``url``: ``"s3"`` for ``s3://b/k``, ``""`` for a local path."""
    head, sep, _ = str(url).partition("://")
    return head.lower() if sep else ""


def is_remote(url: str) -> bool:
    """True for an object-storage / network URL (no local file, no flock); False for a local
    path or a ``file://`` URL."""
    return protocol(url) not in _LOCAL


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """The JSON object ``text`` (a ``--storage-options`` value) as a dict; None/"" -> {}.

    Raises ConfigError with one line for invalid JSON or a non-object."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--storage-options is not valid JSON: {exc.msg} at {exc.pos}") from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"--storage-options must be a JSON object, e.g. "
            f'\'{{"endpoint_url": "http://127.0.0.1:9000"}}\', got {type(value).__name__}'
        )
    return value


def storage_options_from_env(
    proto: str = "s3", env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Storage options for protocol ``proto`` from the environment (``env``, default
    ``os.environ``): the standard AWS variables (s3 only) under ``DISCO_STORAGE_OPTIONS``."""
    env = os.environ if env is None else env
    opts: dict[str, Any] = {}
    if proto in _S3:
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        if env.get("AWS_PROFILE"):
            opts["profile"] = env["AWS_PROFILE"]
        if env.get("AWS_NO_SIGN_REQUEST", "").strip().lower() in _TRUE:
            opts["anon"] = True
    return {**opts, **parse_storage_options(env.get(STORAGE_OPTIONS_ENV))}


def _portable(proto: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Translate the portable ``anonymous`` key to the backend's own."""
    if "anonymous" not in opts:
        return opts
    out = dict(opts)
    anonymous = bool(out.pop("anonymous"))
    if not anonymous:
        return out
    if proto in _S3:
        out["anon"] = True
    elif proto in _GCS:
        out["token"] = "anon"
    else:
        raise ConfigError(f"storage option 'anonymous' is not supported for {proto}:// URLs")
    return out


def storage_options_for(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The fsspec keyword arguments for opening ``url``: {} for local paths; else the environment's
    options for its protocol, overridden by ``storage_options`` when given (see module doc)."""
    proto = protocol(url)
    if proto in _LOCAL:
        return {}
    base = storage_options_from_env(proto, env={k: v for k, v in os.environ.items()
                                                if k != STORAGE_OPTIONS_ENV})  # fmt: skip
    user = (
        parse_storage_options(os.environ.get(STORAGE_OPTIONS_ENV))
        if storage_options is None
        else dict(storage_options)
    )
    return _portable(proto, {**base, **user})


_CLIENT_MODULES = (
    "botocore",
    "aiobotocore",
    "s3fs",
    "gcsfs",
    "google",
    "aiohttp",
    "adlfs",
    "azure",
)


def _is_storage_error(exc: BaseException) -> bool:
    """An OSError, or an error raised by an object-storage client library (botocore's
    ``EndpointConnectionError``, ``NoCredentialsError``... are not OSErrors)."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in _CLIENT_MODULES


@contextlib.contextmanager
def storage_errors(url: str, what: str) -> Iterator[None]:
    """Turn an object-storage failure inside the block (no endpoint, no credentials, access
    denied, no bucket) into one :class:`RemoteStorageError` line: ``{what} {url!r}: {reason}``.

    Local paths, project errors and ``FileNotFoundError`` (the caller knows what a missing key
    means: no store, an image gone) pass through unchanged."""
    try:
        yield
    except (DiscoError, FileNotFoundError):
        raise
    except Exception as exc:
        # A storage option the backend does not know fails only when it first connects.
        bad_option = isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc)
        if not is_remote(url) or not (_is_storage_error(exc) or bad_option):
            raise
        if bad_option:
            raise RemoteStorageError(
                f"{what} {url!r}: a storage option is not accepted by the {protocol(url)}:// "
                f"filesystem ({exc}); check --storage-options / {STORAGE_OPTIONS_ENV}"
            ) from exc
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise RemoteStorageError(f"{what} {url!r}: {type(exc).__name__}: {reason}") from exc


def url_to_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for ``url`` with :func:`storage_options_for` options.

    Filesystem instances are cached by fsspec per process (and rebuilt after a fork), so call this
    where the file is read instead of holding the instance across a pickle. Raises
    RemoteStorageError when the backend is missing or refuses the options."""
    import fsspec  # fsspec and its backends load only when a URL is opened

    opts = storage_options_for(url, storage_options)
    try:
        return fsspec.core.url_to_fs(url, **opts)
    except ImportError as exc:
        raise RemoteStorageError(
            f"cannot open {url!r}: {exc} (for s3:// install the extra: pip install "
            "'disco-cache[s3]')"
        ) from None
    except (TypeError, ValueError) as exc:
        # Option names only: values may be secrets.
        raise RemoteStorageError(
            f"cannot open {url!r} with storage options {sorted(opts)}: {exc}"
        ) from None


def export_storage_options(text: str | None) -> dict[str, Any] | None:
    """CLI helper: validate a ``--storage-options`` value and put it in ``DISCO_STORAGE_OPTIONS``
    so this process and every child (DataLoader workers, ranks) use it. None leaves the
    environment as it is. Returns the parsed dict (None when not given)."""
    if text is None:
        return None
    opts = parse_storage_options(text)
    os.environ[STORAGE_OPTIONS_ENV] = json.dumps(opts)
    return opts


def export_single_writer(flag: bool) -> None:
    """CLI helper: ``--single-writer`` sets ``DISCO_SINGLE_WRITER=1`` for this process and its
    children (False leaves the environment as it is)."""
    if flag:
        os.environ[SINGLE_WRITER_ENV] = "1"


def single_writer_acknowledged(url: str, single_writer: bool | None = None) -> None:
    """Refuse to write a remote store unless the user promised one writer per shard.

    Local stores lock across processes (``store.locks``); object storage gives this project no
    lock, and a shard written by two processes at once loses one write silently. So a writable
    open of a remote URL needs ``single_writer`` True (None: ``DISCO_SINGLE_WRITER``). The ranks
    of one ``disco precompute`` job count as one writer: each owns whole shards.
    ``memory://`` is one process by construction and always allowed."""
    if not is_remote(url) or protocol(url) == "memory":
        return
    if single_writer is None:
        single_writer = os.environ.get(SINGLE_WRITER_ENV, "").strip().lower() in _TRUE
    if not single_writer:
        raise RemoteStorageError(
            f"store {url!r} is on object storage, where writers cannot lock shards: pass "
            f"--single-writer (or set {SINGLE_WRITER_ENV}=1) to confirm that no other process "
            "(another precompute job, a service, an append) writes to it meanwhile; the ranks "
            "of one precompute job count as one writer"
        )
