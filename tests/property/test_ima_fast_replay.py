"""The IMA fast replay (straight from the bytes, in runs of same-template entries) gives exactly what the
reference fold (tsmr.replay over unified events) gives, in every bank, for random lists."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from tsmr import HashAlg
from tsmr.formats import ima
from tsmr.formats.ima import fold
from tsmr.replay import replay

BANKS = (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)
names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@st.composite
def entries(draw: st.DrawFn, list_alg: HashAlg, big: bool) -> ima.IMAEntry:
    template = draw(st.sampled_from(["ima-ng", "ima-ng", "ima-sig", "ima-buf", "ima", "d-ng|n-ng|buf"]))
    pcr = draw(st.sampled_from([10, 10, 10, 11]))
    name = draw(names)
    if template == "ima":
        fields = [draw(st.binary(min_size=20, max_size=20)), name.encode()]
    else:
        algo = draw(st.sampled_from([HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA512]))
        fields = [ima.digest_field(algo, draw(st.binary(min_size=algo.digest_size, max_size=algo.digest_size))),
                  ima.name_field(name)]
        if template != "ima-ng":
            fields.append(draw(st.binary(max_size=48)))
    e = ima.build_entry(template, fields, pcr=pcr, alg=list_alg, violation=draw(st.booleans()) and draw(st.booleans()),
                        big_endian=big)
    if draw(st.integers(0, 9)) == 0 and not e.violation:  # a template hash that is not the data's
        e = ima.IMAEntry(e.pcr, bytes(b ^ 1 for b in e.template_hash), e.template_name, e.template_data, e.alg)
    return e


@contextmanager
def batch(size: int) -> Iterator[None]:
    """Runs of at most ``size`` entries, so that short lists cross run boundaries too."""
    old, fold._BATCH = fold._BATCH, size
    try:
        yield
    finally:
        fold._BATCH = old


def reference(listed: tuple[ima.IMAEntry, ...], banks: tuple[HashAlg, ...]) -> dict[HashAlg, bytes]:
    got = replay(ima.to_events(listed), banks=banks).registers.get("pcr10")
    return got if got is not None else {b: bytes(b.digest_size) for b in banks}


@settings(max_examples=150, deadline=None)
@given(st.data(), st.sampled_from([HashAlg.SHA1, HashAlg.SHA256]), st.booleans(),
       st.lists(st.sampled_from(BANKS), min_size=1, max_size=4, unique=True), st.integers(1, 5), st.integers(1, 97))
def test_fast_replay_equals_the_reference_fold(data: st.DataObject, list_alg: HashAlg, big: bool,
                                               banks: list[HashAlg], run: int, chunk: int) -> None:
    listed = tuple(data.draw(st.lists(entries(list_alg, big), max_size=30)))
    raw = ima.encode_binary(listed, big_endian=big)
    parsed = ima.parse_binary(raw, alg=list_alg, big_endian=big)
    assert parsed == listed
    want = reference(parsed, tuple(banks))
    bad = [i for i, e in enumerate(parsed) if e.pcr == 10 and not e.violation and e.computed_hash() != e.template_hash]
    with batch(run):
        # unverified: every bank from the bytes; verified: the same values, with the bad entries named
        assert ima.replay(raw, alg=list_alg, big_endian=big, banks=banks, verify=False) == want
        streamed = ima.IMAReplayer(alg=list_alg, big_endian=big, banks=banks, verify=False)
        for i in range(0, len(raw), chunk):
            streamed.feed(raw[i:i + chunk])
        assert streamed.finish() == want and streamed.count == len(parsed)
        try:
            got = ima.replay(raw, alg=list_alg, big_endian=big, banks=banks)
        except ima.TemplateHashError as exc:
            assert [m.seq for m in exc.mismatches] == bad
            assert exc.count == len(bad) and exc.values == want
        else:
            assert not bad and got == want
    # and the parsed entries, as the ASCII path folds them
    assert ima.replay(parsed, banks=banks, verify=False) == want
