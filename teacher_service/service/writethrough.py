"""Write-through: put request embeddings into store slots, one writer and one lock per store.

The registry lock serialises this service's requests per store; the store's own shard locks
(``store.locks``: ``fcntl.flock`` for local stores) serialise it with other processes writing the
same store (``disco precompute``, another service, ``disco store append``).

Failures are raised as store errors and answered by the app's one error table
(``teacher_service.service.app.ERROR_STATUS``): another teacher or another rendering is a
:class:`~store.errors.StoreMismatchError` (409), a failed write a
:class:`StoreWriteError` (500)."""

from __future__ import annotations

from typing import Any

import numpy as np

from store.errors import StoreError, StoreMismatchError
from teacher_service.precompute import teacher_attrs as precompute_teacher_attrs
from teacher_service.service.inputs import SlotTarget
from teacher_service.service.model import TeacherRuntime
from teacher_service.service.stores import StoreRegistry
from teacher_service.sources import LoadedTeacher

__all__ = ["StoreWriteError", "open_target", "teacher_attrs", "write_slots"]


class StoreWriteError(StoreError):
    """Writing request embeddings into a store failed on the server's side (answer 500)."""


def teacher_attrs(runtime: TeacherRuntime) -> dict[str, Any]:
    """The teacher identity recorded in a store when the service attaches itself: the same dict
    the precompute job records (checkpoint info + ``compute_dtype``)."""
    return precompute_teacher_attrs(LoadedTeacher(runtime.encoder, runtime.info), runtime.dtype)


def _check_teacher(stored: dict[str, Any] | None, runtime: TeacherRuntime, name: str) -> None:
    if stored is not None and stored.get("sha256") != runtime.sha256:
        raise StoreMismatchError(
            "teacher.sha256",
            runtime.sha256,
            stored.get("sha256"),
            f"store {name!r} holds embeddings of another teacher than this service runs",
        )


def open_target(
    registry: StoreRegistry, name: str, runtime: TeacherRuntime, target: str | None = None
) -> SlotTarget:
    """Open teacher ``target`` (None: the only one) of store ``name`` for write-through and check
    it is this service's teacher (blocking; run in a thread).

    Raises the registry's name errors, 409 when the store holds several teachers and ``target``
    names none of them, and ``StoreMismatchError`` when another teacher's embeddings are
    attached or this install renders the store's views differently (the store's
    ``render.fingerprint`` attr).
    """
    with registry.lock(name):
        store = registry.writer(name, target)
        # rows appended by `disco store append`, or (no target named) another teacher added,
        # since the writer was opened
        store.refresh()
        try:
            store.require_target()
        except StoreError as exc:  # several teachers and none named
            raise StoreMismatchError("target", "a teacher of the store", target, str(exc)) from None
        _check_teacher(store.teacher, runtime, name)
        store.check_render()
        manifest = store.manifest
        return SlotTarget(
            recipe=store.recipe,
            params=store.params,
            heights=np.asarray(manifest.heights),
            widths=np.asarray(manifest.widths),
            valid=np.asarray(manifest.valid),
        )


def write_slots(
    registry: StoreRegistry,
    name: str,
    runtime: TeacherRuntime,
    slots: list[tuple[int, int]],
    vectors: np.ndarray,
    target: str | None = None,
) -> None:
    """Write ``vectors (n, D) float32`` into ``slots`` [(index, view)] of store ``name``.

    One ``store.write_slots`` call: one read-modify-write per touched shard under the shard's
    lock (cross-process for local stores), inside the registry's per-store lock. A slot already
    written (by the batch job, another request or a lazy-fill trainer) keeps its stored bytes.
    Attaches this teacher first if the store (teacher ``target``) has none;
    ``StoreMismatchError`` if it has another, :class:`StoreWriteError` when the write itself
    fails (the cached writer is dropped, so the next request reopens the store).
    """
    with registry.lock(name):
        store = registry.writer(name, target)
        try:
            if store.teacher is None:
                store.attach_teacher(teacher_attrs(runtime), dim=runtime.embed_dim)
            _check_teacher(store.teacher, runtime, name)
            if len(slots) != len(vectors):
                raise StoreError(f"{len(slots)} slots but {len(vectors)} vectors")
            pairs = np.asarray(slots, dtype=np.int64).reshape(len(slots), 2)
            store.write_slots(pairs[:, 0], pairs[:, 1], vectors)
        except StoreMismatchError:
            raise
        except StoreError as exc:
            registry.forget(name)
            raise StoreWriteError(f"store write failed: {exc}") from exc
