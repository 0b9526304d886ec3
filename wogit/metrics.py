"""The registry's Prometheus metrics: requests, latency, bytes, and what the registry holds.

Each app has a ``Metrics`` of its own, on its own ``CollectorRegistry`` (never the
global one: several apps may live in one process).  ``wogit.observe`` reports every
request to it once; ``GET /metrics`` renders it.  Labels are bounded: a route is its
rule (``/<repository>/<map>/<tag_id>``), never the raw path; a path no route matched
is ``unmatched``; a method HTTP does not define is ``OTHER``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
COUNTS_SECONDS = 5.0  # counting what the registry holds runs git for-each-ref: at most this often
#: What generate_latest writes for plain names: the text format every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)  # pulls of big maps take minutes
log = logging.getLogger("wogit")


class Metrics:
    def __init__(self, counts: Callable[[], dict[str, int]], counts_seconds: float = COUNTS_SECONDS):
        self.registry = CollectorRegistry()
        by_route = ["route", "method"]
        self.requests = Counter("wogit_http_requests", "HTTP requests answered, by route, method and status",
                                [*by_route, "status"], registry=self.registry)
        self.latency = Histogram("wogit_http_request_duration_seconds",
                                 "Seconds from a request's arrival to its answer's last byte",
                                 by_route, registry=self.registry, buckets=BUCKETS)
        self.bytes_in = Counter("wogit_http_request_body_bytes", "Request body bytes read", by_route,
                                registry=self.registry)
        self.bytes_out = Counter("wogit_http_response_body_bytes", "Response body bytes sent", by_route,
                                 registry=self.registry)
        self.uploads = Gauge("wogit_uploads_in_progress", "Map and config uploads running now (at most "
                             "max_uploads; more are refused with 503)", registry=self.registry)
        self.registry.register(_Holdings(counts, counts_seconds))
        self._series: dict[tuple[str, str, str], tuple] = {}

    def observe(self, route: str, method: str, status: str, seconds: float, bytes_in: int, bytes_out: int) -> None:
        method = method if method in METHODS else "OTHER"
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:  # labels are bounded (routes, methods, statuses): one lookup each, kept
            series = self._series[key] = (self.requests.labels(route, method, status),
                                          self.latency.labels(route, method), self.bytes_in.labels(route, method),
                                          self.bytes_out.labels(route, method))
        requests, latency, read, sent = series
        requests.inc()
        latency.observe(seconds)
        read.inc(bytes_in)
        sent.inc(bytes_out)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE


class _Holdings:
    """Gauges of the maps, configs and tags the registry holds, counted at most every few seconds."""

    HELP = {"maps": "Maps uploaded (distinct digests)", "configs": "Configs uploaded (distinct digests)",
            "tags": "Tags of all maps"}

    def __init__(self, counts: Callable[[], dict[str, int]], seconds: float):
        self.counts = counts
        self.seconds = seconds
        self.lock = threading.Lock()
        self.cached: dict[str, int] | None = None
        self.counted = 0.0

    def collect(self):
        with self.lock:
            if self.cached is None or time.monotonic() - self.counted >= self.seconds:
                try:
                    self.cached, self.counted = self.counts(), time.monotonic()
                except Exception:
                    log.exception("cannot count the registry's maps, configs and tags for /metrics")
            counts = self.cached
        for name, help in self.HELP.items():
            if counts is not None:
                yield GaugeMetricFamily(f"wogit_{name}", help, value=counts[name])
