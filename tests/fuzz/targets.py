"""The fuzz targets: one per parser, each a pure function of one input.

Every target feeds its bytes to a tsmr parser and lets through only the
exceptions the parser documents (:class:`tsmr.errors.ParseError`, plus
:class:`tsmr.errors.InputError` where an encoder documents it); anything else
escaping is a finding.  Where a codec promises more (``encode(parse(x)) == x``,
chunked replay == whole replay) the target asserts that too.

Parsers are looked up lazily: :meth:`Target.unavailable` names what is missing
(an optional module that is not there), and the runner skips the target.  Nothing here imports atheris, so tests can import this module.

Seeds come from the shared fixtures (``TSMR_FIXTURES``, found by tests/fixtures_dir.py; without
them only the synthetic seeds are used) plus small synthetic inputs; they are written to a
temporary corpus directory by the runner and never stored in the repository.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fixtures resolver

from fixtures_dir import fixtures_root  # noqa: E402

SEED_MAX = 32 * 1024  # longer fixtures are cut: fuzzing wants small inputs; the prefix keeps the structure


def _files(*patterns: str) -> list[bytes]:
    base = fixtures_root()
    out: list[bytes] = []
    if not base.is_dir():
        return out
    for pattern in patterns:
        for path in sorted(base.glob(pattern)):
            if path.is_file() and not path.name.endswith(".json"):
                out.append(_trim(path.read_bytes()))
    return out


def _trim(data: bytes) -> bytes:
    """Cut a seed to SEED_MAX, dropping 0x00/0xFF padding first (CCEL areas are mostly padding)."""
    stripped = data.rstrip(b"\xff").rstrip(b"\x00")
    if len(stripped) < len(data):
        data = stripped + data[len(stripped):len(stripped) + 16]
    return data[:SEED_MAX]


def _errors():
    from tsmr.errors import InputError, ParseError

    return ParseError, InputError


def _replay(events) -> None:
    from tsmr.replay import replay

    replay(events)


def _replay_tcg2(log) -> None:
    from tsmr.formats import tcg2

    _replay(tcg2.to_events(log, decode=False))


def eventlog_parse(data: bytes, fmt: str):
    from tsmr.eventlog import parse

    return parse(data, fmt)


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@dataclass(frozen=True)
class Target:
    name: str
    doc: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    unavailable: Callable[[], str | None] = lambda: None
    load: Callable[[], None] = lambda: None  # import what ``run`` needs (inside atheris' instrumentation)


# -- tcg2 -----------------------------------------------------------------------------------------------


def _tcg2_run(data: bytes) -> None:
    from tsmr.formats import aael, tcg2

    ParseError, _ = _errors()
    try:
        log = tcg2.parse(data)
    except ParseError:
        return
    # tcg2.encode promises encode(parse(x)) == x[:parse(x).end] for every log the reader accepts.
    assert tcg2.encode(log) == data[:log.end], "tcg2: encode(parse(x)) != x[:end]"
    _replay_tcg2(log)
    tcg2.startup_locality(log.events)
    _tcg2_events(log)
    try:
        aael.to_events(log.events)
    except ParseError:
        pass


def _tcg2_events(log) -> None:
    """The unified events (with the UEFI event-data decoders) and digest checks, where tcg2 has them."""
    from tsmr.formats import tcg2

    to_events = getattr(tcg2, "to_events", None)
    if to_events is not None:
        for arch in ("tpm", "tdx"):
            for e in to_events(log, arch=arch):
                json.dumps(e.to_json())
    check = getattr(tcg2, "check_digests", None)
    if check is not None:
        check(log)


def _tcg2_seeds() -> list[bytes]:
    from tsmr.algorithms import HashAlg
    from tsmr.formats import aael, tcg2

    seeds = _files("go-eventlog/eventlogs/**/*.bin", "go-tpm-tools/eventlogs/*.bin", "trustee/eventlog/CCEL_*",
                   "go-tdx-guest/ccel/ccel_data.dat", "go-eventlog/legacydata/*")
    events = [aael.make_tcg2_event("d", "op", "c"),
              tcg2.TCG2Event(0, tcg2.EV_SEPARATOR, ((int(HashAlg.SHA256), bytes(32)),), b"\x00" * 4)]
    seeds.append(tcg2.encode_log(events, [HashAlg.SHA384, HashAlg.SHA256]))
    return seeds


# -- tcg2 legacy (SHA-1 TCG_PCR_EVENT logs, TPM 1.2 style) ---------------------------------------------
#
# The TCG2 owner added them to tcg2.parse (TCG2Log.legacy); older trees may have a separate function.

_LEGACY_CANDIDATES = (("tsmr.formats.tcg2", "parse_legacy"), ("tsmr.formats.tcg2", "parse_sha1"),
                      ("tsmr.formats.tcg2_legacy", "parse"))


def _legacy_fn():
    from tsmr.formats import tcg2

    if "legacy" in getattr(tcg2.TCG2Log, "__dataclass_fields__", {}):
        return tcg2.parse
    for mod, attr in _LEGACY_CANDIDATES:
        m = _module(mod)
        if m is not None and callable(getattr(m, attr, None)):
            return getattr(m, attr)
    return None


def _legacy_run(data: bytes) -> None:
    from tsmr.formats import tcg2

    ParseError, _ = _errors()
    fn = _legacy_fn()
    try:
        log = fn(data)
    except ParseError:
        return
    if getattr(log, "legacy", False):
        assert tcg2.encode(log) == data[:log.end], "tcg2 legacy: encode(parse(x)) != x[:end]"
        _replay_tcg2(log)
        _tcg2_events(log)


def _legacy_seeds() -> list[bytes]:
    from tsmr.algorithms import HashAlg
    from tsmr.formats import tcg2

    seeds = _files("go-eventlog/eventlogs/tpm/debian-10.bin", "go-eventlog/legacydata/*")
    encode_legacy = getattr(tcg2, "encode_legacy", None)
    if encode_legacy is not None:
        seeds.append(encode_legacy([
            tcg2.TCG2Event(0, tcg2.EV_SEPARATOR, ((int(HashAlg.SHA1), hashlib.sha1(bytes(4)).digest()),), bytes(4)),
            tcg2.TCG2Event(4, 0x80000003, ((int(HashAlg.SHA1), bytes(20)),), bytes(40))]))
    return seeds


def _legacy_unavailable() -> str | None:
    if _legacy_fn() is None:
        return "no legacy (SHA-1) TCG reader yet: neither TCG2Log.legacy nor " + ", ".join(
            f"{m}.{a}" for m, a in _LEGACY_CANDIDATES)
    return None


# -- ccel -----------------------------------------------------------------------------------------------

_CCEL_FUNCTIONS = ("parse", "parse_table", "parse_log", "parse_ccel", "parse_acpi_table")


def _ccel_fns() -> list[Callable]:
    m = _module("tsmr.formats.ccel")
    if m is None:
        return []
    return [getattr(m, n) for n in _CCEL_FUNCTIONS if callable(getattr(m, n, None))]


def _ccel_run(data: bytes) -> None:
    ParseError, _ = _errors()
    m = _module("tsmr.formats.ccel")
    parse_table, parse_log = getattr(m, "parse_table", None), getattr(m, "parse_log", None)
    if parse_table is not None and parse_log is not None:
        table = None
        try:
            table = parse_table(data)
            json.dumps(table.to_json())
            parse_table(data, strict=True)
        except ParseError:
            pass
        try:
            log = parse_log(data, table)
        except ParseError:
            return
        for e in m.to_events(log):
            json.dumps(e.to_json())
        _replay(m.to_events(log))
        return
    for fn in _ccel_fns():  # an API other than the one above: call what is there
        try:
            fn(data)
        except ParseError:
            pass


def _ccel_unavailable() -> str | None:
    if _module("tsmr.formats.ccel") is None:
        return "tsmr.formats.ccel does not exist yet"
    if not _ccel_fns():
        return f"tsmr.formats.ccel has none of {', '.join(_CCEL_FUNCTIONS)}"
    return None


# -- CEL-JSON -------------------------------------------------------------------------------------------


def _cel_json_run(data: bytes) -> None:
    from tsmr.formats import cel

    ParseError, InputError = _errors()
    try:
        recs = cel.parse_json(data)
    except ParseError:
        recs = None
    if recs is not None:
        # Whatever the reader accepts, the writer writes, and the writing reads back the same.
        for seq in (False, True):
            again = cel.parse_json(cel.encode_json(recs, seq=seq))
            assert again == recs, "cel-json: parse(encode(parse(x))) != parse(x)"
        _replay(eventlog_parse(cel.encode_json(recs), "cel-json").events)
    try:
        cel.parse_json(data, allow_nv_index=True)
    except ParseError:
        pass


def _cel_json_seeds() -> list[bytes]:
    from tsmr.algorithms import HashAlg
    from tsmr.formats import cel, systemd

    recs = [cel.CELRecord(0, "rtmr", 2, ((HashAlg.SHA384, bytes(48)),), "tsmr", {"record": "a b c"}),
            cel.CELRecord(1, "pcr", 0, ((HashAlg.SHA256, bytes(32)), (HashAlg.SHA1, bytes(20))), "pcclient_std",
                          {"event_type": "ev_no_action", "event_data": "00"})]
    return [cel.encode_json(recs), cel.encode_json(recs, seq=True), systemd.encode(_systemd_records()),
            b'[{"recnum":0,"nv_index":1,"digests":[],"content_type":"x","content":null}]']


# -- CEL-TLV --------------------------------------------------------------------------------------------


def _cel_tlv_run(data: bytes) -> None:
    from tsmr.formats import cel_tlv

    ParseError, _ = _errors()
    if cel_tlv.looks_like_base64_cel(data):
        try:
            data = cel_tlv.decode_base64(data)
        except ParseError:
            return
    try:
        recs = cel_tlv.parse_tlv(data)
    except ParseError:
        return
    assert cel_tlv.encode_tlv(recs) == data, "cel-tlv: encode(parse(x)) != x"
    for e in cel_tlv.to_events(recs):
        json.dumps(e.to_json())  # details are JSON values
    _replay(cel_tlv.to_events(recs))


def _cel_tlv_seeds() -> list[bytes]:
    from tsmr.algorithms import HashAlg
    from tsmr.formats import cel_tlv

    seeds = []
    for text in _files("go-tpm-tools/cel/*.b64"):
        seeds.append(text)
        seeds.append(cel_tlv.decode_base64(text))

    def tlv(t: int, v: bytes) -> bytes:
        return bytes([t]) + len(v).to_bytes(4, "big") + v

    mgt = (tlv(0, b"\x00") + tlv(1, b"\x00") + tlv(3, tlv(4, bytes(20))) +
           tlv(4, tlv(1, tlv(0, b"\x01") + tlv(1, b"\x00")) + tlv(2, b"") + tlv(0x81, b"\x02")))
    pcc = tlv(0, b"\x01") + tlv(1, b"\x07") + tlv(3, b"") + tlv(5, tlv(0, b"\x04") + tlv(1, bytes(4)))
    ima = tlv(0, b"\x02") + tlv(1, b"\x0a") + tlv(3, b"") + tlv(7, tlv(0, b"ima-ng") + tlv(1, bytes(8)))
    imatlv = tlv(0, b"\x03") + tlv(2, b"\x01\x80\x00\x01") + tlv(3, b"") + tlv(8, tlv(0, b"/bin/sh") + tlv(1, bytes(32)))
    seeds.append(mgt + pcc + ima + imatlv)
    seeds.append(cel_tlv.encode_tlv([cel_tlv.cos_record(0, "memory_monitor", b"\x01",
                                                        algs=(HashAlg.SHA256, HashAlg.SHA384))]))
    return seeds


# -- systemd --------------------------------------------------------------------------------------------


def _systemd_records():
    from tsmr.algorithms import HashAlg
    from tsmr.formats import systemd

    return [systemd.make_record(w, pcr=11, algs=(HashAlg.SHA256,), boot_id="ab" * 16, timestamp=i)
            for i, w in enumerate(("enter-initrd", "leave-initrd"))] + [
        systemd.make_record("machine-id:" + "0" * 32, rtmr=2, event_type="machine-id", algs=(HashAlg.SHA384,),
                            mapped_pcr=15)]


def _systemd_run(data: bytes) -> None:
    from tsmr.formats import systemd

    ParseError, _ = _errors()
    try:
        evs = systemd.parse_events(data)
    except ParseError:
        return
    for e in evs:
        json.dumps(e.to_json())


def _systemd_seeds() -> list[bytes]:
    from tsmr.formats import systemd

    nv = (b'\x1e{"nv_index":30474753,"digests":[{"hashAlg":"sha256","digest":"' + b"00" * 32 +
          b'"}],"content_type":"systemd","content":{"nvIndexName":"cryptsetup","string":"cryptsetup-keyslot:r:u:tpm2:1",'
          b'"bootId":"' + b"ab" * 16 + b'","timestamp":5,"eventType":"keyslot"}}\n')
    return [systemd.encode(_systemd_records()), nv]


# -- AAEL -----------------------------------------------------------------------------------------------


def _aael_run(data: bytes) -> None:
    from tsmr.formats import aael

    ParseError, _ = _errors()
    try:
        e = aael.decode_tagged(data)
    except ParseError:
        return
    # decode accepts exactly what encode writes
    assert aael.encode_tagged(e.domain, e.operation, e.content) == data, "aael: encode(decode(x)) != x"


def _aael_seeds() -> list[bytes]:
    from tsmr.formats import aael

    seeds = [aael.encode_tagged("domain", "operation", "content"),
             aael.encode_tagged("github.com/confidential-containers", "PullImage",
                                '{"digest":"sha256:00","image":"alpine"}')]
    base = fixtures_root() / "trustee" / "eventlog" / "CCEL_AAEL_alibabacloud_out.json"
    if base.is_file():
        for ev in json.loads(base.read_text())["uefi_event_logs"]:
            if ev.get("type_name") == "EV_EVENT_TAG":
                seeds.append(base64.b64decode(ev["event"]))
    return seeds


# -- IMA ------------------------------------------------------------------------------------------------


def _ima():
    return _module("tsmr.formats.ima")


def _ima_unavailable(fn: str) -> Callable[[], str | None]:
    def check() -> str | None:
        m = _ima()
        if m is None:
            return "tsmr.formats.ima does not exist yet"
        if not callable(getattr(m, fn, None)):
            return f"tsmr.formats.ima has no {fn}()"
        return None
    return check


def _ima_runner(fn: str) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        ParseError, _ = _errors()
        try:
            result = getattr(_ima(), fn)(data)
            if hasattr(result, "__iter__") and not isinstance(result, (bytes, str, dict)):
                for _ in result:  # streaming readers: drain them
                    pass
        except ParseError:
            pass
    return run


def _ima_binary_seeds() -> list[bytes]:
    import struct

    d_ng = b"sha256:\x00" + bytes(32)
    n_ng = b"boot_aggregate\x00"
    tdata = struct.pack("<I", len(d_ng)) + d_ng + struct.pack("<I", len(n_ng)) + n_ng
    entry = struct.pack("<I", 10) + bytes(20) + struct.pack("<I", 6) + b"ima-ng" + struct.pack("<I", len(tdata)) + tdata
    return [entry, entry * 3]


def _ima_ascii_seeds() -> list[bytes]:
    return _files("keylime/create-runtime-policy/ima-log-*") + [
        b"10 " + b"0" * 40 + b" ima-ng sha256:" + b"0" * 64 + b" boot_aggregate\n"]


# -- runtime log replay ---------------------------------------------------------------------------------


def _runtime_run(data: bytes) -> None:
    from tsmr.algorithms import HashAlg

    replay = importlib.import_module("tsmr.runtime_log.replay")  # the package re-exports a function named replay
    ParseError, _ = _errors()
    algs = (HashAlg.SHA256, HashAlg.SHA384)
    try:
        whole = replay.replay(data, algs=algs, accept_unterminated=True)
    except ParseError:
        whole = None
    # Replaying the same bytes in two chunks must give the same report (the Replayer is incremental).
    cut = len(data) // 2
    try:
        parts = replay.replay([data[:cut], data[cut:]], algs=algs, accept_unterminated=True)
    except ParseError:
        parts = None
    assert (whole is None) == (parts is None), "runtime log: whole and chunked replay disagree on validity"
    assert whole == parts, "runtime log: whole and chunked replay give different reports"
    if whole is not None:
        whole.explain()
        whole.to_json()


def _runtime_seeds() -> list[bytes]:
    from tsmr.algorithms import HashAlg
    from tsmr.runtime_log import records

    sync = records.sync_line({HashAlg.SHA384: bytes(48)})
    ext = records.extend_line({HashAlg.SHA384: bytes(48)})
    ev = records.event("example.com/app", "deploy", {"image": "x"}).encode()
    return _files("trustee/aael/AAEL_data_*") + [sync + b"\n" + ev + b"\n# comment\n" + ext + b"\n\n" + ev + b"\n"]


# -- evidence -------------------------------------------------------------------------------------------


def _evidence_runner(module: str, *functions: str) -> Callable[[bytes], None]:
    """Feed the bytes to each parser of an evidence module: only ParseError may escape."""
    def run(data: bytes) -> None:
        ParseError, _ = _errors()
        mod = _module(module)
        for name in functions:
            try:
                getattr(mod, name)(data)
            except ParseError:
                pass
    return run


def _cca_verify_run(data: bytes) -> None:
    """A token that parses goes on to verification: only ParseError or EvidenceError may escape."""
    from tsmr.errors import EvidenceError

    ParseError, _ = _errors()
    cca = _module("tsmr.evidence.cca")
    try:
        token = cca.parse_token(data)
    except ParseError:
        return
    try:
        cca.verify_token(data, cpak=token.rak, challenge=None)
    except (ParseError, EvidenceError):
        pass


# -- the registry ---------------------------------------------------------------------------------------

# -- tdvf (TDX metadata of a firmware image, and MRTD) -----------------------------------------------

_TDVF_MRTD_MAX = 64 << 20  # inputs asking for more memory are parsed but not measured (slow, not wrong)


def _tdvf_run(data: bytes) -> None:
    from tsmr.predict import tdvf

    _, InputError = _errors()
    try:
        meta = tdvf.parse_metadata(data)
    except InputError:
        return
    if sum(s.memory_data_size for s in meta.sections) <= _TDVF_MRTD_MAX:
        try:
            assert len(tdvf.mrtd(data, meta)) == 48
        except InputError:
            pass


def _tdvf_seeds() -> list[bytes]:
    """A small synthetic TDVF (CFV, extended BFV, TD HOB, TempMem) and the tail of Debian's OVMF.fd if present."""
    import struct
    import uuid

    size = 0x4000
    image = bytearray(hashlib.sha256(b"tdvf seed").digest() * (size // 32))
    base = (1 << 32) - size
    sections = [(0x2000, 0x2000, base + 0x2000, 0x2000, 0, 1), (0, 0x2000, base, 0x2000, 1, 0),
                (0, 0, 0x809000, 0x1000, 2, 0), (0, 0, 0x800000, 0x2000, 3, 0)]
    meta = struct.pack("<4sIII", b"TDVF", 16 + 32 * len(sections), 1, len(sections))
    meta += b"".join(struct.pack("<IIQQII", *s) for s in sections)
    image[0x3000:0x3000 + len(meta)] = meta
    entry = struct.pack("<IH", size - 0x3000, 22) + uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
    table = entry + struct.pack("<H", len(entry) + 18) + uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
    image[size - 0x20 - len(table):size - 0x20] = table
    seeds = [bytes(image)]
    ovmf = Path("/usr/share/ovmf/OVMF.fd")
    if ovmf.is_file():
        seeds.append(ovmf.read_bytes()[-0x900:])
    return seeds


def _imports(*modules: str) -> Callable[[], None]:
    """A ``load`` that imports ``modules``, skipping the ones that do not exist (yet)."""
    def load() -> None:
        for name in modules:
            _module(name)
    return load


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("tcg2", "tsmr.formats.tcg2.parse (+ encode round trip, replay, AAEL decoding)", _tcg2_run, _tcg2_seeds,
           load=_imports("tsmr.formats.tcg2", "tsmr.formats.aael")),
    Target("tcg2_legacy", "legacy SHA-1 TCG_PCR_EVENT logs (+ encode round trip, events)", _legacy_run,
           _legacy_seeds, _legacy_unavailable, _imports(*sorted({m for m, _ in _LEGACY_CANDIDATES}))),
    Target("ccel", "tsmr.formats.ccel (ACPI CCEL table and log area)", _ccel_run,
           lambda: _files("go-eventlog/eventlogs/ccel/*", "go-tdx-guest/ccel/ccel_*", "trustee/eventlog/CCEL_data*"),
           _ccel_unavailable, _imports("tsmr.formats.ccel")),
    Target("cel_json", "tsmr.formats.cel.parse_json (+ encode round trip)", _cel_json_run, _cel_json_seeds,
           load=_imports("tsmr.formats.cel")),
    Target("cel_tlv", "tsmr.formats.cel_tlv.parse_tlv (+ base64, encode round trip, events)", _cel_tlv_run,
           _cel_tlv_seeds, load=_imports("tsmr.formats.cel_tlv")),
    Target("systemd", "tsmr.formats.systemd.parse_events", _systemd_run, _systemd_seeds,
           load=_imports("tsmr.formats.systemd")),
    Target("aael", "tsmr.formats.aael.decode_tagged (+ encode round trip)", _aael_run, _aael_seeds,
           load=_imports("tsmr.formats.aael")),
    Target("ima_binary", "tsmr.formats.ima.parse_binary", _ima_runner("parse_binary"), _ima_binary_seeds,
           _ima_unavailable("parse_binary"), _imports("tsmr.formats.ima")),
    Target("ima_ascii", "tsmr.formats.ima.parse_ascii", _ima_runner("parse_ascii"), _ima_ascii_seeds,
           _ima_unavailable("parse_ascii"), _imports("tsmr.formats.ima")),
    Target("runtime_log", "tsmr.runtime_log.replay.replay (+ chunked == whole)", _runtime_run, _runtime_seeds,
           load=_imports("tsmr.runtime_log.replay", "tsmr.runtime_log.records")),
    Target("tdx_quote", "tsmr.evidence.tdx.parse_quote / parse_tdreport",
           _evidence_runner("tsmr.evidence.tdx", "parse_quote", "parse_tdreport"),
           lambda: _files("go-tdx-guest/*.dat", "go-tdx-guest/ccel/cos-113-tdx-quote.dat", "trustee/verifier-tdx/*.dat"),
           load=_imports("tsmr.evidence.tdx")),
    Target("snp_report", "tsmr.evidence.snp.parse_report / parse_cert_table",
           _evidence_runner("tsmr.evidence.snp", "parse_report", "parse_cert_table"),
           lambda: _files("go-sev-guest/attestation.bin"), load=_imports("tsmr.evidence.snp")),
    Target("tpm_attest", "tsmr.evidence.tpm.parse_attest / parse_signature / parse_public",
           _evidence_runner("tsmr.evidence.tpm", "parse_attest", "parse_signature", "parse_public"),
           lambda: _files("keylime/tpm2-quote/quote.out", "keylime/tpm2-quote/quotesig.out", "keylime/tpm2-quote/ak.pub"),
           load=_imports("tsmr.evidence.tpm")),
    Target("tdvf", "tsmr.predict.tdvf.parse_metadata (+ mrtd)", _tdvf_run, _tdvf_seeds,
           load=_imports("tsmr.predict.tdvf")),
    Target("cca_token", "tsmr.evidence.cca.parse_token (+ verify_token)", _cca_verify_run,
           lambda: _files("ccatoken/*.cbor", "trustee/verifier-cca/*.cbor"), load=_imports("tsmr.evidence.cca")),
)}


def names() -> list[str]:
    return list(TARGETS)


def seeds_for(name: str) -> Iterable[bytes]:
    return TARGETS[name].seeds()
