"""The emulator's state directory: persistence, crash recovery, re-init, reset, journal."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from pathlib import Path

import pytest

from tsmr import BackendError, HashAlg, InputError
from tsmr.backends.emulated import EmulatedRegisterSet, initialise

D1 = hashlib.sha384(b"one").digest()
D2 = hashlib.sha384(b"two").digest()


def test_state_is_shared_between_instances(state_dir: Path) -> None:
    with EmulatedRegisterSet("tdx") as a, EmulatedRegisterSet("tdx") as b:
        a.extend("rtmr3", {HashAlg.SHA384: D1})
        assert b.read("rtmr3")[HashAlg.SHA384] == hashlib.sha384(bytes(48) + D1).digest()
    assert (state_dir / "emulator" / "tdx" / "state").exists()


def test_default_state_dir_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tsmr.backends.emulated import default_state_dir

    monkeypatch.delenv("TSMR_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "tsmr"


def test_journal_records_every_extend_in_order(state_dir: Path) -> None:
    with EmulatedRegisterSet("tpm") as rs:
        rs.extend("pcr16", {HashAlg.SHA256: bytes(32), HashAlg.SHA1: bytes(20)})
        rs.extend("pcr23", {HashAlg.SHA384: D1})
        entries = list(rs.journal())
    assert [(e.seq, e.attribute) for e in entries] == [(1, "pcr16:sha1"), (2, "pcr16:sha256"), (3, "pcr23:sha384")]
    assert entries[2].data == D1


def test_torn_journal_tail_is_cut_and_complete_records_redone(state_dir: Path) -> None:
    """A writer killed after its journal write but before the state write loses nothing."""
    with EmulatedRegisterSet("tdx") as rs:
        rs.extend("rtmr2", {HashAlg.SHA384: D1})
        d = rs.dir
    state_before = (d / "state").read_bytes()
    with EmulatedRegisterSet("tdx") as rs:
        rs.extend("rtmr2", {HashAlg.SHA384: D2})
    # Simulate the crash window: journal has the second record, state does not.
    (d / "state").write_bytes(state_before)
    journal = (d / "journal").read_bytes()
    (d / "journal").write_bytes(journal + journal[-20:])  # plus a torn partial record
    with EmulatedRegisterSet("tdx") as rs:
        want = hashlib.sha384(hashlib.sha384(bytes(48) + D1).digest() + D2).digest()
        assert rs.read("rtmr2")[HashAlg.SHA384] == want
        assert [e.data for e in rs.journal()] == [D1, D2]
    assert (d / "journal").read_bytes() == journal


def test_corrupt_record_is_not_applied(state_dir: Path) -> None:
    with EmulatedRegisterSet("tdx") as rs:
        d = rs.dir
    state_before = (d / "state").read_bytes()
    with EmulatedRegisterSet("tdx") as rs:
        rs.extend("rtmr0", {HashAlg.SHA384: D1})
    (d / "state").write_bytes(state_before)
    raw = bytearray((d / "journal").read_bytes())
    raw[-6] ^= 0xFF  # flip a digest byte: the CRC no longer matches
    (d / "journal").write_bytes(bytes(raw))
    with EmulatedRegisterSet("tdx") as rs:
        assert rs.read("rtmr0")[HashAlg.SHA384] == bytes(48)
        assert list(rs.journal()) == []


def test_corrupt_state_header_is_reported(state_dir: Path) -> None:
    with EmulatedRegisterSet("tdx") as rs:
        (rs.dir / "state").write_bytes(b"garbage")
        with pytest.raises(BackendError, match="corrupt"):
            rs.read("rtmr0")


def test_reset_restores_initial_values_and_clears_journal(state_dir: Path) -> None:
    mrtd = hashlib.sha384(b"td image").digest()
    initialise("tdx", values={"mrtd": mrtd})
    with EmulatedRegisterSet("tdx") as rs:
        rs.extend("rtmr3", {HashAlg.SHA384: D1})
        rs.reset()
        assert rs.read("rtmr3")[HashAlg.SHA384] == bytes(48)
        assert rs.read("mrtd")[HashAlg.SHA384] == mrtd
        assert list(rs.journal()) == []


def test_reinit_is_seen_by_open_instances(state_dir: Path) -> None:
    with EmulatedRegisterSet("cca") as rs:
        assert rs.register("rem0").algs == (HashAlg.SHA256,)
        initialise("cca", options={"hash": "sha512"})
        assert rs.register("rem0").algs == (HashAlg.SHA512,)
        rs.extend("rem1", {HashAlg.SHA512: bytes(64)})
        assert rs.read("rem1")[HashAlg.SHA512] == hashlib.sha512(bytes(128)).digest()


def test_init_values_are_checked(state_dir: Path) -> None:
    with pytest.raises(InputError, match="cannot set 'nosuch'"):
        initialise("tdx", values={"nosuch": bytes(48)})
    with pytest.raises(InputError, match="cannot set 'mrtd'"):
        initialise("tdx", values={"mrtd": bytes(47)})
    with pytest.raises(InputError, match="sha256 or sha512"):
        initialise("cca", options={"hash": "sha384"})
    with pytest.raises(InputError, match="fixed initial values"):
        initialise("sample", values={"rtmr0": bytes(32)})
    with pytest.raises(InputError, match="unknown emulator profile"):
        EmulatedRegisterSet("nosuch")


def test_uninitialised_profile_without_create(state_dir: Path) -> None:
    with pytest.raises(BackendError, match="not initialised"):
        EmulatedRegisterSet("tdx", create=False)


def test_kernel_attribute_view(state_dir: Path) -> None:
    with EmulatedRegisterSet("sample") as rs:
        attrs = {a.name: (a.size, a.mode) for a in rs.attributes()}
        assert attrs["rtmr1:sha384"] == (48, 0o644)
        assert attrs["rtmr0:sha256"] == (32, 0o444)
        assert attrs["config_mr"] == (64, 0o444)
        for name, code in (("static_mr:sha384", errno.EACCES), ("nosuch", errno.ENOENT)):
            with pytest.raises(OSError) as info:
                rs.write_attribute(name, bytes(48))
            assert info.value.errno == code
        with pytest.raises(OSError) as info:
            rs.write_attribute("rtmr1:sha384", bytes(47))
        assert info.value.errno == errno.EINVAL


def test_closed_set_refuses(state_dir: Path) -> None:
    rs = EmulatedRegisterSet("tdx")
    rs.close()
    rs.close()
    with pytest.raises(BackendError, match="closed"):
        rs.read("rtmr0")


def test_state_layout_is_header_then_buffer(state_dir: Path) -> None:
    with EmulatedRegisterSet("tdx") as rs:
        rs.extend("rtmr3", {HashAlg.SHA384: D1})
        raw = (rs.dir / "state").read_bytes()
    magic, gen, seq, jlen = struct.unpack_from("<8sQQQ", raw)
    assert magic == b"TSMRST01" and seq == 1 and jlen == os.path.getsize(state_dir / "emulator" / "tdx" / "journal")
    assert raw[32 + 7 * 48 : 32 + 8 * 48] == hashlib.sha384(bytes(48) + D1).digest()
