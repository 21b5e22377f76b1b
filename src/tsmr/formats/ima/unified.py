"""IMA entries as unified :class:`~tsmr.events.Event` objects, with decoded details and a summary."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from ...algorithms import HashAlg
from ...errors import ParseError
from ...events import DATA, Event
from .entry import IMAEntry, template_digest
from .templates import _FIELDS, _UINT_SIZES, TEMPLATES, _cstr, _show_field, template_fields


def _details(e: IMAEntry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if e.violation:
        out["violation"] = True
    if e.template_data is None:
        texts = [t.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                 for t in e.text_fields or ()]
        for fid, text in zip(template_fields(e.template_name) or (), texts):
            out[_FIELDS[fid][1]] = text
        if not out.get("file_name") and texts:
            out["fields"] = texts
        out["template_data"] = "not recoverable from the ASCII list"
        return out
    try:
        fields = e.fields()
    except ParseError as err:
        out["decode_error"] = str(err)
        return out
    for fid, raw in fields:
        key = _FIELDS[fid][1] if fid in _FIELDS else fid
        if fid == "d-ng" or fid == "d-ngv2" or fid == "d-modsig":
            try:
                out[key] = _show_field(fid, raw, False) if raw else ""
            except ParseError as err:
                out[key] = raw.hex()
                out["decode_error"] = str(err)
        elif fid in ("n", "n-ng", "xattrnames"):
            out[key] = _cstr(raw).decode("utf-8", "backslashreplace")
        elif fid in _UINT_SIZES:
            out[key] = int.from_bytes(raw, "little") if raw else None
        elif raw or fid == "buf":
            out[key] = raw.hex()
            if fid == "buf" and raw.isascii() and raw.decode("ascii").isprintable():
                out["buffer_text"] = raw.decode("ascii")
    return out


def _summary(e: IMAEntry, details: Mapping[str, Any]) -> str:
    digest = str(details.get("file_digest", ""))
    head, _, hexpart = digest.rpartition(":")
    short = (f"{head}:" if head else "") + f"{hexpart[:12]}..." if hexpart else ""
    if e.violation:
        short = "violation (logged 0, extended 0xff)"
    name = details.get("file_name") or ""
    parts = [e.template_name, short, name]
    if e.template_name not in TEMPLATES and not name and e.template_data is not None:
        parts.append(f"{len(e.template_data)} bytes")
    return " ".join(p for p in parts if p)


def to_events(entries: Iterable[IMAEntry], *, register: str | None = None,
              banks: Sequence[HashAlg] = ()) -> list[Event]:
    """Unified events: register ``pcr<N>`` (or ``register``), type = template name, data = template data.

    Each event records the logged template hash and, for every bank of
    ``banks``, the template digest of that bank (:func:`template_digest`), as
    the kernel's per-bank lists show them: a replay then reports those banks.
    A violation keeps its logged (zero) hash in every bank, as CEL IMA records
    and the per-bank lists do, and has ``fill=0xFF``: every bank was extended
    with 0xFF bytes, and the recorded bank tells a replay that the event exists
    even when it comes first.  Entries whose data is unknown (some ASCII lines)
    keep their logged hash only (``data_rule=None``).
    """
    wanted = tuple(dict.fromkeys(HashAlg(b) for b in banks))
    out: list[Event] = []
    for seq, e in enumerate(entries):
        details = _details(e)
        known = e.template_data is not None
        own = HashAlg(e.alg)
        digests: tuple[tuple[HashAlg, bytes], ...] = ((own, e.template_hash),)
        if known and any(b != own for b in wanted):
            per_bank = {own: e.template_hash}
            for b in wanted:
                if b != own:
                    per_bank[b] = bytes(b.digest_size) if e.violation else template_digest(e, b) or b""
            digests = tuple(sorted(per_bank.items()))
        out.append(Event(
            source="ima", seq=seq, index=e.pcr, register=register or f"pcr{e.pcr}", type=e.template_name,
            digests=digests,
            data=e.template_data if known else b"",  # type: ignore[arg-type]
            data_rule=DATA if known else None, summary=_summary(e, details), details=details,
            offset=e.offset, fill=0xFF if e.violation else None,
        ))
    return out
