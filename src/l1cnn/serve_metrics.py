"""``GET /metrics`` of ``l1cnn serve``: Prometheus' text format, through prometheus-client.

Requests by route, method and status; request latency by route; images predicted by class;
images referred to a human (answers whose ``decision`` is ``"refer"``); and the served model's
identity as the labels of a constant ``l1cnn_model_info`` gauge. Each app has its own registry,
so several apps in one process (tests) do not share counts. Imports no TensorFlow.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition

from l1cnn.serve_security import METRICS_PATH

# The classic text format (0.0.4), which every Prometheus scrapes; prometheus-client >= 0.22
# calls 1.0.0 "latest" (same text for our plain ASCII names), older ones have only 0.0.4.
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)

# Known routes are labelled by their path; anything else is "other", so a client probing random
# paths cannot grow the label set without bound.
ROUTES = frozenset({"/", "/healthz", "/v1/model", "/v1/predict", METRICS_PATH})
METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})
# Latency buckets (seconds): one small image is ~1-5 ms, a batch of 64 uploads ~100s of ms.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REFER = "refer"  # the ``decision`` of an answer the model abstains on (conformal abstention)
IDENTITY_LABELS = ("run", "model_sha256", "model_format", "positive_class", "threshold")


class ServeMetrics:
    """The server's counters, and the text ``/metrics`` answers with.

    Args:
        identity: the served model's labels, keys ``IDENTITY_LABELS`` (``Predictor.identity``).
        class_names: [negative, positive]; both show from the first scrape, at 0.
    """

    content_type = CONTENT_TYPE

    def __init__(self, identity: dict[str, str], class_names: list[str]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "l1cnn_requests",
            "HTTP requests answered, by route, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "l1cnn_request_duration_seconds",
            "Time from a request's arrival to its response's last byte, by route",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "l1cnn_images_predicted",
            "Images predicted, by the class they were assigned (at the run's threshold)",
            ["class_name"],
            registry=self.registry,
        )
        self.referred = Counter(
            "l1cnn_images_referred",
            'Images whose answer was decision "refer" (abstained on, for a human to look at)',
            registry=self.registry,
        )
        info = Gauge(
            "l1cnn_model_info",
            "The served model (always 1; its identity is in the labels)",
            list(IDENTITY_LABELS),
            registry=self.registry,
        )
        info.labels(*(identity[k] for k in IDENTITY_LABELS)).set(1)
        for name in class_names:
            self.images.labels(name)

    def count_answers(self, answers: Iterable[dict[str, Any]]) -> None:
        """Count answered images by their class, and those referred to a human."""
        for item in answers:
            self.images.labels(item["class"]).inc()
            if item.get("decision") == REFER:
                self.referred.inc()

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return exposition.generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting every HTTP response by route, method and status, and timing it.

    It sits outside the token, rate and size guards, so their refusals (401, 429, 413) count
    too: a scrape shows who is being turned away, not only what the model answered.
    """

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        method = scope["method"] if scope["method"] in METHODS else "other"
        started = time.perf_counter()
        status = 500  # an exception before the response started

        async def tracked_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
