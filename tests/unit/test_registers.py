import pytest

from tsmr import Flag, HashAlg, InputError
from tsmr.registers import (
    Bank,
    Register,
    ccmr_to_register,
    check_register_name,
    pcr_index,
    pcr_to_ccmr,
    pcr_to_register,
    register_to_ccmr,
    sort_banks,
)


def test_flag_values_match_the_kernel() -> None:  # include/linux/tsm-mr.h
    assert (Flag.NOHASH, Flag.WRITABLE, Flag.READABLE, Flag.LIVE) == (1, 2, 4, 8)
    assert Flag.rtmr() == Flag.READABLE | Flag.LIVE | Flag.WRITABLE
    assert Flag.rtmr().names() == ["readable", "writable", "live"]


# UEFI 2.10 section 38.4.1: PCR -> CC MR index
@pytest.mark.parametrize(
    "pcr,ccmr,rtmr",
    [(0, 0, "mrtd"), (1, 1, "rtmr0"), (7, 1, "rtmr0"), (2, 2, "rtmr1"), (6, 2, "rtmr1"),
     (8, 3, "rtmr2"), (15, 3, "rtmr2"), (16, 4, "rtmr3"), (17, 4, "rtmr3"), (23, 4, "rtmr3")],
)
def test_pcr_map(pcr: int, ccmr: int, rtmr: str) -> None:
    assert pcr_to_ccmr(pcr) == ccmr
    assert pcr_to_register(pcr) == rtmr
    assert register_to_ccmr(rtmr) == ccmr


def test_cca_names() -> None:
    assert [ccmr_to_register(i, "cca") for i in range(5)] == ["rim", "rem0", "rem1", "rem2", "rem3"]
    assert register_to_ccmr("rem3") == 4
    assert register_to_ccmr("pcr16") is None


def test_map_bounds() -> None:
    with pytest.raises(InputError):
        pcr_to_ccmr(24)
    with pytest.raises(InputError):
        ccmr_to_register(5)
    with pytest.raises(InputError):
        ccmr_to_register(0, "snp")
    assert pcr_index("pcr23") == 23 and pcr_index("pcr24") is None and pcr_index("rtmr3") is None


@pytest.mark.parametrize("name", ["rtmr3", "pcr16", "rtmr_crypto_agile", "report_digest", "a.b-c"])
def test_good_names(name: str) -> None:
    assert check_register_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../etc", "a/b", "a\0b", "a b", "-x", "x" * 65, "rtmr3\n", "ä"])
def test_odd_names_refused(name: str) -> None:
    with pytest.raises(InputError, match="invalid register name"):
        check_register_name(name)


def test_register_sizes_and_bank_lookup() -> None:
    banks = sort_banks([
        Bank(HashAlg.SHA384, 48, Flag.READABLE, "pcr0:sha384"),
        Bank(HashAlg.SHA1, 20, Flag.READABLE, "pcr0:sha1"),
    ])
    reg = Register("pcr0", banks)
    assert reg.algs == (HashAlg.SHA1, HashAlg.SHA384)
    assert reg.size is None and reg.sizes == {"sha1": 20, "sha384": 48}
    assert reg.bank(HashAlg.SHA384).attribute == "pcr0:sha384"
    with pytest.raises(InputError, match="has no sha256 bank"):
        reg.bank(HashAlg.SHA256)
    raw = Register("mrconfigid", (Bank(None, 48, Flag.READABLE | Flag.NOHASH, "mrconfigid"),))
    assert raw.size == 48 and raw.banks[0].label == "raw"
