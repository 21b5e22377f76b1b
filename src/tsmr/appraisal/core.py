"""Appraisal: an evidence bundle in, a :class:`~tsmr.appraisal.model.Result` of findings out.

Theory of operation
-------------------
:func:`appraise` runs every step it can and records what each finds as a
:class:`Finding` with a stable dotted id, a severity and the AR4SI
trustworthiness claim it affects.  Bad evidence is never an exception: an
exception means the appraisal could not be evaluated as asked (an invalid
policy or reference-values argument, trust anchors the verifier lacks, a
programming error).  The steps, in order:

1. **Bundle structure** (:mod:`tsmr.evidence.bundle`): format, version,
   nonce, evidence object, log list.
2. **Evidence**: the quote, report or token verified with the given trust
   anchors, bound to the bundle's nonce.  Nothing after step 3 runs when it
   fails: unverified registers and logs prove nothing.
3. **Freshness**: the bundle's nonce against the one the verifier issued,
   whether that was already used, and when it expired.
4. **Replay**: every log replayed (firmware first) and compared with the
   signed registers; named quirks from the reference values may explain
   firmware oddities, and the ones applied are listed in ``Result.quirks``.
5. **Reference values** (:mod:`tsmr.appraisal.refvals`): signed registers,
   evidence claims and required runtime events; a mismatch is explained by
   component when they carry predicted events (:mod:`tsmr.appraisal.mismatch`),
   and every signed register that holds a measurement must be covered by
   them (:mod:`tsmr.appraisal.coverage`).
6. **Appraisers** (:mod:`tsmr.appraisal.appraisers`): per-domain plugins judge
   the runtime-log events of their domains.
7. **Policy** (:mod:`tsmr.appraisal.policy`): a Rego policy sees the facts and
   the findings so far and may deny.

The status is the worst severity (info: ``affirming``, warning: ``warning``,
error: ``contraindicated``); findings are listed worst first.

What is kept between appraisals
-------------------------------
Verifiers appraise the same inputs over and over (a guest attested continuously,
many guests of one image), so what is a pure function of content is kept, in
bounded least-recently-used maps (:class:`tsmr.lru.LRU`), and used only for the
exact same content: compiled policies (:mod:`tsmr.appraisal.policy`, by the
text's digest), prepared reference values (:mod:`tsmr.appraisal.refvals`), the
events of firmware logs (``_FIRMWARE_LOGS``, by the log's exact text), and the
whole outcome of step 4 (``_REPLAYS``: by every log's exact format, register and
text, the evidence kind, the signed registers and the accepted quirks).  Keys
are cheap samples of the content; the content itself, compared exactly, decides
whether an entry is used.  Nothing is kept for input that failed (a policy that
does not compile, a log that does not parse), limits are checked on every
appraisal as if nothing were kept, and what an appraisal hands out (rows,
events given to appraisers and the policy, the result) cannot change what is
kept: it is new or read-only.

Finding catalogue
-----------------
=================================  ========  ==================  =====================================
id                                 severity  claim               when
=================================  ========  ==================  =====================================
``bundle.malformed``               error     instance-identity   the bundle document is not readable
                                                                 (context: ``field``)
``evidence.malformed``             error     hardware            the evidence bytes do not parse
``evidence.<check>``               error     hardware, or        a verifier check failed; ``<check>`` is
                                             instance-identity   the check (``tdx.quote.signature``,
                                             for the binding,    ``tdx.report_data``, ``tpm.nonce``,
                                             configuration for   ``snp.crl.revoked``...); a debuggable
                                             debug guests        guest is ``evidence.tdx.debug``,
                                                                 ``evidence.snp.policy.debug`` or
                                                                 ``evidence.cca.debug`` unless allowed
``evidence.tdx.tcb-status``        warning   hardware            the TDX platform, QE or TDX module TCB
                                                                 is short of UpToDate (context: the
                                                                 statuses and ``advisory_ids``);
                                                                 ``Revoked`` fails verification instead
``evidence.collateral-missing``    warning   hardware            checks that need collateral did not run
                                                                 (TDX CRLs, TCB info, QE identity; the
                                                                 SEV-SNP CRL); context ``not_checked``
``evidence.debug-allowed``         warning   configuration       a debuggable guest verified because
                                                                 ``allow_debug`` was given (context
                                                                 ``kind``, ``check``)
``freshness.not-checked``          warning   instance-identity   no expected nonce was given
``freshness.nonce-mismatch``       error     instance-identity   the bundle is not over the issued nonce
``freshness.nonce-reused``         error     instance-identity   the nonce was already used
``freshness.nonce-expired``        error     instance-identity   the nonce expired before ``now``
``log.malformed``                  error     executables         a log of the bundle cannot be read
``log.<anomaly>``                  warning   executables         a firmware-log anomaly no accepted
                                                                 quirk excuses (:func:`tsmr.quirks.findings`)
``replay.mismatch``                error     executables         a register does not replay to its
                                                                 signed value (register, bank, signed,
                                                                 replayed, explanation)
``replay.gap``                     warning   executables         a register was extended without a log
                                                                 record (a sync record declares it)
``replay.history-missing``         error     executables         a register's first record declares
                                                                 another value than it held at launch
                                                                 (the front of its log was cut)
``replay.not-signed``              error     executables         a log covers a register the evidence
                                                                 does not sign
``replay.data-mismatch``           error     executables         a record's recorded digest is not the
                                                                 hash of its data (CEL, IMA, systemd):
                                                                 the record is not judged
``replay.unlogged``                error     executables         a signed register changed since launch,
                                                                 and neither a log nor a reference value
                                                                 accounts for it
``refvals.register-mismatch``      error     executables         a signed register is not a reference value
                                                                 (register, bank, signed, allowed; with
                                                                 predicted events also ``explanation``,
                                                                 ``event_index``, ``seq``, ``component``,
                                                                 ``event_type``, ``expected``, ``actual``,
                                                                 ``predicted_bank``, or ``extra_events`` /
                                                                 ``missing_events``,
                                                                 or ``inputs`` and ``components``; the
                                                                 message ends with the explanation)
``refvals.claim-mismatch``         error     configuration or    an evidence claim is not a reference
                                             executables         value (launch measurements: executables;
                                                                 a launch register such as ``mrtd`` or
                                                                 ``measurement`` is explained as above)
``refvals.uncovered``              warning   executables         a signed register holds a measurement and
                                   (error)   (as a warning it    no reference value covers it (context
                                             sets no tier)       ``registers``, ``uncovered``: register,
                                                                 bank, reason; :mod:`tsmr.appraisal.coverage`);
                                                                 an error with ``require_refvals``
``refvals.event-missing``          error     executables         a required runtime event is absent
``appraiser.missing``              error     configuration       the reference values configure an
                                                                 appraiser that is not installed
``appraiser.<name>.<what>``        (theirs)  (theirs)            an appraiser's finding
``appraiser.<name>.failed``        error     executables         the appraiser raised an exception
``policy.deny``                    error     configuration       ``allow`` is false, or a ``deny`` entry
                                   (or the entry's)              (context ``rule``)
=================================  ========  ==================  =====================================

Only proven events are judged.  An event is proven when its register's
every signed bank replays, from the register's launch value, to its signed
value, and no later sync record of the register replaced the value it led
to.  Reference values, appraisers and the policy see proven events only;
the others are listed in ``Result.unproven`` with the reason.  Launch
values close the front of a log: zero (0xFF for TPM PCR 17-22), or what the
firmware log's events replayed the register to, so a first sync record
declaring anything else is ``replay.history-missing``.

A gap in the middle of a log is a warning, not an error: the register still
matches its signed value and every record after the gap is proven; what is
unknown is the content of the unlogged extension (and the events before the
gap, which become unproven).  A policy that wants gaps refused denies on
``replay.gap``.

Trustworthiness vector
----------------------
Each AR4SI claim (``TRUST_CLAIMS``) takes the tier value of the worst finding
that names it: 2 (affirming) for info or none, 32 (warning), 96
(contraindicated).  When the evidence could not be verified nothing else was
appraised, so the claims no finding names are 0 ("no claim") instead of 2.
When a signed register is uncovered (``refvals.uncovered``), nothing
established what was run or how it was configured: ``executables`` and
``configuration`` start at 0 instead of 2 and only warnings and errors raise
them (``refvals.uncovered`` itself as an error, with ``require_refvals``, makes
``executables`` 96; as a warning it is the reason for the 0 and sets no tier).
So an appraisal without reference values is at best ``warning``, never
``affirming``.
The claims findings name: evidence signatures, certificate chains, collateral
and TCB status affect ``hardware``; the nonce binding and freshness
``instance-identity``; replay, log anomalies, register reference values,
launch measurements and runtime events ``executables``; other claims
(attributes, configuration ids, host data), policy denials and appraiser
configuration ``configuration``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from ..algorithms import HashAlg
from ..errors import EvidenceError, InputError, ParseError
from ..events import Event
from ..evidence.anchors import TrustAnchorMissing, TrustAnchors
from ..evidence.bundle import FORMAT, LogReplay, check_document, log_events, replay_logs, verify_evidence
from ..evidence.limits import Budget, LimitExceeded, Limits, longest_record, runtime_event_count
from ..quirks import findings as quirk_findings
from .appraisers import covers, discovered_appraisers, load_appraisers
from .coverage import Uncovered, uncovered
from ..lru import LRU
from .facts import claims_json, content_json, runtime_events, signed_json
from .mismatch import explain as explain_mismatch
from .model import (SEVERITY_STATUS, STATUS_ORDER, TIER, TRUST_CLAIMS, EarStatus, Finding, Result, Severity,
                    frozen_json, result_of_frozen)
from .platform import platform_findings
from .policy import DEFAULT_POLICY, evaluate, prepare_policy
from .refvals import ReferenceValues, missing_events
from .refvals import prepare as prepare_refvals

__all__ = ["appraise", "Finding", "Result", "ReferenceValues", "load_appraisers", "DEFAULT_POLICY"]

_SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


def _severity(value: object) -> Severity:
    """A plugin's severity: one of the three, and anything else counts as the worst."""
    return Severity(value) if value in _SEVERITY_RANK else Severity.ERROR
_LAUNCH_CLAIMS = frozenset({"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam", "measurement", "rim",
                            "rem0", "rem1", "rem2", "rem3", "mrservicetd"})
_HARDWARE_CLAIMS = frozenset({"tcb_status", "tee_tcb_svn", "qe_tcb_status", "tdx_module_tcb_status", "advisory_ids",
                              "reported_tcb", "fmspc", "chip_id", "implementation_id", "platform_sw_components"})


def _aware(t: datetime) -> datetime:
    # Databases (SQLite) hand back naive datetimes: they are UTC here, as everywhere in tsmr.
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _same(actual: Any, allowed: Any) -> bool:
    """Claim equality as JSON values; hex strings compare without regard to case."""
    if isinstance(actual, str) and isinstance(allowed, str):
        return actual.lower() == allowed.lower()
    if isinstance(actual, bool) or isinstance(allowed, bool):
        return actual is allowed
    return bool(actual == allowed)


class _Run:
    """The findings of one appraisal so far, in the order the steps make them."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(self, id: str, severity: str, message: str, claim: str, **context: Any) -> None:
        self.findings.append(Finding(id, Severity(severity), message, claim, context))


def _evidence_claim(check: str) -> str:
    if check.endswith("debug"):  # the guest's own setting, not the hardware's genuineness
        return "configuration"
    return "instance-identity" if any(w in check for w in ("report_data", "nonce", "challenge")) else "hardware"


def appraise(
    bundle: Mapping[str, Any],
    *,
    policy: str | None = None,
    reference_values: ReferenceValues | Mapping[str, Any] | None = None,
    nonce: bytes | None = None,
    now: datetime,
    trust: TrustAnchors | None = None,
    nonce_expires_at: datetime | None = None,
    nonce_used: bool = False,
    appraisers: Sequence[Any] | None = None,
    policy_id: str | None = None,
    refvals_id: str | None = None,
    allow_debug: bool = False,
    limits: Limits | None = None,
    cancelled: Callable[[], bool] | None = None,
    require_refvals: bool = False,
    extra_findings: Sequence[Finding] = (),
    checks: Sequence[Callable[[str | None, Mapping[str, Any]], Finding | None]] = (),
) -> Result:
    """Appraise an evidence bundle (see the module docstring for the steps and findings).

    ``nonce`` is the nonce the verifier issued (None: freshness is not checked),
    ``nonce_expires_at`` and ``nonce_used`` what the verifier knows of it;
    ``now`` is the verification time; ``trust`` the verifier's
    :class:`~tsmr.evidence.TrustAnchors` (as :func:`tsmr.evidence.verify` takes them); ``policy``
    Rego source (default :data:`DEFAULT_POLICY`); ``appraisers`` replaces
    the discovered plugins (:func:`load_appraisers`); ``allow_debug`` lets
    debuggable guests verify (they are ``evidence.debug-allowed`` warnings
    instead of ``evidence.<kind>.debug`` errors).

    Raises :class:`~tsmr.errors.PolicyError` for a policy that does not
    compile or evaluate, :class:`~tsmr.errors.InputError` for invalid reference
    values or appraiser configuration, and
    :class:`~tsmr.evidence.TrustAnchorMissing` when ``trust`` lacks what
    the evidence needs; bad evidence and bundles are findings.

    ``limits`` bound the work (:class:`~tsmr.evidence.limits.Limits`, default
    :data:`~tsmr.evidence.limits.DEFAULT_LIMITS`): a bundle over one raises
    :class:`~tsmr.evidence.limits.LimitExceeded` (an InputError) before the
    step it would make expensive, and an appraisal past its time budget
    :class:`~tsmr.evidence.limits.TimeBudgetExceeded`; ``cancelled`` is asked
    at the same points and stops the appraisal with
    :class:`~tsmr.evidence.limits.AppraisalCancelled` when it returns true.

    A signed register that holds a measurement and that no reference value
    covers (:mod:`tsmr.appraisal.coverage`) is a ``refvals.uncovered``
    warning, so the result is at best ``warning``; ``require_refvals`` makes
    it an error (``contraindicated``).

    ``extra_findings`` are findings the caller made about this evidence
    before the appraisal, e.g. the verifier's collateral cache
    (:func:`tsmr.system.collateral.resolve`: ``collateral.unavailable``,
    ``collateral.expired``).  They join the result as they are, before the
    policy step, so the policy sees them and an error among them makes the
    result ``contraindicated``.  When one of them is an error, trust anchors
    missing for the evidence (an SEV-SNP VCEK that could not be fetched) are
    explained by it: the evidence is then left unverified instead of
    :class:`~tsmr.evidence.TrustAnchorMissing` being raised.

    ``checks`` are the caller's own judgements of what the evidence showed,
    made after it is verified and before the policy step (the policy sees
    their findings): each is called with the evidence kind and its claims
    (empty when the evidence did not verify) and returns a finding or None.
    The verifier checks that evidence shows an enrolled node's identity so.
    """
    budget = Budget(limits, cancelled=cancelled)
    budget.check_document(bundle)  # counted before anything is verified or parsed
    now = _aware(now)
    refvals, refvals_data = prepare_refvals(reference_values) if reference_values is not None else (None, None)
    source = DEFAULT_POLICY if policy is None else policy
    prepared_policy = prepare_policy(source)  # a bad policy is the caller's error: say so before any work
    if isinstance(nonce, str):
        try:
            nonce = bytes.fromhex(nonce)
        except ValueError:
            raise InputError("the expected nonce is not hex") from None
    apps = list(appraisers) if appraisers is not None else discovered_appraisers()
    by_name = {a.name: a for a in apps}
    if refvals is not None:
        for name, cfg in refvals.appraisers.items():
            checker = getattr(by_name.get(name), "check_config", None)
            if checker is not None:
                checker(cfg)

    run = _Run()
    # 1. bundle structure
    bundle_nonce: bytes | None = None
    logs: list[Any] = []
    try:
        bundle_nonce = check_document(bundle)
    except ParseError as exc:
        run.add("bundle.malformed", "error", str(exc), "instance-identity", field=exc.field or "")
    if bundle_nonce is not None:
        raw_logs = bundle.get("logs")
        if raw_logs is not None and not isinstance(raw_logs, list):
            run.add("bundle.malformed", "error", f"{FORMAT}: logs must be an array (field logs)", "instance-identity",
                    field="logs")
            bundle_nonce = None
        else:
            logs = list(raw_logs or [])

    # 2. evidence
    verified = None
    if bundle_nonce is not None:
        try:
            verified = verify_evidence(bundle, now=now, trust=trust, allow_debug=allow_debug)
            run.findings.extend(platform_findings(verified.kind, verified.claims))
        except TrustAnchorMissing:
            if not any(f.severity == "error" for f in extra_findings):
                raise
        except EvidenceError as exc:
            check = exc.check or "failed"
            run.add(f"evidence.{check}", "error", str(exc), _evidence_claim(check), check=check)
        except ParseError as exc:
            if exc.format == FORMAT:
                run.add("bundle.malformed", "error", str(exc), "instance-identity", field=exc.field or "")
            else:
                run.add("evidence.malformed", "error", str(exc), "hardware", format=exc.format, field=exc.field,
                        offset=exc.offset)
        except InputError as exc:
            run.add("evidence.malformed", "error", str(exc), "hardware")

    # 3. freshness
    if nonce is None:
        run.add("freshness.not-checked", "warning", "no expected nonce was given, so the evidence may be a replay",
                "instance-identity")
    elif bundle_nonce is not None and not hmac.compare_digest(nonce, bundle_nonce):
        run.add("freshness.nonce-mismatch", "error", "the bundle is over another nonce than the one issued",
                "instance-identity", expected=nonce.hex(), bundle=bundle_nonce.hex())
    if nonce_used:
        run.add("freshness.nonce-reused", "error", "the nonce was already used by another appraisal", "instance-identity")
    if nonce_expires_at is not None and now > _aware(nonce_expires_at):
        run.add("freshness.nonce-expired", "error",
                f"the nonce expired at {_aware(nonce_expires_at).isoformat()}, before {now.isoformat()}",
                "instance-identity", expires_at=_aware(nonce_expires_at).isoformat(), now=now.isoformat())

    rows: list[dict[str, Any]] = []
    no_claim = False  # some register holds what nothing established: executables and configuration are 0
    # Runtime events as read-only JSON objects (possibly kept in _REPLAYS and shared with other
    # appraisals: nobody can change them), proven ones also by domain.
    events_json: tuple[Mapping[str, Any], ...] = ()
    by_domain: Mapping[str, tuple[Mapping[str, Any], ...]] = {}
    unproven_json: tuple[Mapping[str, Any], ...] = ()
    claims: dict[str, Any] = {}
    applied: list[str] = []
    if verified is not None:
        claims = claims_json(verified.claims)
        accepted = refvals.quirks if refvals is not None else ()
        # 4. replay
        pinned = {(reg, bank) for reg, banks in (refvals.registers.items() if refvals is not None else ())
                  for bank in banks}
        rows, events_json, by_domain, unproven_json, applied, replayed = _replay_step(
            run, budget, logs, verified.kind, verified.signed, accepted, pinned)

        # 5. reference values, and what they leave uncovered
        if refvals is not None:
            _check_refvals(run, refvals, verified.signed, claims, events_json, rows, replayed)
        gaps = uncovered(verified.signed, claims, replayed, refvals, apps)
        if gaps:
            no_claim = True
            _report_uncovered(run, gaps, require_refvals)

        # 6. appraisers
        _run_appraisers(run, apps, by_name, refvals, events_json)

    run.findings.extend(extra_findings)
    kind = verified.kind if verified is not None else _kind_of(bundle)
    for judge in checks:  # the caller's, on what the evidence showed (no claims: it did not verify)
        judged = judge(kind, claims)
        if judged is not None:
            run.findings.append(judged)

    # 7. policy
    budget.check_time("policy")
    # Only the fields the policy can see are built (policy.input_fields): the events are most of the work.
    builders: dict[str, Callable[[], Any]] = {
        "kind": lambda: verified.kind if verified is not None else None,
        "nonce": lambda: bundle_nonce.hex() if bundle_nonce is not None else "",
        "claims": lambda: claims,
        "registers": lambda: signed_json(verified.signed) if verified is not None else {},
        "events": lambda: {d: [dict(e, json=content_json(e["content"])) for e in evs]
                           for d, evs in by_domain.items()},
        "findings": lambda: [f.id for f in run.findings],
        "errors": lambda: [f.id for f in run.findings if f.severity == "error"],
        "warnings": lambda: [f.id for f in run.findings if f.severity == "warning"],
    }
    wanted = prepared_policy.fields
    policy_input = {k: build() for k, build in builders.items() if wanted is None or k in wanted}
    decision = evaluate(source, policy_input, data_json=refvals_data)
    run.findings.extend(decision.findings)

    findings = tuple(sorted(run.findings, key=lambda f: -_SEVERITY_RANK.get(f.severity, 2)))
    status = _status(findings)
    if policy_id is None:
        policy_id = "tsmr-default" if policy is None else "sha256:" + hashlib.sha256(policy.encode()).hexdigest()[:16]
    # The events are frozen already, and nobody holds them mutably: the result takes them as they are.
    return result_of_frozen(
        {"events": MappingProxyType(dict(by_domain)), "unproven": unproven_json},
        status=status,
        kind=kind,
        nonce=bundle_nonce.hex() if bundle_nonce is not None else "",
        findings=findings,
        trustworthiness=_vector(findings, verified is not None, no_claim),
        registers=tuple(rows),
        claims=claims,
        quirks=tuple(applied),
        policy_id=policy_id,
        refvals_id=refvals_id if refvals_id is not None else (refvals.id if refvals is not None else None),
    )


# Firmware logs (CCEL, TCG2) are the same bytes for every guest booted from the same image and
# configuration, and the costliest to parse (UEFI variables, device paths, GPT decoded for each
# event's summary).  Their events (immutable values, never handed out of appraise()) are kept with
# the log's base64 text, under a key made of the text's length, format, register and a sample of
# its characters; an entry is used only when its text equals the log's (a comparison of memory,
# several times cheaper than a digest of a log of hundreds of kilobytes).  A log that does not
# parse raises and is not kept.  Runtime logs change with every append: they are parsed each time.
_FIRMWARE_FORMATS = frozenset({"ccel", "tcg2", "tcg2-sha1"})
FIRMWARE_LOG_CACHE_SIZE = 16
FIRMWARE_LOG_CACHE_MAX_CHARS = 2 << 20  # bigger logs are parsed each time (bounds the cache's memory)
_FIRMWARE_LOGS: LRU[tuple[str, tuple[Event, ...]]] = LRU(FIRMWARE_LOG_CACHE_SIZE)
_SAMPLES = 64  # characters of the text in a key, spread over all of it


def _firmware_key(data: str, fmt: str, register: str) -> tuple[Any, ...]:
    """Where a firmware log's events are kept.  Two logs with the same key but other text (an edited
    record between two samples) only replace each other's entry: the text decides, not the key."""
    return (len(data), fmt, register, data[:: max(1, len(data) // _SAMPLES)], data[-16:])


def _log_events(log: Any, n: int) -> list[Event]:
    """:func:`~tsmr.evidence.bundle.log_events`, with firmware logs' events kept (see above)."""
    data = log.get("data") if isinstance(log, Mapping) else None
    fmt = log.get("format") if isinstance(log, Mapping) else None
    if type(data) is not str or fmt not in _FIRMWARE_FORMATS or len(data) > FIRMWARE_LOG_CACHE_MAX_CHARS:
        return log_events(log, n)  # (a str subclass could compare equal to anything: never kept)
    key = _firmware_key(data, fmt, str(log.get("register") or "rtmr3"))
    found = _FIRMWARE_LOGS.get(key)
    if found is not None and found[0] == data:
        return list(found[1])
    events = tuple(log_events(log, n))
    _FIRMWARE_LOGS.put(key, (data, events))
    return list(events)


# Step 4 as a whole (parsing every log, replaying, quirk anomalies, the register rows and their
# findings, the runtime events proven and unproven) is a function of the logs (format, register and
# exact text of each), the evidence kind, the signed registers and the accepted quirks.  Those repeat:
# a guest attested continuously re-sends the same logs over the same registers, and guests of one
# image share them.  Its outcome is kept in _REPLAYS under a cheap key (the firmware cache's sample
# key of every log, and the kind); an entry is used only when every input equals the call's exactly
# (the texts compared as memory, the rest as values), and a mismatch is a miss whose outcome replaces
# the entry.  Only clean outcomes are kept: a bundle with a log that does not parse is appraised in
# full each time.  On a hit the caller's limits are checked as on a miss, from the counts kept in the
# entry (records and longest record of each log, runtime events), in the same order, with the same
# errors; the time budget is checked at the same points.  Nothing a call gets can change the entry:
# the register rows are new dicts (reference values mark them), the runtime events are read-only
# (frozen_json(), over dicts only their proxies hold; their values are strings and ints), appraisers
# get new dicts of them and the policy new objects, and the findings, events and replay are immutable.
# A register row of status ``unlogged`` is an error unless reference values pin the register: the
# entry keeps which findings those are, and each call drops the ones its reference values pin.
REPLAY_CACHE_SIZE = 64
REPLAY_CACHE_MAX_CHARS = 8 << 20  # log text held by all entries together; a bundle's logs over it are not kept
_REPLAYS: "LRU[_Replayed]" = LRU(REPLAY_CACHE_SIZE, max_weight=REPLAY_CACHE_MAX_CHARS)


@dataclass(frozen=True)
class _Replayed:
    """Step 4's outcome for one set of inputs (the first five fields), as :data:`_REPLAYS` keeps it."""

    texts: tuple[str, ...]  # each log's data, exactly
    logs: tuple[tuple[str | None, str], ...]  # each log's format and register
    kind: str
    signed: tuple[tuple[str, tuple[tuple[HashAlg, bytes], ...]], ...]  # as the verifier gave them, in order
    quirks: tuple[str, ...]
    counts: tuple[tuple[int, int], ...]  # each log's records and longest record data, for the limits
    runtime_count: int  # runtime-log events of all logs
    replayed: LogReplay
    applied: tuple[str, ...]
    # the step's findings in order, each with the (register, bank) of its unlogged row (None: always made)
    findings: tuple[tuple[Finding, tuple[str, str] | None], ...]
    rows: tuple[Mapping[str, Any], ...]  # templates: each call gets new dicts (reference values mark them)
    # Runtime events as frozen_json() made them (read-only, and no one holds their dicts): shared as they are.
    events_json: tuple[Mapping[str, Any], ...]
    by_domain: tuple[tuple[str, tuple[Mapping[str, Any], ...]], ...]  # the same events grouped by domain
    unproven_json: tuple[Mapping[str, Any], ...]

    def inputs(self) -> tuple[Any, ...]:
        return (self.texts, self.logs, self.kind, self.signed, self.quirks)


def _replay_inputs(logs: Sequence[Any], kind: str, signed: Mapping[str, Mapping[HashAlg, bytes]],
                   quirks: Sequence[str]) -> tuple[Any, ...] | None:
    """What step 4's outcome depends on (the fields :meth:`_Replayed.inputs` compares), or None when it
    cannot be kept: a log that is not an object of plain strings (it is parsed, and judged, every time)."""
    texts: list[str] = []
    described: list[tuple[str | None, str]] = []
    for log in logs:
        if type(log) is not dict:
            return None
        data, fmt, reg = log.get("data"), log.get("format"), log.get("register")
        # Exact types only: a str subclass could compare equal to anything.
        if type(data) is not str or (fmt is not None and type(fmt) is not str) or (
                reg is not None and type(reg) is not str):
            return None
        texts.append(data)
        described.append((fmt, reg or "rtmr3"))  # the register log_events() parses the log for
    return (tuple(texts), tuple(described), kind,
            tuple((reg, tuple(banks.items())) for reg, banks in signed.items()), tuple(quirks))


def _replay_step(
    run: _Run, budget: Budget, logs: Sequence[Any], kind: str, signed: Mapping[str, Mapping[HashAlg, bytes]],
    accepted: Sequence[str], pinned: set[tuple[str, str]],
) -> tuple[list[dict[str, Any]], tuple[Mapping[str, Any], ...], dict[str, tuple[Mapping[str, Any], ...]],
           tuple[Mapping[str, Any], ...], list[str], LogReplay]:
    """Step 4: its findings added to ``run``; returned are the rows (new dicts, the caller's to change),
    the proven runtime events (read-only), the same by domain (a new dict), the unproven ones (read-only),
    the applied quirks and the replay.  See :data:`_REPLAYS`."""
    inputs = _replay_inputs(logs, kind, signed, accepted)
    key: tuple[Any, ...] | None = None
    entry: _Replayed | None = None
    if inputs is not None:
        key = (kind, tuple(_firmware_key(text, fmt or "", reg) for text, (fmt, reg) in zip(inputs[0], inputs[1])))
        found = _REPLAYS.get(key)
        if found is not None and found.inputs() == inputs:
            entry = found
    if entry is not None:
        for n, log in enumerate(logs):
            budget.count_measured(*entry.counts[n], n, _log_name(log))
        budget.check_runtime_count(entry.runtime_count)
        budget.check_time("replay")
        budget.check_time("reference values")
    else:
        entry, clean = _replay(run, budget, logs, kind, signed, accepted)
        if clean and inputs is not None and key is not None and sum(map(len, inputs[0])) <= REPLAY_CACHE_MAX_CHARS:
            texts, described, _, signed_items, quirks = inputs
            entry = replace(entry, texts=texts, logs=described, signed=signed_items, quirks=quirks)
            _REPLAYS.put(key, entry, weight=sum(map(len, inputs[0])))
    for finding, unlogged in entry.findings:
        if unlogged is None or unlogged not in pinned:
            run.findings.append(finding)
    return ([dict(r) for r in entry.rows], entry.events_json, dict(entry.by_domain), entry.unproven_json,
            list(entry.applied), entry.replayed)


def _replay(run: _Run, budget: Budget, logs: Sequence[Any], kind: str, signed: Mapping[str, Mapping[HashAlg, bytes]],
            accepted: Sequence[str]) -> tuple[_Replayed, bool]:
    """Step 4 done: its outcome (the inputs left empty, for the caller to fill) and whether every log parsed.  Findings of logs that
    do not parse are added to ``run`` here, the step's others are in the outcome."""
    events: list[Event] = []
    counts: list[tuple[int, int]] = []
    clean = True
    for n, log in enumerate(logs):
        try:
            parsed = _log_events(log, n)
        except ParseError as exc:
            clean = False
            fid = "bundle.malformed" if exc.format == FORMAT else "log.malformed"
            run.add(fid, "error", str(exc), "instance-identity" if fid == "bundle.malformed" else "executables",
                    log=n, name=_log_name(log), field=exc.field or "", offset=exc.offset)
            continue
        except LimitExceeded:
            raise
        except InputError as exc:
            clean = False
            run.add("log.malformed", "error", str(exc), "executables", log=n, name=_log_name(log))
            continue
        counts.append((len(parsed), longest_record(parsed)))
        budget.count_measured(*counts[-1], n, _log_name(log))
        events.extend(parsed)
    runtime_count = runtime_event_count(events)
    budget.check_runtime_count(runtime_count)  # what gets split, listed, judged and handed to the policy
    budget.check_time("replay")
    replayed = replay_logs({}, kind, signed, events=events, quirks=accepted)
    budget.check_time("reference values")
    anomalies, applied = quirk_findings(events, accepted)
    step = _Run()
    for a in anomalies:
        parts = a.id.split(".")
        if len(parts) == 3:  # log.<register>.<anomaly>: the register goes to the context
            step.add(f"log.{parts[2]}", "warning", a.message, "executables", register=parts[1])
        else:
            step.add(a.id, "warning", a.message, "executables")
    found: list[tuple[Finding, tuple[str, str] | None]] = [(f, None) for f in step.findings]
    rows: list[dict[str, Any]] = []
    for r in replayed.rows:
        rows.append({"register": r.register, "bank": r.bank, "signed": r.signed, "replayed": r.replayed,
                     "status": r.status, "explanation": r.explanation, "reference": None})
        ctx = {"register": r.register, "bank": r.bank, "signed": r.signed, "replayed": r.replayed,
               "explanation": r.explanation}
        unlogged: tuple[str, str] | None = None
        step.findings.clear()
        if r.status == "mismatched":
            step.add("replay.mismatch", "error", r.explanation or f"{r.register} {r.bank} does not replay to its "
                     "signed value", "executables", **ctx)
        elif r.status == "gap":
            step.add("replay.gap", "warning", f"{r.register} {r.bank}: {r.explanation}", "executables", **ctx)
        elif r.status == "history-missing":
            step.add("replay.history-missing", "error", f"{r.register} {r.bank}: {r.explanation}", "executables", **ctx)
        elif r.status == "not-signed":
            step.add("replay.not-signed", "error", f"{r.register} {r.bank}: a log covers it, but {r.explanation}; "
                     "its events prove nothing", "executables", **ctx)
        elif r.status == "data-mismatch":
            step.add("replay.data-mismatch", "error", f"{r.register} {r.bank}: {r.explanation}; the record is "
                     "not judged", "executables", **ctx)
        elif r.status == "unlogged":
            # Its value is known only as a hash: without a log or a reference value for it (the
            # caller drops this finding when one pins the register), whatever was measured there
            # stays unjudged (and leaving the log out must not be a way to hide events).
            unlogged = (r.register, r.bank)
            step.add("replay.unlogged", "error", f"{r.register} {r.bank}: {r.explanation}", "executables", **ctx)
        found.extend((f, unlogged) for f in step.findings)
    # Their values are strings and ints: frozen_json() copies each into a dict only its proxy holds.
    events_json = tuple(map(frozen_json, runtime_events(replayed.proven, arch=replayed.arch)))
    by_domain: dict[str, list[Mapping[str, Any]]] = {}
    for e in events_json:
        by_domain.setdefault(str(e["domain"]), []).append(e)
    by_reason: dict[str, list[Any]] = {}
    for ev, reason in replayed.unproven:  # few distinct reasons: one pass over the events each
        by_reason.setdefault(reason, []).append(ev)
    unproven_json = tuple(frozen_json(dict(e, reason=reason)) for reason, evs in by_reason.items()
                          for e in runtime_events(evs, arch=replayed.arch))
    none: tuple[Any, ...] = ()
    return _Replayed(none, none, kind, none, none, tuple(counts), runtime_count, replayed, tuple(applied),
                     tuple(found), tuple(rows), events_json, tuple((d, tuple(evs)) for d, evs in by_domain.items()),
                     unproven_json), clean


def _kind_of(bundle: Any) -> str | None:
    ev = bundle.get("evidence") if isinstance(bundle, Mapping) else None
    kind = ev.get("kind") if isinstance(ev, Mapping) else None
    return kind if kind in ("tdx", "snp", "cca", "tpm") else None


def _log_name(log: Any) -> str | None:
    name = log.get("name") if isinstance(log, Mapping) else None
    return str(name) if name is not None else None


def _status(findings: Sequence[Finding]) -> EarStatus:
    worst = max((_SEVERITY_RANK.get(f.severity, 2) for f in findings), default=0)
    return STATUS_ORDER[worst] if worst < len(STATUS_ORDER) else EarStatus.CONTRAINDICATED


UNCOVERED = "refvals.uncovered"
# The claims that only reference values establish: with a register uncovered they are "no claim".
_ESTABLISHED_BY_REFVALS = ("executables", "configuration")


def _vector(findings: Sequence[Finding], evaluated: bool, no_claim: bool = False) -> dict[str, int]:
    base = TIER["affirming"] if evaluated else TIER["none"]
    vec = {c: base for c in TRUST_CLAIMS}
    unestablished = set(_ESTABLISHED_BY_REFVALS) if no_claim and evaluated else set()
    for claim in unestablished:
        vec[claim] = TIER["none"]
    for f in findings:
        claim = f.claim if f.claim in vec else "configuration"
        if claim in unestablished and f.severity == "info":
            continue  # an info finding affirms nothing where nothing was established
        if f.id == UNCOVERED and f.severity == "warning":
            continue  # it is why those claims are 0: it must not make them 32 instead
        vec[claim] = max(vec[claim], TIER[SEVERITY_STATUS.get(f.severity, "contraindicated")])
    return vec


def _report_uncovered(run: _Run, gaps: Sequence[Uncovered], required: bool) -> None:
    names = list(dict.fromkeys(g.register for g in gaps))
    one = len(names) == 1
    text = (f"no reference value covers {', '.join(names)}: {'it holds' if one else 'they hold'} measurements, and "
            f"nothing establishes what {'it' if one else 'they'} may hold")
    text += "; reference values are required" if required else "; the result cannot affirm"
    run.add(UNCOVERED, "error" if required else "warning", text, "executables", registers=names,
            uncovered=[g.to_json() for g in gaps], required=required)


def _check_refvals(run: _Run, refvals: ReferenceValues, signed: Mapping[str, Mapping[HashAlg, bytes]],
                   claims: Mapping[str, Any], events: Sequence[Mapping[str, Any]], rows: list[dict[str, Any]],
                   replayed: LogReplay) -> None:
    row_of = {(r["register"], r["bank"]): r for r in rows if r["status"] not in ("gap", "history-missing")}

    def by_component(reg: str, alg: HashAlg | None) -> dict[str, Any]:
        """Context naming the component that differs, when predicted events say what the register holds."""
        if refvals.predicted is None or reg not in signed:
            return {}
        statuses = {r["status"] for r in rows if r["register"] == reg}
        replays = None if not statuses else statuses <= {"matched", "signed-only"}
        found = explain_mismatch(reg, alg, refvals.predicted, replayed.events, arch=replayed.arch, replays=replays)
        if found is None:
            return {}
        return {**{k: v for k, v in found.context.items() if k not in ("register", "bank")},
                "predicted_bank": found.context.get("bank"), "explanation": found.text}

    for reg, banks in refvals.registers.items():
        for bank, allowed in banks.items():
            alg = HashAlg.from_name(bank)
            value = signed.get(reg, {}).get(alg)
            got = value.hex() if value is not None else None
            ok = got is not None and any(hmac.compare_digest(got, a) for a in allowed)
            row = row_of.get((reg, bank))
            if row is not None:
                row["reference"] = "matched" if ok else "mismatched"
            if ok:
                continue
            what = "the evidence does not sign it" if got is None else "its signed value is not a reference value"
            extra = by_component(reg, alg) if got is not None else {}
            message = f"{reg} {bank}: {what}" + (f"; {extra['explanation']}" if extra else "")
            run.add("refvals.register-mismatch", "error", message, "executables",
                    register=reg, bank=bank, signed=got, allowed=list(allowed), **extra)
    for name, allowed in refvals.claims.items():
        claim = "executables" if name in _LAUNCH_CLAIMS else "hardware" if name in _HARDWARE_CLAIMS else "configuration"
        if name not in claims:
            run.add("refvals.claim-mismatch", "error", f"the evidence has no claim {name!r}", claim,
                    claim_name=name, value=None, allowed=list(allowed))
        elif not any(_same(claims[name], a) for a in allowed):
            # A launch value is a signed register of the same name: the prediction can say what went into it.
            signed_banks = sorted(signed.get(name, {}))
            extra = by_component(name, signed_banks[0] if len(signed_banks) == 1 else None)
            message = f"claim {name} = {_short(claims[name])} is not a reference value"
            message += f"; {extra['explanation']}" if extra else ""
            run.add("refvals.claim-mismatch", "error", message, claim, claim_name=name, value=claims[name],
                    allowed=list(allowed), **extra)
    for ref in missing_events(refvals.events, events):
        shown = f" {ref.content}" if ref.content is not None else ""
        run.add("refvals.event-missing", "error", f"no runtime event '{ref.domain} {ref.operation}{shown}'",
                "executables", **ref.to_json())


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:39] + "\u2026"


def _own(event: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict of a runtime event's items: its values are strings and ints, so the copy is all its own.
    (A mapping proxy's copy() is its dict's, several times faster than dict() of the proxy.)"""
    return event.copy() if type(event) is MappingProxyType else dict(event)


def _run_appraisers(run: _Run, apps: Sequence[Any], by_name: Mapping[str, Any], refvals: ReferenceValues | None,
                    events: Sequence[Mapping[str, Any]]) -> None:
    configured = dict(refvals.appraisers) if refvals is not None else {}
    for name in configured:
        if name not in by_name:
            run.add("appraiser.missing", "error", f"the reference values configure appraiser {name!r}, which is not "
                    f"installed (installed: {', '.join(sorted(by_name)) or 'none'})", "configuration", appraiser=name)
    for app in apps:
        judged: dict[str, bool] = {}  # its domain patterns matched once per distinct domain
        mine = []
        for e in events:
            domain = str(e["domain"])
            ok = judged.get(domain)
            if ok is None:
                ok = judged[domain] = covers(app, domain)
            if ok:
                mine.append(_own(e))
        if not mine and app.name not in configured:
            continue
        prefix = f"appraiser.{app.name}."
        try:
            # its own copy: an appraiser changing its configuration changes nothing kept for the next appraisal
            found = list(app.appraise(mine, copy.deepcopy(dict(configured.get(app.name, {})))))
        except InputError:
            raise  # its configuration: the caller's to fix
        except Exception as exc:  # a plugin's bug makes its judgement unknown, not the whole appraisal impossible
            run.add(f"{prefix}failed", "error", f"appraiser {app.name} failed: {type(exc).__name__}: {exc}",
                    "executables", appraiser=app.name)
            continue
        for f in found:
            if isinstance(f, Mapping):
                f = Finding(str(f.get("id", "finding")), _severity(f.get("severity")), str(f.get("message", "")),
                            str(f.get("claim", "executables")), dict(f.get("context") or {}))
            if not isinstance(f, Finding):
                run.add(f"{prefix}failed", "error", f"appraiser {app.name} returned {type(f).__name__}, not a Finding",
                        "executables", appraiser=app.name)
                continue
            fid = f.id if f.id.startswith(prefix) else prefix + f.id
            severity = _severity(f.severity)
            claim = f.claim if f.claim in TRUST_CLAIMS else "executables"
            run.findings.append(Finding(fid, severity, f.message, claim, dict(f.context)))
