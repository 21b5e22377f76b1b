import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsmr import HashAlg, InputError
from tsmr.algorithms import extend_chain


@pytest.mark.parametrize(
    "alg,size,name,hl",
    [
        (HashAlg.SHA1, 20, "sha1", "sha1"),
        (HashAlg.SHA256, 32, "sha256", "sha256"),
        (HashAlg.SHA384, 48, "sha384", "sha384"),
        (HashAlg.SHA512, 64, "sha512", "sha512"),
        (HashAlg.SM3_256, 32, "sm3", "sm3"),
        (HashAlg.SHA3_256, 32, "sha3-256", "sha3_256"),
        (HashAlg.SHA3_384, 48, "sha3-384", "sha3_384"),
        (HashAlg.SHA3_512, 64, "sha3-512", "sha3_512"),
    ],
)
def test_sizes_names_and_hashes(alg: HashAlg, size: int, name: str, hl: str) -> None:
    assert alg.digest_size == size
    assert alg.kernel_name == name == str(alg)
    assert alg.hash(b"abc") == hashlib.new(hl, b"abc").digest()
    assert HashAlg.from_name(name) is alg
    assert HashAlg.from_name(f"0x{int(alg):04x}") is alg
    assert HashAlg.from_id(int(alg)) is alg


def test_tpm_alg_ids() -> None:  # TCG Algorithm Registry
    assert [int(a) for a in (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512, HashAlg.SM3_256)] == [
        4, 11, 12, 13, 18]


@pytest.mark.parametrize("text", ["SHA-384", "sha_384", "TPM_ALG_SHA384", "Sha384", " sha384 "])
def test_name_spellings(text: str) -> None:
    assert HashAlg.from_name(text) is HashAlg.SHA384


def test_sm3_256_spelling() -> None:
    assert HashAlg.from_name("sm3_256") is HashAlg.SM3_256


@pytest.mark.parametrize("text", ["md5", "sha385", "", "0x9999"])
def test_unknown_names(text: str) -> None:
    with pytest.raises(InputError, match="unknown hash algorithm"):
        HashAlg.from_name(text)


def test_unknown_id() -> None:
    with pytest.raises(InputError, match="unsupported TPM_ALG_ID 0x0099"):
        HashAlg.from_id(0x99)


def test_sm3_known_answer() -> None:  # GB/T 32905-2016 example 1
    assert HashAlg.SM3_256.hash(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


def test_extend_rejects_wrong_sizes() -> None:
    with pytest.raises(InputError, match="48-byte operands, got 48 and 32"):
        HashAlg.SHA384.extend(bytes(48), bytes(32))


def test_spec_runtime_log_vector() -> None:
    # spec/runtime-log.md section 6: the sync record then one event on a zero SHA-384 register
    sync = b"SYNC sha384/" + b"0" * 96
    event = b'example.com/app deploy {"image":"alpine"}'
    alg = HashAlg.SHA384
    v = alg.extend(alg.zero(), alg.hash(sync))
    assert v.hex() == "bbcff67eab4aa6136e879db8faa1b39e9bda710219c24a6686f5d189d9ac74d2948860f46f3ff9485f220e5959a1de7f"
    v = alg.extend(v, alg.hash(event))
    assert v.hex() == "4d21cf6247d683a218c4c7f98f287f1200bf6480e51c96374542d9c10ec01df8a4044b24f13847f6e2c4dc7e1dbc7110"


@given(st.sampled_from(list(HashAlg)), st.data())
def test_extend_chain_is_the_hashlib_chain(alg: HashAlg, data: st.DataObject) -> None:
    digests = data.draw(st.lists(st.binary(min_size=alg.digest_size, max_size=alg.digest_size), max_size=10))
    value = alg.zero()
    for d in digests:
        value = hashlib.new(alg.new().name, value + d).digest()
    assert extend_chain(alg, alg.zero(), digests) == value
