"""Per-domain appraisers: plugins that judge the runtime-log events of the domains they own.

An appraiser is an object with

* ``name``: a short identifier (``allowlist``, ``coco``); its findings' ids
  start with ``appraiser.<name>.``;
* ``domains``: the event domains it judges, as shell-style patterns (``"*"``
  for every domain);
* ``appraise(events, config) -> list[Finding]``: ``events`` are the
  runtime-log events of those domains, each
  ``{"register", "seq", "domain", "operation", "content", "line"}``, in log
  order; ``config`` is ``reference_values.appraisers[name]`` (``{}`` when
  the reference values say nothing of it);
* optionally ``check_config(config)``, raising
  :class:`~tsmr.errors.InputError` for a configuration it cannot use.
* optionally ``judges(event, config) -> bool``: whether, so configured, it
  decides on the event (allows it, or reports a finding against it), as
  opposed to passing it over.  Reference-value coverage
  (:mod:`tsmr.appraisal.coverage`) counts an event as judged when an
  appraiser the reference values configure judges it; without this method,
  a configured appraiser judges every event of its ``domains``.

Appraisers are discovered through the entry-point group ``tsmr.appraisers``
(:func:`load_appraisers`); an entry point names the appraiser's class (built
without arguments) or an instance.  The two shipped here, ``allowlist`` and
``coco``, are used even when the package's entry points are not installed.
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from ..model import Finding

__all__ = ["Appraiser", "GROUP", "load_appraisers", "discovered_appraisers", "builtin_appraisers", "covers"]

GROUP = "tsmr.appraisers"


@runtime_checkable
class Appraiser(Protocol):
    name: str
    domains: Sequence[str]

    def appraise(self, events: list[dict[str, Any]], config: Mapping[str, Any]) -> list[Finding]: ...


def covers(appraiser: Any, domain: str) -> bool:
    """Whether one of the appraiser's domain patterns matches ``domain``."""
    return any(fnmatch.fnmatchcase(domain, pattern) for pattern in appraiser.domains)


def builtin_appraisers() -> list[Any]:
    from .allowlist import AllowlistAppraiser
    from .coco import CocoAppraiser

    return [AllowlistAppraiser(), CocoAppraiser()]


def _usable(obj: Any) -> bool:
    return (isinstance(getattr(obj, "name", None), str) and isinstance(getattr(obj, "domains", None), (list, tuple))
            and callable(getattr(obj, "appraise", None)))


def load_appraisers() -> list[Any]:
    """The appraisers registered under the ``tsmr.appraisers`` entry-point group, sorted by name.

    One that cannot be loaded, or is not an appraiser, is skipped with a
    warning (an appraisal configured for it then reports ``appraiser.missing``).
    The built-in ``allowlist`` and ``coco`` fill in when not registered.
    """
    from importlib.metadata import entry_points

    found: dict[str, Any] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            if isinstance(obj, type):
                obj = obj()
        except Exception as exc:  # a broken plugin must not stop every appraisal
            warnings.warn(f"appraiser {ep.name!r} ({ep.value}) could not be loaded: {exc}", RuntimeWarning, stacklevel=2)
            continue
        if not _usable(obj):
            warnings.warn(f"entry point {ep.name!r} ({ep.value}) is not an appraiser (needs name, domains, appraise)",
                          RuntimeWarning, stacklevel=2)
            continue
        if obj.name in found:
            warnings.warn(f"two appraisers are named {obj.name!r}; the first ({found[obj.name]!r}) is used",
                          RuntimeWarning, stacklevel=2)
            continue
        found[obj.name] = obj
    for obj in builtin_appraisers():
        found.setdefault(obj.name, obj)
    return [found[name] for name in sorted(found)]


@functools.lru_cache(maxsize=1)
def _discovered() -> tuple[Any, ...]:
    return tuple(load_appraisers())


def discovered_appraisers() -> list[Any]:
    """:func:`load_appraisers`, run once per process: what :func:`~tsmr.appraisal.appraise` uses by default.

    Scanning the installed distributions' entry points costs milliseconds, and what is installed
    does not change under a running verifier; ``discovered_appraisers.cache_clear()`` forgets it.
    The appraisers are shared by every appraisal (and thread) of the process: they judge the
    events and configuration they are given and keep no state of their own.
    """
    return list(_discovered())


discovered_appraisers.cache_clear = _discovered.cache_clear  # type: ignore[attr-defined]
