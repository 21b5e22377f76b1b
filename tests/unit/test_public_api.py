"""The public API of the ``tsmr`` package: what ``from tsmr import *`` binds, the exception tree,
the replay module, status enums and the immutable appraisal result."""

from __future__ import annotations

import builtins
import enum
import importlib
import inspect
import json
import pkgutil
import types
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

import tsmr
from tsmr.appraisal import EarStatus, Finding, Result, appraise, ear

# Exception classes that never leave the program that raises them, so they are not part of the API:
# HttpError and ApiError carry an HTTP status inside a server, which turns them into a response;
# Refused and Unreadable carry a command's outcome to the CLI's one exit-code handler.
SERVER_INTERNAL = {"tsmr.agent.server.HttpError", "tsmr.service.app.ApiError",
                   "tsmr.cli.common.Refused", "tsmr.cli.common.Unreadable",
                   "tsmr.service.db.NodeExists"}  # the verifier answers it with 409 node.exists


def _modules() -> Iterator[types.ModuleType]:
    """Every module of the installed tsmr package, imported (``python -m`` entry points included)."""
    yield tsmr
    for info in pkgutil.walk_packages(tsmr.__path__, "tsmr."):
        yield importlib.import_module(info.name)


def _defined(base: type) -> dict[str, type]:
    """Public classes deriving from ``base`` defined in tsmr's modules, by qualified name."""
    out = {}
    for mod in _modules():
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, base) and obj.__module__ == mod.__name__
                    and not name.startswith("_")):
                out[f"{mod.__name__}.{name}"] = obj
    return out


def test_star_import_leaves_the_builtin_open_alone() -> None:
    namespace: dict[str, object] = {}
    exec("from tsmr import *", namespace)  # the statement under test
    assert "open" not in namespace
    assert eval("open", namespace) is builtins.open
    assert "HashAlg" in namespace and "TsmrError" in namespace  # the star import does bind the API
    # tsmr.open stays the documented entry point, reached through the package.
    from tsmr.backends.detect import open_backend

    assert tsmr.open is open_backend and "open" not in tsmr.__all__


def test_every_exception_class_is_exported() -> None:
    found = _defined(BaseException)
    assert "tsmr.errors.TsmrError" in found and "tsmr.evidence.anchors.TrustAnchorMissing" in found
    assert SERVER_INTERNAL <= set(found), "the list of server-internal exceptions names a class that is gone"
    missing = sorted(q for q, cls in found.items()
                     if q not in SERVER_INTERNAL and (cls.__name__ not in tsmr.__all__
                                                     or getattr(tsmr, cls.__name__) is not cls))
    assert missing == [], f"exception classes not exported by tsmr.__all__: {missing}"
    for q in SERVER_INTERNAL:
        assert not issubclass(found[q], tsmr.TsmrError), f"{q} reaches callers: export it"
    # and everything tsmr.__all__ names exists
    assert [n for n in tsmr.__all__ if not hasattr(tsmr, n)] == []


def test_replay_is_a_plain_module_with_a_replay_function() -> None:
    import tsmr.replay

    assert type(tsmr.replay) is types.ModuleType and not callable(tsmr.replay)
    assert inspect.isfunction(tsmr.replay.replay) and tsmr.explain is tsmr.replay.explain
    log = tsmr.eventlog.parse(b"SYNC sha384/" + b"0" * 96 + b"\nexample.com/app start\n")
    value = tsmr.replay.replay(log.events).registers["rtmr3"][tsmr.HashAlg.SHA384]
    assert value.hex().startswith("36c56e79ea2d2412")


def test_statuses_are_string_enums() -> None:
    statuses = {q: cls for q, cls in _defined(enum.Enum).items() if q.endswith(("Status", "Severity"))}
    assert "tsmr.appraisal.model.EarStatus" in statuses
    for q, cls in statuses.items():
        assert issubclass(cls, enum.StrEnum), q
        for member in cls:
            assert member == member.value and str(member) == member.value and f"{member}" == member.value
            assert json.dumps({member: member}) == json.dumps({member.value: member.value})
    assert [s.value for s in EarStatus] == ["none", "affirming", "warning", "contraindicated"]


NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def _result() -> Result:
    """A result built from plain strings, lists and dicts, which the constructor makes read-only."""
    plain: dict[str, Any] = dict(
        status="warning", kind="tdx", nonce="ab" * 32,
        findings=[Finding("replay.gap", "warning", "rtmr3 sha384: a gap", "executables")],
        trustworthiness={"executables": 32, "hardware": 2},
        registers=[{"register": "rtmr3", "bank": "sha384", "status": "gap"}],
        events={"example.com/app": [{"operation": "deploy", "content": {"image": ["alpine"]}}]},
        unproven=[{"operation": "start", "reason": "before the gap"}],
        claims={"advisory_ids": ["INTEL-SA-00837"], "tcb": {"svn": [1, 2]}},
        quirks=["duplicate-separators"], policy_id="default@1")
    return Result(**plain)


def _containers(value: object) -> Iterator[object]:
    yield value
    if isinstance(value, (tuple, types.MappingProxyType)):
        for v in value.values() if isinstance(value, types.MappingProxyType) else value:
            yield from _containers(v)


def test_an_appraisal_result_cannot_be_changed() -> None:
    r = _result()
    assert r.status is EarStatus.WARNING and r.status == "warning"
    with pytest.raises(AttributeError):
        r.status = EarStatus.AFFIRMING  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.findings = ()  # type: ignore[misc]
    for field in ("findings", "trustworthiness", "registers", "events", "unproven", "claims", "quirks"):
        for c in _containers(getattr(r, field)):
            assert not isinstance(c, (list, dict, set)), f"{field} holds a mutable {type(c).__name__}"
            assert not hasattr(c, "append") and not hasattr(c, "__setitem__") and not hasattr(c, "pop"), field
    with pytest.raises(TypeError):
        r.trustworthiness["hardware"] = 96  # type: ignore[index]
    with pytest.raises(TypeError):
        r.events["example.com/app"][0]["content"]["image"] += ("nginx",)  # type: ignore[index]
    # The JSON shape is unchanged: plain objects and arrays, which the caller may change freely.
    d = r.to_dict()
    assert d == {"status": "warning", "kind": "tdx", "nonce": "ab" * 32,
                 "findings": [{"id": "replay.gap", "severity": "warning", "message": "rtmr3 sha384: a gap",
                               "claim": "executables", "context": {}}],
                 "trustworthiness": {"executables": 32, "hardware": 2},
                 "registers": [{"register": "rtmr3", "bank": "sha384", "status": "gap"}],
                 "events": {"example.com/app": [{"operation": "deploy", "content": {"image": ["alpine"]}}]},
                 "unproven": [{"operation": "start", "reason": "before the gap"}],
                 "claims": {"advisory_ids": ["INTEL-SA-00837"], "tcb": {"svn": [1, 2]}},
                 "quirks": ["duplicate-separators"], "policy_id": "default@1", "refvals_id": None}
    assert type(d["status"]) is str and json.loads(json.dumps(d)) == d
    d["claims"]["advisory_ids"].append("changed")
    assert r.claims["advisory_ids"] == ("INTEL-SA-00837",)
    sub = ear.claims_for(r, now=NOW)["submods"]["tdx"]
    assert json.dumps(sub["ear.status"]) == '"warning"' and sub["tsmr.registers"] == d["registers"]


def test_appraise_returns_an_immutable_result_with_an_ear_status() -> None:
    r = appraise({"format": "not-a-bundle"}, now=NOW)
    assert r.status is EarStatus.CONTRAINDICATED and isinstance(r.findings, tuple)
    assert r.finding_ids()[0] == "bundle.malformed"
    assert isinstance(r.trustworthiness, types.MappingProxyType) and r.registers == () and r.quirks == ()
    with pytest.raises(AttributeError):
        r.kind = "tdx"  # type: ignore[misc]
    assert json.dumps(r.to_dict()["status"]) == '"contraindicated"'
