"""A register that does not match its predicted reference value, explained by component.

Predicted reference values (``tsmr predict ... -o``) carry the events behind
them (:class:`~tsmr.appraisal.refvals.Predicted`), each naming the component it
measures.  When such a register (or launch claim) differs, :func:`explain`
compares the bundle's log with the prediction, event by event in log order:

* the first position where the log's digest differs from the predicted one
  names that event and its component: ``rtmr1 event 17
  EV_EFI_BOOT_SERVICES_APPLICATION (kernel): the predicted digest is X, the log
  says Y (Authenticode digest of the kernel ...)``;
* when every common position agrees, the longer side is named: ``the log has
  2 events more than predicted, first: ...`` or ``... fewer than predicted,
  first missing: ...``;
* when the log and the prediction agree completely, the difference is not in
  the events (the log does not replay to the signed value, or the reference
  value does not follow from the predicted events), and it says that;
* with no log for the register (TDX MRTD, the SEV-SNP launch digest, the CCA
  RIM, or a log the bundle left out) it names the inputs the prediction used
  and the components of its predicted events.

Only measured events count (``EV_NO_ACTION`` records are never extended), and
a register's events are those that land on it on this platform (a TPM PCR of
a CCEL maps onto an RTMR).  Digests are compared in the bank that differs when
the prediction has it, else in the first bank both sides have.

The result is data for a finding: a sentence and context keys
(``event_index``: position among the register's measured events, from 0;
``seq``: the record's number in its log; ``component``, ``event_type``,
``description``, ``expected`` and ``actual`` digests as hex, ``bank``; or
``extra_events`` / ``missing_events``; or ``inputs`` and ``components``).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..algorithms import HashAlg
from ..events import Event
from ..predict.model import PredictedEvent
from ..replay import map_register
from .refvals import Predicted

__all__ = ["ComponentExplanation", "explain"]


@dataclass(frozen=True)
class ComponentExplanation:
    """Why a register differs from its prediction: one sentence and the facts behind it."""

    text: str
    context: dict[str, Any] = field(default_factory=dict)


def _bank(pred: PredictedEvent, event: Event | None, bank: HashAlg | None) -> HashAlg | None:
    """The bank to compare in: ``bank`` when the prediction has it, else the first both sides have."""
    if bank is not None and bank in pred.digests:
        return bank
    for alg in pred.digests:
        if event is None or event.digest(alg) is not None:
            return alg
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _what(pred: PredictedEvent) -> str:
    return f" ({pred.description})" if pred.description else ""


def explain(register: str, bank: HashAlg | None, predicted: Predicted, events: Sequence[Event], *, arch: str,
            replays: bool | None = None) -> ComponentExplanation | None:
    """Explain why ``register`` differs from the prediction (see the module docstring).

    ``events`` are every event of the bundle's logs in log order; ``arch`` the
    register architecture they replay onto; ``replays`` whether the register's
    log replays to its signed value (None: unknown), used only when the log
    and the prediction agree.  None when the prediction says nothing of the
    register and there is no log to compare (nothing useful to add).
    """
    preds = predicted.for_register(register)
    logged = [e for e in events if e.measured and map_register(e, arch) == register]
    if not logged:
        components = sorted({p.component for p in preds})
        inputs = {k: dict(v) for k, v in predicted.inputs.items()}
        if not inputs and not components:
            return None
        used = "; ".join(f"{name} ({', '.join(f'{k} {v}' for k, v in facts.items())})" if facts else name
                         for name, facts in inputs.items()) or "none recorded"
        text = (f"{register}: no log shows what was measured into it; the {predicted.platform} prediction used "
                f"these inputs: {used}")
        if components:
            text += f"; its predicted events measure: {', '.join(components)}"
        return ComponentExplanation(text, {"register": register, "inputs": inputs, "components": components})
    if not preds:
        return None
    for n, (ev, pred) in enumerate(zip(logged, preds)):
        alg = _bank(pred, ev, bank)
        if alg is None:
            text = (f"{register} event {ev.seq} {ev.type}: the prediction has no digest in a bank the log records "
                    f"({', '.join(a.kernel_name for a in pred.digests)} predicted), so the log cannot be compared")
            return ComponentExplanation(text, {"register": register, "event_index": n, "seq": ev.seq,
                                               "component": pred.component, "event_type": ev.type})
        expected, actual = pred.digests[alg], ev.digest(alg)
        if actual is not None and hmac.compare_digest(expected, actual):
            continue
        shown = actual.hex() if actual is not None else f"nothing in {alg.kernel_name}"
        text = (f"{register} event {ev.seq} {ev.type} ({pred.component}): the predicted digest is {expected.hex()}, "
                f"the log says {shown}{_what(pred)}")
        if ev.type != pred.event_type:
            text += f"; the prediction has {pred.event_type} there"
        return ComponentExplanation(text, {
            "register": register, "bank": alg.kernel_name, "event_index": n, "seq": ev.seq,
            "event_type": ev.type, "predicted_type": pred.event_type, "component": pred.component,
            "description": pred.description, "expected": expected.hex(),
            "actual": actual.hex() if actual is not None else None})
    if len(logged) > len(preds):
        n = len(preds)
        ev = logged[n]
        extra = len(logged) - n
        summary = f": {ev.summary}" if ev.summary else ""
        text = (f"{register}: the log has {_plural(extra, 'event')} more than predicted, first: event {ev.seq} "
                f"{ev.type}{summary}")
        alg = bank if bank is not None and ev.digest(bank) is not None else (ev.algs[0] if ev.algs else None)
        actual = ev.digest(alg) if alg is not None else None
        return ComponentExplanation(text, {"register": register, "extra_events": extra, "event_index": n,
                                           "seq": ev.seq, "event_type": ev.type, "component": None,
                                           "bank": alg.kernel_name if alg is not None else None,
                                           "expected": None, "actual": actual.hex() if actual is not None else None})
    if len(preds) > len(logged):
        n = len(logged)
        pred = preds[n]
        missing = len(preds) - n
        text = (f"{register}: the log has {_plural(missing, 'event')} fewer than predicted, first missing: "
                f"{pred.event_type} ({pred.component}){_what(pred)}")
        alg = _bank(pred, None, bank)
        return ComponentExplanation(text, {"register": register, "missing_events": missing, "event_index": n,
                                           "event_type": pred.event_type, "component": pred.component,
                                           "description": pred.description,
                                           "bank": alg.kernel_name if alg is not None else None,
                                           "expected": pred.digests[alg].hex() if alg is not None else None,
                                           "actual": None})
    if replays is True:
        why = "the log replays to the signed value, so the reference value does not follow from the predicted events"
    elif replays is False:
        why = "the log does not replay to the signed value"
    else:
        why = "the difference is not in the events"
    text = f"{register}: the log's {_plural(len(logged), 'event')} are the predicted ones; {why}"
    return ComponentExplanation(text, {"register": register, "event_index": None, "component": None})
