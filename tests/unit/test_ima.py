"""tsmr.formats.ima: the keylime captures, binary/ASCII equivalence, known answers, streaming, totality."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsmr import HashAlg, ParseError
from tsmr.errors import InputError, ReplayError
from tsmr.events import DATA
from tsmr.formats import ima
from tsmr.formats.ima import IMADecoder, IMAEntry, IMAReplayer, TemplateHashError

SHA1, SHA256, SHA384 = HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384
ONES = {a: b"\xff" * a.digest_size for a in HashAlg}


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def chain(alg: HashAlg, digests: list[bytes], start: bytes | None = None) -> bytes:
    v = start if start is not None else bytes(alg.digest_size)
    for d in digests:
        v = hashlib.new(alg.kernel_name, v + d).digest()
    return v


# -- the keylime captures (MANIFEST: keylime/create-runtime-policy/ima-log-*) --------------------------

KEYLIME = "keylime/create-runtime-policy"


def test_keylime_sha256_log(fixtures: Path) -> None:
    raw = (fixtures / KEYLIME / "ima-log-sha256").read_bytes()
    assert ima.detect(raw) == "ima-ascii"
    entries = ima.parse_ascii(raw)
    assert [e.file_name for e in entries] == ["boot_aggregate", "/data"]
    assert all(e.pcr == 10 and e.template_name == "ima-ng" and e.alg == SHA1 for e in entries)
    # MANIFEST: template hashes consistent -- the rebuilt ima-ng data hashes to the logged value.
    for e in entries:
        assert e.computed_hash() == e.template_hash
    assert entries[1].file_digest == "sha256:96d7fae8adb7286a419a88f78c13d35fb782d63df654b7db56f154765698b754"
    # Known answer: boot_aggregate's template data, built by hand as the kernel serializes it.
    dng = b"sha256:\0" + bytes.fromhex("f4845392eca429a4c941a6a07fc32faf843a88c5c3dfa3b9329ab8f4171d9ce3")
    assert entries[0].template_data == u32(40) + dng + u32(15) + b"boot_aggregate\0"
    assert entries[0].template_hash.hex() == "6309e2c83b7814367bb3912a55e5473454623535"
    # PCR 10 replay: the SHA-1 bank from the logged hashes, the SHA-256 bank from the data.
    values = ima.replay(raw, banks=(SHA1, SHA256))
    assert values[SHA1] == chain(SHA1, [e.template_hash for e in entries])
    assert values[SHA256] == chain(SHA256, [hashlib.sha256(e.template_data).digest() for e in entries])
    assert ima.encode_ascii(entries) == raw  # the text round trip is exact
    assert ima.parse_binary(ima.encode_binary(entries)) == entries
    events = ima.to_events(entries)
    assert [ev.summary for ev in events] == ["ima-ng sha256:f4845392eca4... boot_aggregate",
                                             "ima-ng sha256:96d7fae8adb7... /data"]
    assert all(ev.check(SHA1) for ev in events)


def test_keylime_sha384_log_zero_entry_is_a_violation(fixtures: Path) -> None:
    raw = (fixtures / KEYLIME / "ima-log-sha384").read_bytes()
    entries = ima.parse_ascii(raw)
    boot, data = entries
    # MANIFEST: the boot_aggregate line has an all-zero template hash and file digest (synthetic,
    # violation-style).  IMA semantics: a zero template hash is a violation, extended as 0xFF.
    assert boot.violation and boot.file_digest == "sha384:" + "00" * 48
    assert boot.computed_hash() != boot.template_hash
    assert not data.violation and data.computed_hash() == data.template_hash
    ev_boot, ev_data = ima.to_events(entries)
    assert ev_boot.fill == 0xFF and ev_boot.digest(SHA1) == ONES[SHA1] and ev_boot.digest(SHA256) == ONES[SHA256]
    assert ev_boot.digests == ((SHA1, bytes(20)),)  # what the log shows
    assert ev_boot.check(SHA1) is None and ev_data.check(SHA1) is True
    assert ev_boot.details is not None and ev_boot.details["violation"] is True
    values = ima.replay(raw, banks=(SHA1, SHA384))  # verify=True: the violation is not a mismatch
    assert values[SHA1] == chain(SHA1, [ONES[SHA1], data.template_hash])
    assert values[SHA384] == chain(SHA384, [ONES[SHA384], hashlib.sha384(data.template_data).digest()])
    # The generic replay of unified events agrees, although the violation comes first.
    import tsmr.replay

    assert tsmr.replay.replay([ev_boot, ev_data], banks=[SHA1, SHA384]).registers["pcr10"] == values


# -- synthetic lists: one of each template ------------------------------------------------------------

D256 = hashlib.sha256(b"file").digest()


def sample_entries(alg: HashAlg = SHA1) -> list[IMAEntry]:
    ng = ima.digest_field("sha256", D256)
    mk = ima.build_entry
    return [
        mk("ima-ng", [ima.digest_field("sha256", bytes(range(32))), ima.name_field("boot_aggregate")], alg=alg),
        mk("ima-ng", [ng, ima.name_field("/usr/bin/bash")], alg=alg),
        mk("ima-sig", [ng, ima.name_field("/usr/bin/ls"), b"\x03\x02" + bytes(range(40))], alg=alg),
        mk("ima-sig", [ng, ima.name_field("/usr/bin/unsigned"), b""], alg=alg),  # empty sig field
        mk("ima-buf", [ng, ima.name_field("kexec-cmdline"), b"root=/dev/vda1 ro"], alg=alg),
        mk("ima-modsig", [ng, ima.name_field("/lib/modules/x.ko"), b"", ima.digest_field("sha512", bytes(64)),
                          b"PKCS7" + bytes(20)], alg=alg),
        mk("ima-modsig", [ng, ima.name_field("/lib/modules/y.ko"), b"\x03", b"", b""], alg=alg),
        mk("ima", [hashlib.sha1(b"legacy").digest(), b"/sbin/init"], alg=alg),
        mk("ima-ngv2", [b"ima:sha256:\0" + D256, ima.name_field("/usr/bin/v2")], alg=alg),
        mk("d-ng|n-ng|buf", [ng, ima.name_field("custom fmt"), b"\x00\x01"], alg=alg),
        mk("ima-ng", [ng, ima.name_field("/tmp/raced")], alg=alg, violation=True),
        mk("ima-ng", [ng, ima.name_field("/etc/other-pcr")], alg=alg, pcr=11),
        mk("evm-sig", [ng, ima.name_field("/usr/bin/evm"), b"\x05sig", b"security.ima", u32(3), b"abc",
                       u32(1000), u32(100), struct.pack("<H", 0o100755)], alg=alg),
    ]


def test_binary_and_ascii_give_the_same_events_and_pcrs() -> None:
    entries = sample_entries()
    binary, text = ima.encode_binary(entries), ima.encode_ascii(entries)
    assert ima.detect(binary) == "ima-binary" and ima.detect(text) == "ima-ascii"
    from_bin, from_txt = ima.parse_binary(binary), ima.parse_ascii(text)
    # evm-sig's xattrnames cannot be rebuilt from text: every other entry must be identical.
    assert from_bin == tuple(entries)
    assert from_txt[:-1] == from_bin[:-1]
    assert from_txt[-1].template_data is None and from_txt[-1].template_hash == from_bin[-1].template_hash
    assert from_txt[-1].file_name == "/usr/bin/evm"
    ev_bin, ev_txt = ima.to_events(from_bin), ima.to_events(from_txt)
    assert ev_bin[:-1] == ev_txt[:-1]
    assert [e.register for e in ev_bin] == ["pcr10"] * 11 + ["pcr11", "pcr10"]
    assert ima.encode_ascii(from_bin) == text
    banks = (SHA1, SHA256, SHA384)
    expect = {b: chain(b, [ONES[b] if e.violation else
                           (e.template_hash if b == SHA1 else b.hash(e.template_data))
                           for e in entries if e.pcr == 10]) for b in banks}
    assert ima.replay(binary, banks=banks) == expect
    assert ima.replay(from_bin, banks=banks) == expect
    # The text list cannot give other banks for the evm-sig line, nor verify it.
    with pytest.raises(ReplayError, match="cannot be rebuilt"):
        ima.replay(text, banks=banks)
    assert ima.replay(text, banks=(SHA1,), verify=False) == {SHA1: expect[SHA1]}
    # Through the generic replay of unified events.
    import tsmr.replay

    result = tsmr.replay.replay(ev_bin, banks=list(banks))
    assert result.registers["pcr10"] == expect


def test_event_details_and_summaries() -> None:
    events = {e.details["file_name"] if e.details and "file_name" in e.details else e.type: e
              for e in ima.to_events(sample_entries())}
    sig = events["/usr/bin/ls"]
    assert sig.type == "ima-sig" and sig.data_rule == DATA and sig.details["signature"].startswith("0302")
    assert events["kexec-cmdline"].details["buffer_text"] == "root=/dev/vda1 ro"
    legacy = events["/sbin/init"]
    assert legacy.summary == f"ima {hashlib.sha1(b'legacy').hexdigest()[:12]}... /sbin/init"
    assert len(legacy.data) == 276 and legacy.check(SHA1)
    assert events["custom_fmt"].type == "d-ng|n-ng|buf"  # spaces become '_' as in the kernel
    mod = events["/lib/modules/x.ko"]
    assert mod.details["modsig_digest"] == "sha512:" + "00" * 64 and mod.details["modsig"].startswith("504b4353")
    evm = events["/usr/bin/evm"].details
    assert (evm["uid"], evm["gid"], evm["mode"], evm["xattr_names"]) == (1000, 100, 0o100755, "security.ima")
    raced = events["/tmp/raced"]
    assert raced.fill == 0xFF and raced.summary == "ima-ng violation (logged 0, extended 0xff) /tmp/raced"
    assert events["/usr/bin/bash"].summary == f"ima-ng sha256:{D256.hex()[:12]}... /usr/bin/bash"
    assert all(e.source == "ima" for e in events.values())
    assert ima.to_events(sample_entries()[:1], register="rtmr2")[0].register == "rtmr2"


def test_legacy_ima_template_layout_and_hash() -> None:
    digest = hashlib.sha1(b"x").digest()
    name = b"/bin/true"
    padded = name.ljust(256, b"\0")
    th = hashlib.sha1(digest + padded).digest()  # no lengths, name padded to 256
    # Linux >= 3.15 (IMA_SHOW_BINARY_OLD_STRING_FMT): digest, u32 strlen, name; no data length.
    modern = u32(10) + th + u32(3) + b"ima" + digest + u32(len(name)) + name
    # Linux 3.13-3.14: the 256-byte padded name field with its length.
    old = u32(10) + th + u32(3) + b"ima" + digest + u32(256) + padded
    for raw in (modern, old):
        (e,) = ima.parse_binary(raw)
        assert e.template_data == digest + padded and e.computed_hash() == th and e.file_name == "/bin/true"
    assert ima.encode_binary(ima.parse_binary(old)) == modern
    text = f"10 {th.hex()} ima {digest.hex()} /bin/true\n".encode()
    assert ima.parse_ascii(text) == ima.parse_binary(modern)
    assert ima.replay(modern) == {SHA1: chain(SHA1, [th])}


def test_per_bank_lists_agree_with_the_sha1_list() -> None:
    """binary_runtime_measurements_sha256 holds the same data with SHA-256 template hashes."""
    sha1_list = sample_entries(SHA1)
    sha256_list = [IMAEntry(e.pcr, bytes(32) if e.violation else hashlib.sha256(e.template_data).digest(),
                            e.template_name, e.template_data, SHA256) for e in sha1_list]
    raw = ima.encode_binary(sha256_list)
    assert ima.guess_binary_layout(raw) == (SHA256, False)
    with pytest.raises(ParseError, match="sha256"):
        ima.parse_binary(raw)  # read as a SHA-1 list: the error names the likely algorithm
    parsed = ima.parse_binary(raw, alg=SHA256)
    assert [e.template_data for e in parsed] == [e.template_data for e in sha1_list]
    assert all(e.computed_hash() == e.template_hash for e in parsed if not e.violation)
    banks = (SHA1, SHA256)
    assert ima.replay(raw, alg=SHA256, banks=banks) == ima.replay(ima.encode_binary(sha1_list), banks=banks)
    text = ima.encode_ascii(sha256_list)
    assert ima.parse_ascii(text)[0].alg == SHA256  # inferred from the 64-digit hashes
    assert ima.to_events(parsed)[1].digests == ((SHA256, sha256_list[1].template_hash),)


def test_big_endian_lists() -> None:
    entries = sample_entries()
    # Lengths inside the template data are host-endian too, so the hashes differ: rebuild them.
    be = [ima.build_entry(e.template_name, [f for _, f in e.fields()] if e.template_name != "ima" else
                          [e.template_data[:20], e.template_data[20:].rstrip(b"\0")],
                          pcr=e.pcr, violation=e.violation, big_endian=True) for e in entries]
    raw = ima.encode_binary(be, big_endian=True)
    with pytest.raises(ParseError, match="big_endian=True"):
        ima.parse_binary(raw)
    assert ima.guess_binary_layout(raw) == (SHA1, True)
    with pytest.raises(InputError, match="malformed"):
        ima.encode_binary(entries, big_endian=True)  # little-endian field lengths in a big-endian list
    assert ima.parse_binary(raw, big_endian=True) == tuple(be)
    assert ima.parse_ascii(ima.encode_ascii(be, big_endian=True), big_endian=True)[:-1] == tuple(be)[:-1]
    assert ima.replay(raw, big_endian=True) == ima.replay(be)


def test_replay_reports_template_hash_mismatches() -> None:
    entries = [ima.build_entry("ima-ng", [ima.digest_field("sha256", D256), ima.name_field(f"/usr/bin/x{i}")])
               for i in range(5000)]
    good = ima.encode_binary(entries)
    bad = bytearray(good)
    for i in (7, 4000):  # corrupt one byte of the file name in two entries
        at = bad.find(f"/usr/bin/x{i}\0".encode())
        bad[at + 1] ^= 0x20
    expected = ima.replay(good, banks=(SHA1, SHA256))
    with pytest.raises(TemplateHashError) as info:
        ima.replay(bytes(bad), banks=(SHA1, SHA256))
    err = info.value
    assert err.count == 2 and [m.seq for m in err.mismatches] == [7, 4000]
    assert str(err.mismatches[0]).startswith("entry 7 (/Usr/bin/x7): template hash mismatch")
    assert err.mismatches[1].offset == sum(len(ima.encode_binary([e])) for e in entries[:4000])
    assert "entry 4000 (/Usr/bin/x4000)" in str(err)
    # The logged hashes still give the SHA-1 bank; the SHA-256 bank follows the (altered) data.
    assert err.values[SHA1] == expected[SHA1] and err.values[SHA256] != expected[SHA256]
    assert ima.replay(bytes(bad), verify=False) == {SHA1: expected[SHA1]}
    # The same from parsed entries.
    with pytest.raises(TemplateHashError):
        ima.replay(ima.parse_binary(bytes(bad)))


def test_replay_modes_agree() -> None:
    entries = sample_entries() * 3 + [ima.build_entry("ima-ng", [b"", b"\0"], pcr=10)] * 2050
    raw = ima.encode_binary(entries)
    for banks in ((SHA1,), (SHA256,), (SHA1, SHA256), (SHA384, SHA1)):
        for verify in (True, False):
            want = {b: chain(b, [ONES[b] if e.violation else
                                 (e.template_hash if b == SHA1 else b.hash(e.template_data))
                                 for e in entries if e.pcr == 10]) for b in banks}
            assert ima.replay(raw, banks=banks, verify=verify) == want
    # Kernels before 5.8 extended other banks with the SHA-1 template hash, zero-padded.
    padded = ima.replay(raw, banks=(SHA256,), padded=True)
    assert padded[SHA256] == chain(SHA256, [ONES[SHA256] if e.violation else e.template_hash + bytes(12)
                                            for e in entries if e.pcr == 10])
    assert ima.replay(raw, pcr=11) == {SHA1: chain(SHA1, [e.template_hash for e in entries if e.pcr == 11])}
    start = {SHA1: bytes(range(20))}
    assert ima.replay(raw[:0], initial=start) == start


def test_streaming_decoder_and_replayer() -> None:
    entries = sample_entries() * 40
    raw = ima.encode_binary(entries)
    text = ima.encode_ascii(entries)
    for size in (1, 7, 64, 4096):
        dec = IMADecoder()
        got = [e for i in range(0, len(raw), size) for e in dec.feed(raw[i:i + size])] + dec.close()
        assert got == list(entries) and dec.offset == len(raw) and dec.count == len(entries)
        dec = IMADecoder(format="ascii" if False else "ima-ascii")
        got = [e for i in range(0, len(text), size) for e in dec.feed(text[i:i + size])] + dec.close()
        assert got == list(ima.parse_ascii(text))
        rep = IMAReplayer(banks=(SHA1, SHA256))
        for i in range(0, len(raw), size):
            rep.feed(raw[i:i + size])
        assert rep.finish() == ima.replay(raw, banks=(SHA1, SHA256)) and rep.count == len(entries)
    dec = IMADecoder()
    dec.feed(raw[:-3])
    with pytest.raises(ParseError, match="truncated"):
        dec.close()
    assert [e.offset for e in ima.parse_binary(raw)][:3] == [0, len(ima.encode_binary(entries[:1])),
                                                             len(ima.encode_binary(entries[:2]))]


def test_ascii_specifics() -> None:
    e = sample_entries()[1]
    line = f" 9 {e.template_hash.hex()} ima-ng sha256:{D256.hex()} /usr/bin/bash\n".encode()
    (got,) = ima.parse_ascii(line)  # "%2d": single-digit PCRs come with a leading space
    assert got.pcr == 9 and got.template_data == e.template_data
    assert ima.parse_ascii(line.rstrip(b"\n")) == (got,)  # a last line without its newline
    with pytest.raises(ParseError, match="2 fields, the line has 3"):
        ima.parse_ascii(line.replace(b"/usr/bin/bash", b"/usr/bin/my bash"))
    with pytest.raises(ParseError, match="empty line"):
        ima.parse_ascii(line + b"\n" + line)
    unknown = f"10 {e.template_hash.hex()} ima-cgpath sha256:{D256.hex()} /x /system.slice\n".encode()
    (u,) = ima.parse_ascii(unknown)  # a downstream template: kept as text, hash not checkable
    assert u.template_data is None and u.text_fields == (f"sha256:{D256.hex()}", "/x", "/system.slice")
    (ev,) = ima.to_events([u])
    assert ev.data_rule is None and ev.digest(SHA1) == e.template_hash and ev.digest(SHA256) is None
    assert ima.encode_ascii([u]) == unknown
    assert ima.detect(b"") is None and ima.detect(b"\x00" * 64) is None and ima.detect(b"hello") is None


def test_writers_reject_what_cannot_be_written() -> None:
    e = sample_entries()[1]
    for bad in (IMAEntry(10, e.template_hash, "bad name", e.template_data),
                IMAEntry(10, e.template_hash[:5], "ima-ng", e.template_data),
                IMAEntry(10, e.template_hash, "ima-ng", None)):
        with pytest.raises(InputError):
            ima.encode_binary([bad])
    with pytest.raises(InputError):
        ima.build_entry("ima", [b"short", b"/x"])
    with pytest.raises(InputError):
        ima.encode_ascii([IMAEntry(10, e.template_hash, "unknown-tpl", b"")])


def test_limits_are_named() -> None:
    e = sample_entries()[1]
    with pytest.raises(ParseError, match="MAX_TEMPLATE_DATA_LEN"):
        ima.parse_binary(u32(10) + e.template_hash + u32(6) + b"ima-ng" + u32(ima.MAX_TEMPLATE_DATA_LEN + 1))
    with pytest.raises(ParseError, match="MAX_TEMPLATE_NAME_LEN"):
        ima.parse_binary(u32(10) + e.template_hash + u32(1000) + b"x" * 1000)
    with pytest.raises(ParseError, match="MAX_PCR"):
        ima.parse_binary(u32(5000) + e.template_hash + u32(6) + b"ima-ng" + u32(0))
    with pytest.raises(ParseError, match="IMA_EVENT_NAME_LEN_MAX"):
        ima.parse_binary(u32(10) + e.template_hash + u32(3) + b"ima" + bytes(20) + u32(300) + b"x" * 300)
    with pytest.raises(ParseError, match="does not split"):
        ima.parse_binary(u32(10) + e.template_hash + u32(6) + b"ima-ng" + u32(5) + u32(9) + b"x")


# -- round trips and totality ---------------------------------------------------------------------

names = st.binary(min_size=0, max_size=60).map(lambda b: b.replace(b"\0", b"x").replace(b"\n", b"y"))
entry_st = st.builds(
    lambda tpl, pcr, name, dig, extra, violation: ima.build_entry(
        tpl, [ima.digest_field("sha256", dig), name + b"\0"] + ([extra] if tpl in ("ima-sig", "ima-buf") else []),
        pcr=pcr, violation=violation),
    st.sampled_from(["ima-ng", "ima-sig", "ima-buf"]), st.integers(0, 23),
    names.map(lambda b: b.replace(b" ", b"_")), st.binary(min_size=32, max_size=32), st.binary(max_size=40),
    st.booleans())


@settings(max_examples=150, deadline=None)
@given(st.lists(entry_st, max_size=6))
def test_round_trips(entries: list[IMAEntry]) -> None:
    raw = ima.encode_binary(entries)
    assert ima.parse_binary(raw) == tuple(entries)
    assert ima.parse_ascii(ima.encode_ascii(entries)) == tuple(entries)
    assert ima.replay(raw, banks=(SHA1, SHA256)) == ima.replay(entries, banks=(SHA1, SHA256))


VALID = ima.encode_binary(sample_entries())
VALID_TEXT = ima.encode_ascii(sample_entries())


def _total(data: bytes) -> None:
    for call in (lambda: ima.parse_binary(data), lambda: ima.parse_ascii(data),
                 lambda: ima.parse_binary(data, alg=SHA256, big_endian=True),
                 lambda: ima.replay(data, banks=(SHA1, SHA256)),
                 lambda: ima.to_events(ima.parse_binary(data, check_fields=False))):
        try:
            call()
        except (ParseError, TemplateHashError):
            pass
        except ReplayError as e:
            assert "cannot be rebuilt" in str(e)
    dec = IMADecoder()
    try:
        dec.feed(data[:len(data) // 2])
        dec.feed(data[len(data) // 2:])
        dec.close()
    except ParseError:
        pass
    ima.detect(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_totality_random_bytes(data: bytes) -> None:
    _total(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([VALID, VALID_TEXT]), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                      min_size=1, max_size=4), st.integers(0, 10**6))
def test_totality_mutated_lists(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(base)
    for at, value in flips:
        data[at % len(data)] = value
    _total(bytes(data[:len(data) - cut % 50]))


# -- every bank, against keylime's numbers (tests/ima_vectors.py says how they were computed) ----------

ALL_BANKS = (SHA1, SHA256, SHA384, HashAlg.SHA512)


def _vectors(fixtures: Path) -> list[tuple[str, bytes, dict[HashAlg, str]]]:
    from ima_vectors import KEYLIME_MIXED_PCR10, KEYLIME_PCR10, MIXED_LIST

    cases = [(rel, (fixtures / rel).read_bytes(), want) for rel, want in KEYLIME_PCR10.items()]
    return cases + [("mixed templates", MIXED_LIST, KEYLIME_MIXED_PCR10)]


def test_every_bank_matches_keylime(fixtures: Path) -> None:
    from tsmr.replay import replay as fold

    for name, raw, want in _vectors(fixtures):
        expect = {a: bytes.fromhex(v) for a, v in want.items()}
        entries = ima.parse_ascii(raw)
        assert all(e.alg == SHA1 for e in entries), name  # SHA-1 template hashes, replayed into every bank
        assert ima.replay(raw, banks=ALL_BANKS) == expect, name
        assert ima.replay(ima.encode_binary(entries), banks=ALL_BANKS) == expect, name  # the fast path
        # the reference fold, over events that record every bank, and over events that record only SHA-1
        assert fold(ima.to_events(entries, banks=ALL_BANKS)).registers == {"pcr10": expect}, name
        assert fold(ima.to_events(entries), banks=ALL_BANKS).registers == {"pcr10": expect}, name
        # one entry at a time: template_digest gives what each bank was extended with
        for bank in ALL_BANKS:
            assert chain(bank, [ima.template_digest(e, bank) for e in entries]) == expect[bank], (name, bank)


def test_template_digest_per_bank() -> None:
    e = ima.build_entry("ima-ng", [ima.digest_field(SHA256, bytes(32)), ima.name_field("/x")])
    assert ima.template_digest(e, SHA1) == e.template_hash
    assert ima.template_digest(e, SHA256) == hashlib.sha256(e.template_data or b"").digest()
    assert ima.template_digest(e, SHA256, padded=True) == e.template_hash + bytes(12)  # kernels before 5.8
    legacy = ima.build_entry("ima", [bytes(range(20)), b"/sbin/init"])
    # the legacy template: digest and the name NUL-padded to 256 bytes, no lengths, in every bank
    assert ima.template_digest(legacy, SHA384) == hashlib.sha384(bytes(range(20)) + b"/sbin/init".ljust(256, b"\0")).digest()
    v = ima.build_entry("ima-ng", [ima.digest_field(SHA256, bytes(32)), ima.name_field("/log")], violation=True)
    assert [ima.template_digest(v, b) for b in ALL_BANKS] == [ONES[b] for b in ALL_BANKS]
    (text_only,) = ima.parse_ascii(b"10 " + b"11" * 20 + b" my-template aa bb\n")
    assert ima.template_digest(text_only, SHA1) == bytes.fromhex("11" * 20)  # logged
    assert ima.template_digest(text_only, SHA256) is None  # the data is unknown


def test_events_record_the_banks_asked_for() -> None:
    from ima_vectors import MIXED_LIST

    entries = ima.parse_ascii(MIXED_LIST)
    plain, wide = ima.to_events(entries), ima.to_events(entries, banks=(SHA256, SHA1, SHA256))
    assert all(ev.algs == (SHA1,) for ev in plain)
    assert all(ev.algs == (SHA1, SHA256) for ev in wide)  # each once, in bank order
    for e, ev in zip(entries, wide):
        if e.violation:  # shown as zeros in every bank (as the per-bank lists show it), extended as 0xFF
            assert ev.digests == ((SHA1, bytes(20)), (SHA256, bytes(32))) and ev.digest(SHA256) == ONES[SHA256]
        else:
            assert dict(ev.digests)[SHA256] == hashlib.sha256(e.template_data or b"").digest()
            assert ev.check(SHA256) is True and ev.check(SHA1) is True
    (text_only,) = ima.parse_ascii(b"10 " + b"11" * 20 + b" my-template aa bb\n")
    assert ima.to_events([text_only], banks=(SHA256,))[0].algs == (SHA1,)  # nothing to hash
