"""Unified replay of events, merging, and mismatch explanations (synthetic events with known answers)."""

from __future__ import annotations


import pytest

from tsmr import HashAlg, InputError
from tsmr.events import DATA, Event
from tsmr.quirks import check
from tsmr.replay import compare, default_initial, explain, replay

S1, S256 = HashAlg.SHA1, HashAlg.SHA256


def ev(seq: int, reg: str, data: bytes, *, algs=(S256,), type: str = "EV_ACTION", measured: bool = True,
       rule: str | None = DATA, digest: bytes | None = None, details=None, source: str = "tcg2") -> Event:  # type: ignore[no-untyped-def]
    digests = tuple((a, digest if digest is not None else a.hash(data)) for a in algs)
    return Event(source, seq, int(reg.lstrip("pcrtmd") or 0), reg, type, digests, data, measured, rule, data.decode(errors="replace"), details)


def chain(alg: HashAlg, start: bytes, datas: list[bytes]) -> bytes:
    for d in datas:
        start = alg.extend(start, alg.hash(d))
    return start


def test_replay_folds_per_register_and_bank() -> None:
    events = [ev(0, "pcr4", b"a", algs=(S1, S256)), ev(1, "pcr7", b"b"), ev(2, "pcr4", b"c", algs=(S1, S256))]
    r = replay(events)
    assert r.registers["pcr4"][S256] == chain(S256, bytes(32), [b"a", b"c"])
    assert r.registers["pcr4"][S1] == chain(S1, bytes(20), [b"a", b"c"])
    assert r.registers["pcr7"] == {S256: chain(S256, bytes(32), [b"b"])}
    assert r.counts == {"pcr4": 2, "pcr7": 1}
    assert list(r.to_json()["registers"]) == ["pcr4", "pcr7"]  # type: ignore[arg-type]


def test_initial_values() -> None:
    assert default_initial("pcr17", S256) == b"\xff" * 32 and default_initial("pcr16", S256) == bytes(32)
    r = replay([ev(0, "pcr17", b"x")])
    assert r.registers["pcr17"][S256] == chain(S256, b"\xff" * 32, [b"x"])
    loc = Event("tcg2", 0, 0, "pcr0", "EV_NO_ACTION", ((S256, bytes(32)),), b"StartupLocality\0\x03", False,
                details={"startup_locality": 3})
    r = replay([loc, ev(1, "pcr0", b"crtm")])
    assert r.registers["pcr0"][S256] == chain(S256, bytes(31) + b"\x03", [b"crtm"])
    given = {"pcr0": {S256: b"\x07" * 32}}
    r = replay([loc, ev(1, "pcr0", b"crtm")], initial=given)
    assert r.registers["pcr0"][S256] == chain(S256, b"\x07" * 32, [b"crtm"])


def test_no_action_events_are_not_extended() -> None:
    r = replay([ev(0, "pcr1", b"x", measured=False), ev(1, "pcr1", b"y")])
    assert r.registers["pcr1"][S256] == chain(S256, bytes(32), [b"y"])


def test_merging_onto_a_tdx_register_set() -> None:
    firmware = [ev(0, "rtmr2", b"fw", algs=(HashAlg.SHA384,), source="ccel")]
    ima = [ev(0, "pcr10", b"ima entry", algs=(HashAlg.SHA384,), source="ima")]
    r = replay(firmware + ima, arch="tdx")
    assert set(r.registers) == {"rtmr2"}
    assert r.registers["rtmr2"][HashAlg.SHA384] == chain(HashAlg.SHA384, bytes(48), [b"fw", b"ima entry"])
    with pytest.raises(InputError, match="unknown architecture"):
        replay(ima, arch="snp")


def test_missing_bank_is_not_guessed() -> None:
    events = [ev(0, "pcr4", b"a", algs=(S1, S256), rule=None), ev(1, "pcr4", b"b", algs=(S256,), rule=None)]
    r = replay(events)
    assert S1 not in r.registers["pcr4"] and r.missing == {"pcr4": (S1,)}
    # a data-derived format (IMA) fills the missing bank from the data; a firmware log does not
    r = replay([ev(0, "pcr10", b"a", algs=(S1,), source="ima"), ev(1, "pcr10", b"b", algs=(S1,), source="ima")], banks=[S256])
    assert r.registers["pcr10"][S256] == chain(S256, bytes(32), [b"a", b"b"])
    r = replay([ev(0, "pcr10", b"a", algs=(S1,)), ev(1, "pcr10", b"b", algs=(S1,))], banks=[S256])
    assert "pcr10" not in r.registers and r.missing == {"pcr10": (S256,)}


def test_violation_fill() -> None:
    v = Event("ima", 1, 10, "pcr10", "ima-ng", ((S1, bytes(20)),), b"tmpl", True, DATA, fill=0xFF)
    r = replay([ev(0, "pcr10", b"a", algs=(S1,)), v])
    assert r.registers["pcr10"][S1] == S1.extend(chain(S1, bytes(20), [b"a"]), b"\xff" * 20)


def test_runtime_log_sync_records_anchor_and_report_gaps() -> None:
    from tsmr.eventlog import runtime_log_events

    z = "00" * 48
    other = "11" * 48
    data = f"SYNC sha384/{z}\na b\nSYNC sha384/{other}\nc d\n".encode()
    r = replay(runtime_log_events(data))
    want = chain(HashAlg.SHA384, bytes.fromhex(other), [f"SYNC sha384/{other}".encode(), b"c d"])
    assert r.registers["rtmr3"][HashAlg.SHA384] == want
    assert [(g.register, g.seq) for g in r.gaps] == [("rtmr3", 3)]


def test_explain_bad_event_digest() -> None:
    events = [ev(0, "pcr8", b"ok"), ev(1, "pcr8", b"tampered", digest=S256.hash(b"original")), ev(2, "pcr8", b"x")]
    want = {"pcr8": {S256: b"\x01" * 32}}
    (m,) = explain(events, want)
    assert "event 1 (EV_ACTION: tampered) records a digest that is not the hash of its own data" in m.explanation


def test_explain_log_ahead_of_quote() -> None:
    events = [ev(i, "pcr9", bytes([i])) for i in range(5)]
    quoted = chain(S256, bytes(32), [bytes([i]) for i in range(3)])
    (m,) = explain(events, {"pcr9": {S256: quoted}})
    assert "equals the log after event 2; the 2 later event(s) are not in it" in m.explanation
    assert explain(events, {"pcr9": {S256: replay(events).registers["pcr9"][S256]}}) == []


def test_explain_suggests_locality_and_dropped_event() -> None:
    events = [ev(0, "pcr0", b"crtm"), ev(1, "pcr0", b"bios")]
    at3 = chain(S256, bytes(31) + b"\x03", [b"crtm", b"bios"])
    (m,) = explain(events, {"pcr0": {S256: at3}})
    assert "locality 3" in m.explanation
    skipped = chain(S256, bytes(32), [b"crtm"])
    events2 = events + [ev(2, "pcr0", b"never extended")]
    (m,) = explain(events2, {"pcr0": {S256: skipped + b""}})
    assert "after event 0" in m.explanation or "left out" in m.explanation
    wrong = {"pcr0": {S256: b"\x09" * 32}}
    (m,) = explain(events, wrong)
    assert "no prefix of the log replays to the expected value" in m.explanation


def test_explain_other_cases() -> None:
    # A register without events holds its starting value: zero matches (all 0xFF for PCR 17-22), nothing else does.
    assert explain([ev(0, "pcr1", b"a")], {"pcr2": {S256: bytes(32)}, "pcr17": {S256: b"\xff" * 32}}) == []
    (m,) = explain([ev(0, "pcr1", b"a")], {"pcr2": {S256: b"\x01" * 32}})
    assert "has no events for this register" in m.explanation
    (m,) = explain([ev(0, "pcr1", b"a", algs=(S1,), rule=None)], {"pcr1": {S256: bytes(32)}})
    assert "carry no sha256 digest" in m.explanation
    assert compare(replay([ev(0, "pcr1", b"a")]), {"pcr1": {S256: chain(S256, bytes(32), [b"a"])}}) == []


def test_quirks() -> None:
    grub = Event("tcg2", 0, 8, "pcr8", "EV_IPL", ((S256, S256.hash(b"grub_cmd: linux")),), b"grub_cmd: linux\0", True, DATA)
    assert grub.check(S256) is False
    assert check(grub, S256, ["string-without-nul"]) == (True, "string-without-nul")
    assert check(grub, S256, []) == (False, None)
    with pytest.raises(InputError, match="unknown quirk"):
        replay([grub], quirks=["no-such-quirk"])


def test_variable_boot_quirk_on_a_real_log(fixtures) -> None:  # type: ignore[no-untyped-def]
    from tsmr.eventlog import parse

    log = parse((fixtures / "go-eventlog/eventlogs/tpm/rhel8-uefi.bin").read_bytes())
    boots = [e for e in log.events if e.type == "EV_EFI_VARIABLE_BOOT"]
    assert boots
    for e in boots:
        assert check(e, S256, []) == (None, None)  # PFP's rule is not what this firmware did
        assert check(e, S256, ["efi-variable-boot-data-only"]) == (True, "efi-variable-boot-data-only")
