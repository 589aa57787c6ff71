"""Lazy fill: train from a partly written store while a teacher service fills what it lacks.

``disco train --store S --teacher-url URL`` plans epochs exactly as on a full store (every valid
view of a row is usable, so the (i, v1, v2) sequence of a seed does not depend on what is
written). A bounded background thread (:meth:`TargetFiller.run_ahead`) walks the plan's batches
ahead of the DataLoader: a target written in the store (read when the plan reached its shard) is
used as is; the missing ones of a batch are sent in one write-through request per batch
(``TeacherClient.write_through``: the trainer sends each image, the service renders the store's
planned view, embeds it and writes it into the slot), so every later run finds them cached.

The service is the same store's only when its ``GET /v1/stores/{name}`` reports the same dataset
(manifest hash, N) and view plan (recipe, seed, V) and its teacher is the store's: checked before
the first write (:meth:`TeacherLink.check_store`). The bearer token comes from ``DISCO_TOKEN``
(the variable the service reads), never from a flag.

When the service cannot deliver (connection refused, timeout, still 429/503 after the client's
retries), ``missing`` decides:

- ``error``: stop with one line naming the URL (a busy service, 429/503, is waited for instead:
  it is reachable and will answer);
- ``wait``: retry every few seconds, printing "waiting for teacher service URL" to stderr;
- ``skip``: the samples of that batch whose targets are not cached are dropped from their step
  (the step trains, enqueues MoCo keys and advances the schedule with the smaller batch; the ring
  queue takes any batch size) and the service is tried again after ``SKIP_RETRY_S``; a batch that
  would keep fewer than 2 samples (head BatchNorm needs 2) waits for the service instead. Skip
  needs one process (DDP ranks gather equal batches).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from store.errors import ConfigError, DiscoError
from student_trainer.train.data import TAG_TRAIN, PairItem
from teacher_service.client import (
    ServiceBusyError,
    ServiceError,
    ServiceUnavailableError,
    TeacherClient,
)

__all__ = [
    "SKIP_RETRY_S",
    "TOKEN_ENV",
    "WAIT_POLL_S",
    "FetchCancelled",
    "FillStats",
    "LazyFillError",
    "TargetFiller",
    "TeacherLink",
    "service_store_name",
]

TOKEN_ENV = "DISCO_TOKEN"
"""Environment variable holding the service's bearer token (the service reads the same one)."""
WAIT_POLL_S = 2.0
"""``missing=wait``: seconds between tries once the client's own retries gave up."""
SKIP_RETRY_S = 10.0
"""``missing=skip``: after a failed fetch, batches drop their missing samples this long before
the service is tried again."""
STATUS_EVERY_S = 10.0
"""A repeated status line (e.g. still waiting) is printed at most this often."""
JOIN_TIMEOUT_S = 120.0
"""How long a stopped fetcher may take to finish its request in flight."""
_IDENTITY = ("dataset.manifest_hash", "dataset.n", "recipe")


class LazyFillError(DiscoError, RuntimeError):
    """The teacher service could not fill a missing target (unreachable with ``missing=error``,
    or it refused the request)."""


class FetchCancelled(DiscoError, RuntimeError):
    """The consumer of a fetcher went away while its fetch was waiting for the service."""


def service_store_name(store_url: str, override: str | None = None) -> str:
    """The store's name under the service's store root: ``override``, else the last path
    component of ``store_url`` (``/data/stores/mnist5k`` -> ``mnist5k``)."""
    if override:
        return override
    name = PurePosixPath(store_url.replace("\\", "/").rstrip("/")).name
    if not name:
        raise ConfigError(f"cannot derive a service store name from {store_url!r}: give one")
    return name


def _get(attrs: dict[str, Any], dotted: str) -> Any:
    value: Any = attrs
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _reason(exc: ServiceError) -> str:
    return exc.detail if isinstance(exc.detail, str) else str(exc)


class TeacherLink:
    """The trainer's connection to one teacher service for one store, with the ``missing``
    policy: :meth:`call` runs a client call and applies it on failure.

    ``url``: service base URL; ``name``: the store's name there; ``attrs``: the local store's
    attrs (the identity the service's store must share); ``client``: a ready client (tests),
    else one is made with the token from ``DISCO_TOKEN``.
    """

    def __init__(
        self,
        url: str,
        name: str,
        attrs: dict[str, Any],
        missing: str,
        client: TeacherClient | None = None,
        status: Callable[[str], None] | None = None,
        target: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.target = target
        """The teacher of a store of several this link fills (None: the store's only one)."""
        self.attrs = attrs
        self.missing = missing
        self.client = client or TeacherClient(
            self.url, token=os.environ.get(TOKEN_ENV) or None, retries=3, max_backoff_s=4.0
        )
        self._status = status or _print_status
        self._checked = False
        self._down_until = 0.0
        self._waiting_since: float | None = None
        self._said = 0.0
        self.status = ""
        """The current condition ("" when fine), e.g. "waiting for teacher service URL (12 s)"."""

    # -- policy -----------------------------------------------------------------------------

    def call(
        self,
        action: Callable[[], Any],
        stop: threading.Event | None = None,
        missing: str | None = None,
    ) -> Any:
        """``action()`` (after the store identity check, once); on no answer apply ``missing``
        (default the link's): raise :class:`LazyFillError`, wait and retry, or return None
        (skip). A 4xx/5xx other than 429/503 always raises :class:`LazyFillError`."""
        mode = missing or self.missing
        while True:
            if mode == "skip" and time.monotonic() < self._down_until:
                return None
            try:
                if not self._checked:
                    self.check_store()
                out = action()
            except (ServiceUnavailableError, ServiceBusyError) as exc:
                busy = isinstance(exc, ServiceBusyError)
                if mode == "error" and not busy:
                    raise LazyFillError(
                        f"teacher service {self.url} is unreachable ({_reason(exc)}); start it, "
                        "or train with --missing wait or --missing skip"
                    ) from None
                if mode == "skip":
                    self._down_until = time.monotonic() + SKIP_RETRY_S
                    self._set_status(
                        f"teacher service {self.url} unreachable: dropping uncached samples"
                    )
                    return None
                since = self._waiting_since = self._waiting_since or time.monotonic()
                what = "busy" if busy else "unreachable"
                self._set_status(
                    f"waiting for teacher service {self.url} ({what} for "
                    f"{time.monotonic() - since:.0f} s)"
                )
                if stop is not None and stop.wait(WAIT_POLL_S):
                    raise FetchCancelled from None
                if stop is None:
                    time.sleep(WAIT_POLL_S)
                continue
            except ServiceError as exc:
                raise LazyFillError(
                    f"teacher service {self.url} refused to fill store {self.name!r}: {exc}"
                ) from None
            self._waiting_since = None
            if self.status:
                self._set_status("")
            return out

    def _set_status(self, text: str) -> None:
        changed = text.split(" (")[0] != self.status.split(" (")[0]
        if changed or time.monotonic() - self._said >= STATUS_EVERY_S:
            if text or self.status:
                self._status(text or f"teacher service {self.url} answers again")
            self._said = time.monotonic()
        self.status = text

    # -- identity -------------------------------------------------------------------------

    def model(self, stop: threading.Event | None = None) -> dict[str, Any] | None:
        """``GET /v1/model`` under the policy (None: skipped, the service is down)."""
        return self.call(self.client.model, stop)

    def check_store(self) -> None:
        """Refuse a service whose store ``name`` is not this store (another dataset, view plan or
        teacher): raises ``ConfigError`` naming the field. Service errors propagate."""
        model = self.client.model()
        try:
            info = self.client.store_info(self.name)
        except ServiceError as exc:
            if exc.status != 404:
                raise
            raise ConfigError(
                f"the teacher service at {self.url} has no store named {self.name!r} "
                f"({_reason(exc)}); pass --service-store NAME (its name under the service's "
                "store root)"
            ) from None
        remote = dict(info.get("attrs") or {})
        for key in _IDENTITY:
            mine, theirs = _get(self.attrs, key), _get(remote, key)
            if mine != theirs:
                raise ConfigError(
                    f"the service's store {self.name!r} at {self.url} is not this store: "
                    f"{key} {theirs!r} != {mine!r}; pass --service-store NAME"
                )
        sha = str(model.get("sha256"))
        # A named teacher: the service's store info shows its other teachers; the service
        # checks the named one on every write (409 for another model).
        theirs = remote.get("teacher") if self.target is None else None
        stored = (("this store", self.attrs.get("teacher")), ("its store", theirs))
        for where, teacher in stored:
            if teacher is not None and teacher.get("sha256") != sha:
                raise ConfigError(
                    f"the teacher service at {self.url} runs teacher {sha[:12]}..., {where} holds "
                    f"embeddings of {str(teacher.get('sha256'))[:12]}...; serve the store's teacher"
                )
        dim = (self.attrs.get("teacher") or {}).get("embed_dim")
        if dim is not None and int(dim) != int(model["embed_dim"]):
            raise ConfigError(
                f"the teacher service at {self.url} embeds in {model['embed_dim']} dims, "
                f"the store in {dim}"
            )
        self._checked = True


def _print_status(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class FillStats:
    """Lazy-fill counters, updated by the fetcher thread (thread-safe).

    ``fetched``: slots computed by the service for this run; ``planned``/``cached``: slots of the
    batches prepared in the current pass over an epoch, and those found in the store;
    ``dropped``: samples dropped by ``missing=skip``."""

    fetched: int = 0
    fetch_seconds: float = 0.0
    planned: int = 0
    cached: int = 0
    dropped: int = 0
    started: float = field(default_factory=time.perf_counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def new_pass(self) -> None:
        """Start counting an epoch's slots afresh."""
        with self.lock:
            self.planned = self.cached = 0

    def add(self, planned: int, cached: int, fetched: int = 0, seconds: float = 0.0) -> None:
        """Count a prepared batch."""
        with self.lock:
            self.planned += planned
            self.cached += cached
            self.fetched += fetched
            self.fetch_seconds += seconds

    def snapshot(self) -> dict[str, float]:
        """``fill_fetched`` (slots, whole run), ``fill_slots_per_s`` (fetched / run wall
        seconds), ``fill_cached`` (fraction of this epoch's slots prepared so far that came from
        the store) and ``fill_dropped`` (samples) — the log.jsonl fields."""
        with self.lock:
            wall = max(1e-9, time.perf_counter() - self.started)
            return {
                "fill_fetched": self.fetched,
                "fill_slots_per_s": round(self.fetched / wall, 2),
                "fill_cached": round(self.cached / self.planned, 4) if self.planned else 1.0,
                "fill_dropped": self.dropped,
            }

    def describe(self) -> str:
        """One short progress-bar text, e.g. ``fill 120 slots/s, 45% cached``."""
        s = self.snapshot()
        text = f"fill {s['fill_slots_per_s']:.0f} slots/s, {100 * s['fill_cached']:.0f}% cached"
        return text + (f", {s['fill_dropped']} dropped" if s["fill_dropped"] else "")


class TargetFiller:
    """Completes a plan's batches with the service's targets where the store has none.

    ``link``: the service; ``image``: row -> (H, W, 3) uint8 image of the store's dataset (what
    the service renders the planned view from); ``depth``: filled batches held ready ahead of
    the DataLoader.
    """

    def __init__(
        self, link: TeacherLink, image: Callable[[int], np.ndarray], depth: int = 4
    ) -> None:
        self.link = link
        self.image = image
        self.depth = depth
        self.stats = FillStats()

    def fill(self, batch: list[PairItem], stop: threading.Event | None = None) -> list[PairItem]:
        """``batch`` with every target present: written ones as read, missing ones from one
        write-through request (items keep their order). With ``missing=skip`` and the service
        down, the items lacking a target are dropped (unless fewer than 2 would remain)."""
        need: dict[tuple[int, int], int] = {}
        for item in batch:
            for j in (0, 1):
                if not item.written[j]:
                    need.setdefault((item.row, item.views[j]), len(need))
        total = 2 * len(batch)
        missing_slots = sum(2 - sum(item.written) for item in batch)
        if not need:
            self.stats.add(total, total)
            return batch
        slots = list(need)
        started = time.perf_counter()

        def send() -> np.ndarray:
            return self.link.client.write_through(
                self.link.name,
                [self.image(row) for row, _ in slots],
                [row for row, _ in slots],
                [view for _, view in slots],
                target=self.link.target,
            )

        vectors = self.link.call(send, stop)
        if vectors is None:  # skip: the service is down
            kept = [item for item in batch if all(item.written)]
            if len(kept) >= 2:
                with self.stats.lock:
                    self.stats.dropped += len(batch) - len(kept)
                self.stats.add(total, total - missing_slots)
                return kept
            vectors = self.link.call(send, stop, missing="wait")
        self.stats.add(total, total - missing_slots, len(slots), time.perf_counter() - started)
        out = []
        for item in batch:
            assert item.targets is not None
            targets = [
                item.targets[j] if item.written[j] else vectors[need[(item.row, item.views[j])]]
                for j in (0, 1)
            ]
            out.append(item._replace(targets=(targets[0], targets[1]), written=(True, True)))
        return out

    def run_ahead(self, batches: Iterator[list[PairItem]], tag: int) -> Iterator[list[PairItem]]:
        """Yield ``batches`` filled, in order, from a background thread that stays at most
        ``depth`` batches ahead; stops the thread when the consumer stops. A fetch error is
        raised here, at the batch it belongs to. Closing the iterator stops the thread after its
        request in flight."""
        if tag == TAG_TRAIN:
            self.stats.new_pass()
        ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(kind: str, value: Any) -> bool:
            while not stop.is_set():
                try:
                    ready.put((kind, value), timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for batch in batches:
                    if stop.is_set() or not put("batch", self.fill(batch, stop)):
                        return
                put("end", None)
            except FetchCancelled:
                return
            except BaseException as exc:  # handed to the consumer, raised in its thread
                put("error", exc)

        thread = threading.Thread(target=work, name="disco-lazy-fill", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = ready.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            # let a request in flight finish: the next pass then finds its slots written instead
            # of asking for them again (a wait for the service ends at once on ``stop``)
            thread.join(timeout=JOIN_TIMEOUT_S)
