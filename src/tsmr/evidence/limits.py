"""Bounds on the work one input can cause: bundle limits, a time budget, and one bounded file reader.

Theory of operation
-------------------
An evidence bundle is sent by a client the verifier does not know, so every
cost it can cause must have a ceiling that does not depend on the client's
honesty.  Three mechanisms, cheapest first:

1. **Counting before working** (:meth:`Budget.check_document`): the number of
   logs, and for text logs (tsmr runtime logs, CoCo AAEL v1) the number of
   lines and the longest line, are found from the base64-decoded bytes with a
   few C-speed scans (``bytes.count``, ``bytes.split``), before the evidence
   is verified, before anything is parsed and, in the service, before the
   nonce is spent.  Binary logs (TCG2, CCEL, CEL, IMA) cannot be counted
   without parsing them; their parsing is bounded by their size (the request
   body limit), and :meth:`Budget.count_events` counts their events right
   after each log is parsed, before replay, explanations and policy.
2. **A limit on runtime events** (:meth:`Budget.check_runtime_events`):
   runtime-log events (tsmr records, CoCo AAEL entries) are the expensive
   ones: each is split into domain, operation and content, listed in the
   result (proven or not), judged by appraisers and handed to the Rego
   policy, whose interpreter takes about 0.2 ms per event to read its input
   (rego-cpp builds its own tree of the whole input, in one call that cannot
   be interrupted).  They are counted right after parsing, before replay.
3. **A time budget** (:meth:`Budget.check_time`): a deadline checked between
   the appraisal's steps and after each log is parsed.  Every step is bounded
   by the limits above, so an appraisal ends at most one step after its
   deadline.  A ``cancelled`` callable is checked at the same points, which
   lets the verifier service stop an appraisal when it is asked to shut down.

Exceeding a limit raises :class:`LimitExceeded` (an
:class:`~tsmr.errors.InputError`: exit 2 on the command line, ``413
bundle.too-large`` from the service) naming the limit, the value found and
the maximum; the time budget raises :class:`TimeBudgetExceeded` (``422
appraisal.time-budget``); a cancelled appraisal :class:`AppraisalCancelled`
(``503``).  Bundles that pass are appraised exactly as before: no limit ever
truncates a log or hides an event, because a policy that sees part of a log
could be told something untrue.

Defaults (:class:`Limits`) and why:

======================  ===========  ===================================================================
limit                   default      reason
======================  ===========  ===================================================================
``max_logs``            64           firmware, IMA and a runtime log per register fit many times over
``max_records``         100,000      every record of every log; IMA lists of tens of thousands of
                                     entries pass with a firmware log beside them
``max_log_records``     10,000       lines of one runtime (text) log
``max_record_bytes``    65,536       the runtime-log spec's maximum line (section 2.1); also the event
                                     data of a binary record (firmware events are a few KiB)
``max_runtime_events``  10,000       runtime-log events of all logs: those the policy and appraisers
                                     judge, and the unproven ones the result lists
``time_budget``         30 s         the worst bundle under the other limits appraises in a few seconds
======================  ===========  ===================================================================

The variables that set the limits (:data:`ENV`) are read by
:func:`tsmr.system.inputs.limits_from_env`, above this pure module.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from ..errors import InputError, TsmrError
from ..formats import aael

__all__ = ["Limits", "Budget", "LimitExceeded", "TimeBudgetExceeded", "AppraisalCancelled", "DEFAULT_LIMITS", "ENV",
           "longest_record", "runtime_event_count"]

# Limits field -> environment variable (read by tsmr.system.inputs.limits_from_env and the service's settings).
ENV = {
    "max_logs": "TSMR_MAX_LOGS",
    "max_records": "TSMR_MAX_RECORDS",
    "max_log_records": "TSMR_MAX_LOG_RECORDS",
    "max_record_bytes": "TSMR_MAX_RECORD_BYTES",
    "max_runtime_events": "TSMR_MAX_RUNTIME_EVENTS",
    "time_budget": "TSMR_TIME_BUDGET",
}

# How each limit is called in messages, with the option and variable that raise it.
_NAMES = {
    "max_logs": ("logs in the bundle", "--max-logs"),
    "max_records": ("records in all logs of the bundle", "--max-records"),
    "max_log_records": ("records in one runtime log", "--max-log-records"),
    "max_record_bytes": ("bytes in one record", "--max-record-bytes"),
    "max_runtime_events": ("runtime-log events in the bundle", "--max-runtime-events"),
    "time_budget": ("seconds of appraisal", "--time-budget"),
}

# Log formats read as text, one record per line, which are counted before parsing (the others are
# binary or JSON, counted as they are parsed); max_log_records is for runtime logs ("tsmr") only.
_TEXT_FORMATS = ("tsmr", "ima-ascii")


class LimitExceeded(InputError):
    """An input is over one of the :class:`Limits`: ``limit`` (the field), ``value`` found, ``maximum``."""

    code = "bundle.too-large"

    def __init__(self, limit: str, value: float, maximum: float, where: str = "") -> None:
        self.limit = limit
        self.value = value
        self.maximum = maximum
        self.where = where
        what, option = _NAMES.get(limit, (limit, ""))
        env = ENV.get(limit, "")
        place = f"{where}: " if where else ""
        raise_it = f" (the limit {limit}: raise it with {option} or {env})" if option else f" (the limit {limit})"
        super().__init__(f"{place}{_num(value)} {what}, over the limit of {_num(maximum)}{raise_it}")


class TimeBudgetExceeded(LimitExceeded):
    """The appraisal ran past its time budget (``where`` names the step it had reached)."""

    code = "appraisal.time-budget"

    def __init__(self, spent: float, budget: float, where: str = "") -> None:
        TsmrError.__init__(self)  # the message differs from LimitExceeded's
        self.limit, self.value, self.maximum, self.where = "time_budget", round(spent, 3), budget, where
        self.args = (f"the appraisal took more than its time budget of {_num(budget)} s (stopped after "
                     f"{spent:.1f} s, at {where or 'a step boundary'}; raise it with --time-budget or "
                     f"{ENV['time_budget']})",)


class AppraisalCancelled(TsmrError):
    """The appraisal was stopped from outside (the verifier is shutting down)."""

    code = "verifier.shutting-down"


def _num(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


@dataclass(frozen=True)
class Limits:
    """Ceilings on what one bundle may ask of a verifier (see the module docstring for the defaults).

    A value of 0 (or a negative one) switches that limit off.
    """

    max_logs: int = 64
    max_records: int = 100_000
    max_log_records: int = 10_000
    max_record_bytes: int = 65_536
    max_runtime_events: int = 10_000
    time_budget: float = 30.0

    def with_overrides(self, **overrides: Any) -> "Limits":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


DEFAULT_LIMITS = Limits()


def _on(value: float) -> bool:
    return value > 0


class Budget:
    """One appraisal's use of its :class:`Limits`: counters, the deadline, and a cancellation check."""

    def __init__(self, limits: Limits | None = None, *, cancelled: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or DEFAULT_LIMITS
        self.cancelled = cancelled
        self.clock = clock
        self.start = clock()
        self.records = 0

    # -- counting before working --------------------------------------------------------------------

    def check_document(self, doc: Any) -> None:
        """Raise :class:`LimitExceeded` if the bundle's logs are over a limit that can be seen without parsing.

        Malformed parts are left alone: the appraisal reports them as findings.
        """
        lim = self.limits
        logs = doc.get("logs") if isinstance(doc, Mapping) else None
        if not isinstance(logs, Sequence) or isinstance(logs, (str, bytes)):
            return
        if _on(lim.max_logs) and len(logs) > lim.max_logs:
            raise LimitExceeded("max_logs", len(logs), lim.max_logs)
        lines_total = events_total = 0
        for n, log in enumerate(logs):
            if not isinstance(log, Mapping) or not isinstance(log.get("data"), str):
                continue
            fmt = log.get("format")
            if fmt is not None and fmt not in _TEXT_FORMATS:
                continue  # a binary log (CCEL, TCG2) is counted when parsed: no need to decode it twice
            try:
                data = base64.b64decode(log["data"], validate=True)
            except (binascii.Error, ValueError):
                continue
            if fmt is None and (data[:5] in (b"SYNC ", b"INIT ") or data[:1] == b"#"):
                fmt = "tsmr"  # what tsmr.eventlog.detect will say
            if fmt not in _TEXT_FORMATS:
                continue
            where = f"logs[{n}]" + (f" ({log['name']})" if isinstance(log.get("name"), str) else "")
            lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
            if fmt == "tsmr" and _on(lim.max_log_records) and lines > lim.max_log_records:
                raise LimitExceeded("max_log_records", lines, lim.max_log_records, where)
            lines_total += lines
            if fmt == "tsmr":  # every line but blanks, comments and sync records is an event
                events_total += lines - (data[:1] in (b"#", b"\n") or data[:5] in (b"SYNC ", b"INIT ")) - sum(
                    data.count(p) for p in (b"\n#", b"\n\n", b"\nSYNC ", b"\nINIT "))
                if _on(lim.max_runtime_events) and events_total > lim.max_runtime_events:
                    raise LimitExceeded("max_runtime_events", events_total, lim.max_runtime_events)
            if _on(lim.max_records) and lines_total > lim.max_records:
                raise LimitExceeded("max_records", lines_total, lim.max_records)
            if _on(lim.max_record_bytes) and len(data) > lim.max_record_bytes:
                longest = max(map(len, data.split(b"\n")))
                if longest > lim.max_record_bytes:
                    raise LimitExceeded("max_record_bytes", longest, lim.max_record_bytes, where)

    def count_events(self, events: Sequence[Any], n: int = 0, name: str | None = None) -> None:
        """Count the parsed events of log ``n``; raise when the bundle's records or a record's data are over."""
        self.count_measured(len(events), longest_record(events), n, name)

    def count_measured(self, records: int, longest: int, n: int = 0, name: str | None = None) -> None:
        """:meth:`count_events` for a log whose ``records`` and longest record data (``longest`` bytes)
        were counted before (a log parsed by an earlier appraisal): the same checks, the same errors."""
        lim = self.limits
        where = f"logs[{n}]" + (f" ({name})" if name else "")
        self.records += records
        if _on(lim.max_records) and self.records > lim.max_records:
            raise LimitExceeded("max_records", self.records, lim.max_records)
        if _on(lim.max_record_bytes) and longest > lim.max_record_bytes:
            raise LimitExceeded("max_record_bytes", longest, lim.max_record_bytes, where)
        self.check_time(f"parsing {where}")

    def counted(self, events: Sequence[Any], n: int = 0, name: str | None = None) -> Sequence[Any]:
        """``events`` after :meth:`count_events` (for use inside an expression)."""
        self.count_events(events, n, name)
        return events

    def check_runtime_events(self, events: Sequence[Any]) -> None:
        """Raise when the parsed ``events`` hold more runtime-log events than the limit allows."""
        if _on(self.limits.max_runtime_events):
            self.check_runtime_count(runtime_event_count(events))

    def check_runtime_count(self, count: int) -> None:
        """:meth:`check_runtime_events` for events whose runtime-log events were counted before (``count``)."""
        lim = self.limits
        if _on(lim.max_runtime_events) and count > lim.max_runtime_events:
            raise LimitExceeded("max_runtime_events", count, lim.max_runtime_events)

    # -- the deadline ---------------------------------------------------------------------------------

    def check_time(self, where: str = "") -> None:
        """Raise :class:`AppraisalCancelled` or :class:`TimeBudgetExceeded` when it is time to stop."""
        if self.cancelled is not None and self.cancelled():
            raise AppraisalCancelled(f"the appraisal was stopped at {where or 'a step boundary'}: "
                                     "the verifier is shutting down")
        budget = self.limits.time_budget
        if _on(budget):
            spent = self.clock() - self.start
            if spent > budget:
                raise TimeBudgetExceeded(spent, budget, where)


def longest_record(events: Sequence[Any]) -> int:
    """The length of the longest event data among ``events`` (what ``max_record_bytes`` bounds)."""
    return max((len(getattr(e, "data", b"") or b"") for e in events), default=0)


def runtime_event_count(events: Sequence[Any]) -> int:
    """How many of ``events`` are runtime-log events (what ``max_runtime_events`` bounds)."""
    return sum(1 for e in events if _is_runtime_event(e))


def _is_runtime_event(e: Any) -> bool:
    """Whether an event is a runtime-log event (as tsmr.appraisal.facts reads them), from cheap checks only."""
    source, kind = getattr(e, "source", None), getattr(e, "type", None)
    if source == "tsmr":
        return kind == "event"
    if source == "cel" and kind == "tsmr":
        data = e.data
        return not (data[:1] == b"#" or data.startswith((b"SYNC ", b"INIT ")))
    if kind in ("EV_EVENT_TAG", "aael"):
        return aael.is_tagged_aael(e.data)
    return False
