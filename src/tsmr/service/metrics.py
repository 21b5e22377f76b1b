"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

The numbers are per process: with ``--workers N`` each worker counts what it
served, and its samples carry no worker label, so scrape workers one at a
time or sum them (a worker restarted starts from zero, as a Prometheus
counter may).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Iterable

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Iterable[str], values: Iterable[str]) -> str:
    inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values))
    return "{" + inner + "}" if inner else ""


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value


class Metrics:
    """The counters and histograms of one verifier process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}  # (method, route, status) -> count
        self.attestations: dict[str, int] = {}  # result status (or refusal reason) -> count
        self.appraisal = Histogram(LATENCY_BUCKETS)
        self.request_seconds: dict[str, Histogram] = {}  # route -> latency
        self.started = time.time()

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            self.request_seconds.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def attestation(self, status: str) -> None:
        with self._lock:
            self.attestations[status] = self.attestations.get(status, 0) + 1

    def appraised(self, seconds: float) -> None:
        with self._lock:
            self.appraisal.observe(seconds)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            out += ["# HELP tsmr_http_requests_total HTTP requests served, by method, route template and status.",
                    "# TYPE tsmr_http_requests_total counter"]
            for (method, route, status), n in sorted(self.requests.items()):
                out.append(f"tsmr_http_requests_total{_labels(('method', 'route', 'status'), (method, route, status))} {n}")
            out += ["# HELP tsmr_http_request_duration_seconds Time to serve a request, by route template.",
                    "# TYPE tsmr_http_request_duration_seconds histogram"]
            for route, h in sorted(self.request_seconds.items()):
                out += self._histogram("tsmr_http_request_duration_seconds", h, ("route",), (route,))
            out += ["# HELP tsmr_attestations_total Attestation requests, by result status or refusal reason.",
                    "# TYPE tsmr_attestations_total counter"]
            for status, n in sorted(self.attestations.items()):
                out.append(f"tsmr_attestations_total{_labels(('status',), (status,))} {n}")
            out += ["# HELP tsmr_appraisal_duration_seconds Time spent in appraise() per attestation.",
                    "# TYPE tsmr_appraisal_duration_seconds histogram"]
            out += self._histogram("tsmr_appraisal_duration_seconds", self.appraisal, (), ())
        out += ["# HELP tsmr_process_start_time_seconds When this worker started, seconds since the epoch.",
                "# TYPE tsmr_process_start_time_seconds gauge",
                f"tsmr_process_start_time_seconds {self.started:.3f}",
                "# HELP tsmr_process_id The process id of the worker that answered this scrape.",
                "# TYPE tsmr_process_id gauge",
                f"tsmr_process_id {os.getpid()}"]
        return "\n".join(out) + "\n"

    @staticmethod
    def _histogram(name: str, h: Histogram, names: tuple[str, ...], values: tuple[str, ...]) -> list[str]:
        lines = []
        for bound, n in zip(h.buckets, h.counts):
            lines.append(f"{name}_bucket{_labels((*names, 'le'), (*values, repr(bound)))} {n}")
        lines.append(f"{name}_bucket{_labels((*names, 'le'), (*values, '+Inf'))} {h.total}")
        lines.append(f"{name}_sum{_labels(names, values)} {h.sum:.6f}")
        lines.append(f"{name}_count{_labels(names, values)} {h.total}")
        return lines
