"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

One process counts in memory.  Worker processes of one ``tsmr serve
--workers N`` share a directory (``shared_dir``): at the end of each request
(and after each collateral event) a worker rewrites its own snapshot file there (``<id>.json``: one ``pwrite`` at offset
0 of a header with the length and SHA-256 of the JSON that follows, so no file
is created or renamed per update, and a reader that catches a write half-done
sees a checksum mismatch and reads again), and a scrape, whichever worker
answers it, sums every snapshot with its own live numbers.  A worker that
died leaves its snapshot behind, so the sums never go down when uvicorn
replaces it.  ``tsmr serve`` makes a new directory for each run and removes
it when the run ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Iterable[str], values: Iterable[str]) -> str:
    inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values))
    return "{" + inner + "}" if inner else ""


def _read_snapshot(path: Path, tries: int = 5) -> dict[str, Any] | None:
    """A worker's snapshot, or None if it cannot be read whole (its next write will be)."""
    for _ in range(tries):
        try:
            data = path.read_bytes()
        except OSError:
            return None
        head, nl, rest = data.partition(b"\n")
        try:
            length_s, digest = head.split(b" ")
            body = rest[:int(length_s)]
        except ValueError:
            continue
        if not nl or len(body) != int(length_s) or hashlib.sha256(body).hexdigest().encode() != digest:
            continue  # caught mid-write: read again
        try:
            snap = json.loads(body)
        except ValueError:
            return None
        return snap if isinstance(snap, dict) else None
    return None


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

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts, "total": self.total, "sum": self.sum}

    def add(self, snap: dict[str, Any]) -> None:
        counts = snap.get("counts")
        if not isinstance(counts, list) or len(counts) != len(self.counts):
            return
        self.counts = [a + int(b) for a, b in zip(self.counts, counts)]
        self.total += int(snap.get("total", 0))
        self.sum += float(snap.get("sum", 0.0))


class Metrics:
    """The counters and histograms of one verifier process (and, with ``shared_dir``, of its sibling workers)."""

    def __init__(self, shared_dir: str | os.PathLike[str] | None = None, *, worker: str | None = None) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}  # (method, route, status) -> count
        self.attestations: dict[str, int] = {}  # result status (or refusal reason) -> count
        self.collateral: dict[tuple[str, str], int] = {}  # (event, document kind) -> count
        self.appraisal = Histogram(LATENCY_BUCKETS)
        self.request_seconds: dict[str, Histogram] = {}  # route -> latency
        self.started = time.time()
        self.shared_dir = Path(shared_dir) if shared_dir else None
        self.worker = worker or str(os.getpid())
        self._fd: int | None = None
        if self.shared_dir is not None:
            self.shared_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._publish()

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a finished request, and share this worker's numbers: what the request counted
        before (its attestation, its appraisal time) is shared with it, one snapshot per request."""
        with self._lock:
            key = (method, route, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            self.request_seconds.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)
            self._publish()

    def attestation(self, status: str) -> None:
        """Count an attestation's outcome; shared with the request's own sample, which follows it (:meth:`request`)."""
        with self._lock:
            self.attestations[status] = self.attestations.get(status, 0) + 1

    def collateral_event(self, event: str, kind: str) -> None:
        """Count a collateral event: ``fetched``, ``fetch-failed`` or ``cache-hit``, per document kind."""
        with self._lock:
            key = (event, kind)
            self.collateral[key] = self.collateral.get(key, 0) + 1
            self._publish()

    def appraised(self, seconds: float) -> None:
        """Time an appraisal; shared with the request's own sample, which follows it (:meth:`request`)."""
        with self._lock:
            self.appraisal.observe(seconds)

    # -- sharing between workers ---------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        return {"worker": self.worker, "started": self.started,
                "requests": [[*k, n] for k, n in self.requests.items()],
                "attestations": self.attestations, "appraisal": self.appraisal.to_json(),
                "collateral": [[*k, n] for k, n in self.collateral.items()],
                "request_seconds": {r: h.to_json() for r, h in self.request_seconds.items()}}

    def _publish(self) -> None:
        """Under the lock: rewrite this worker's snapshot (a failure only costs the sharing)."""
        if self.shared_dir is None:
            return
        body = json.dumps(self._snapshot(), separators=(",", ":")).encode()
        record = b"%d %s\n" % (len(body), hashlib.sha256(body).hexdigest().encode()) + body
        try:
            if self._fd is None:
                self._fd = os.open(self.shared_dir / f"{self.worker}.json", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.pwrite(self._fd, record, 0)
        except OSError:
            pass

    def _others(self) -> list[dict[str, Any]]:
        if self.shared_dir is None:
            return []
        out = []
        try:
            paths = sorted(self.shared_dir.glob("*.json"))
        except OSError:
            return []
        for path in paths:
            if path.stem == self.worker:
                continue
            snap = _read_snapshot(path)
            if snap is not None:
                out.append(snap)
        return out

    def _combined(self) -> tuple[dict[tuple[str, str, str], int], dict[str, int], Histogram, dict[str, Histogram],
                                 dict[tuple[str, str], int], int]:
        """Under the lock: this worker's numbers plus every other snapshot's."""
        requests = dict(self.requests)
        attestations = dict(self.attestations)
        collateral = dict(self.collateral)
        appraisal = Histogram(LATENCY_BUCKETS)
        appraisal.add(self.appraisal.to_json())
        seconds: dict[str, Histogram] = {}
        for route, h in self.request_seconds.items():
            seconds.setdefault(route, Histogram(LATENCY_BUCKETS)).add(h.to_json())
        others = self._others()
        for snap in others:
            try:
                for method, route, status, n in snap.get("requests", []):
                    key = (str(method), str(route), str(status))
                    requests[key] = requests.get(key, 0) + int(n)
                for status, n in dict(snap.get("attestations", {})).items():
                    attestations[str(status)] = attestations.get(str(status), 0) + int(n)
                appraisal.add(dict(snap.get("appraisal", {})))
                for route, h in dict(snap.get("request_seconds", {})).items():
                    seconds.setdefault(str(route), Histogram(LATENCY_BUCKETS)).add(dict(h))
                for event, kind, n in snap.get("collateral", []):
                    ckey = (str(event), str(kind))
                    collateral[ckey] = collateral.get(ckey, 0) + int(n)
            except (TypeError, ValueError):
                continue
        return requests, attestations, appraisal, seconds, collateral, 1 + len(others)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            requests, attestations, appraisal, request_seconds, collateral, processes = self._combined()
        out += ["# HELP tsmr_http_requests_total HTTP requests served, by method, route template and status.",
                "# TYPE tsmr_http_requests_total counter"]
        for (method, route, status), n in sorted(requests.items()):
            out.append(f"tsmr_http_requests_total{_labels(('method', 'route', 'status'), (method, route, status))} {n}")
        out += ["# HELP tsmr_http_request_duration_seconds Time to serve a request, by route template.",
                "# TYPE tsmr_http_request_duration_seconds histogram"]
        for route, h in sorted(request_seconds.items()):
            out += self._histogram("tsmr_http_request_duration_seconds", h, ("route",), (route,))
        out += ["# HELP tsmr_attestations_total Attestation requests, by result status or refusal reason.",
                "# TYPE tsmr_attestations_total counter"]
        for status, n in sorted(attestations.items()):
            out.append(f"tsmr_attestations_total{_labels(('status',), (status,))} {n}")
        out += ["# HELP tsmr_collateral_total Collateral documents fetched, fetches failed, and documents read from "
                "the cache, by event (fetched, fetch-failed, cache-hit) and document kind.",
                "# TYPE tsmr_collateral_total counter"]
        for (event, kind), n in sorted(collateral.items()):
            out.append(f"tsmr_collateral_total{_labels(('event', 'kind'), (event, kind))} {n}")
        out += ["# HELP tsmr_appraisal_duration_seconds Time spent in appraise() per attestation.",
                "# TYPE tsmr_appraisal_duration_seconds histogram"]
        out += self._histogram("tsmr_appraisal_duration_seconds", appraisal, (), ())
        out += ["# HELP tsmr_process_start_time_seconds When this worker started, seconds since the epoch.",
                "# TYPE tsmr_process_start_time_seconds gauge",
                f"tsmr_process_start_time_seconds {self.started:.3f}",
                "# HELP tsmr_process_id The process id of the worker that answered this scrape.",
                "# TYPE tsmr_process_id gauge",
                f"tsmr_process_id {os.getpid()}",
                "# HELP tsmr_worker_processes Worker processes whose numbers are summed here (live and exited).",
                "# TYPE tsmr_worker_processes gauge",
                f"tsmr_worker_processes {processes}"]
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
