"""Prometheus metrics of one app instance, in its own registry (two apps never share counters)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """All service metrics, registered in a fresh :class:`CollectorRegistry`.

    Names: ``disco_requests_total{route,method,status}``, ``disco_images_embedded_total`` (rows,
    i.e. image views, through the model), ``disco_batch_size`` (rows per model call),
    ``disco_queue_depth`` (rows waiting), ``disco_queue_seconds`` / ``disco_inference_seconds``
    (per row / per batch), ``disco_dropped_rows_total`` (rows of disconnected clients),
    ``disco_store_writes_total`` (write-through slots).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "disco_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.images = Counter(
            "disco_images_embedded",
            "Image views embedded by the model.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "disco_batch_size",
            "Rows per model forward.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "disco_queue_depth", "Rows waiting for the model.", registry=self.registry
        )
        self.queue_seconds = Histogram(
            "disco_queue_seconds",
            "Seconds a row waited in the queue before its batch started.",
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "disco_inference_seconds",
            "Seconds per model forward (one batch).",
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.dropped = Counter(
            "disco_dropped_rows",
            "Queued rows dropped because their client went away.",
            registry=self.registry,
        )
        self.store_writes = Counter(
            "disco_store_writes",
            "Embeddings written into store slots by write-through requests.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)
