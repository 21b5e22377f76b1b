"""The Authenticode digest and the PE parser, against real signed EFI binaries and independent tools.

Oracles: the digests Microsoft's and Debian's signatures embed in Debian's shim binaries
(a signer hashed the file and signed that digest, so a wrong implementation cannot agree
with it by accident); ``pesign -h`` (pesign's own hash, sha256 and sha1);
``osslsigncode verify`` (its "Calculated message digest", and "Current message digest", its
own reading of the signature); and images signed here by osslsigncode and sbsign in every
bank, nested signatures included.  Malformed and truncated images must raise InputError and
nothing else.

pesign, osslsigncode, sbsigntool and the shim, systemd-boot and stub binaries are installed by
``make test``: missing, they skip the tests (fail them under CI=true).
"""

from __future__ import annotations

import datetime
import re
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import need_file, need_tool
from tsmr.algorithms import HashAlg
from tsmr.errors import InputError
from tsmr.predict.pe import PeImage, authenticode

SHIM = Path("/usr/lib/shim")
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SIGNED = [SHIM / "shimx64.efi.signed", SHIM / "mmx64.efi.signed", SHIM / "fbx64.efi.signed"]
UNSIGNED = [SHIM / "shimx64.efi", SHIM / "mmx64.efi", SHIM / "fbx64.efi", STUB, SYSTEMD_BOOT]
FBX64_SIGNED = (SHIM / "fbx64.efi.signed").read_bytes() if (SHIM / "fbx64.efi.signed").is_file() else None


def need_bytes(path: Path) -> bytes:
    """The file's bytes; skip (fail under CI=true: make test installs it) when it is missing."""
    return need_file(path, "shim-signed or systemd-boot-efi").read_bytes()


def pesign_hash(path: Path, alg: str, *, pad: bool = False) -> bytes:
    exe = need_tool("pesign", "pesign")
    args = [exe, "-h", "-d", alg, "-i", str(path)] + (["-P"] if pad else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    m = re.search(r"hash: ([0-9a-f]+)", out)
    assert m, f"pesign printed no hash: {out!r}"
    return bytes.fromhex(m.group(1))


def osslsigncode_digests(path: Path) -> list[tuple[bytes, bytes]]:
    """``osslsigncode verify``: (digest the signature carries, digest osslsigncode computes), per signature."""
    exe = need_tool("osslsigncode", "osslsigncode")
    res = subprocess.run([exe, "verify", "-in", str(path)], capture_output=True, text=True, timeout=60)
    text = res.stdout + res.stderr
    current = re.findall(r"Current message digest\s*:\s*([0-9A-F]+)", text)
    calculated = re.findall(r"Calculated message digest\s*:\s*([0-9A-F]+)", text)
    assert current and len(current) == len(calculated), text
    return [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in zip(current, calculated)]


# --- the real signed binaries -------------------------------------------------------------------------


@pytest.mark.parametrize("path", SIGNED, ids=lambda p: p.name)
def test_digest_matches_the_signatures_embedded_digests(path: Path) -> None:
    image = PeImage.parse(need_bytes(path))
    signed = image.signed_digests()
    assert signed, "a signed binary has at least one signature"
    for alg, digest in signed:
        assert image.authenticode(alg) == digest


def test_shim_carries_both_microsoft_signatures() -> None:
    """shimx64.efi.signed holds two WIN_CERTIFICATEs (UEFI CA 2011 and 2023); both sign the same digest."""
    image = PeImage.parse(need_bytes(SHIM / "shimx64.efi.signed"))
    certs = list(image.certificates())
    assert len(certs) >= 2
    assert all(ctype == 2 and rev == 0x200 for rev, ctype, _ in certs)
    signed = image.signed_digests()
    assert len(signed) == len(certs)
    assert {d for _, d in signed} == {image.authenticode(HashAlg.SHA256)}


@pytest.mark.parametrize("path", SIGNED + UNSIGNED, ids=lambda p: p.name)
@pytest.mark.parametrize("alg", ["sha256", "sha1"])
def test_digest_matches_pesign(path: Path, alg: str) -> None:
    data = need_bytes(path)
    assert authenticode(data, HashAlg.from_name(alg)) == pesign_hash(path, alg)


@pytest.mark.parametrize("path", [SHIM / "mmx64.efi.signed", SHIM / "fbx64.efi.signed"], ids=lambda p: p.name)
def test_digest_matches_osslsigncode(path: Path) -> None:
    """osslsigncode reads the signature's digest itself and computes its own (it rejects shim's two entries)."""
    image = PeImage.parse(need_bytes(path))
    results = osslsigncode_digests(path)
    assert [d for _, d in image.signed_digests()] == [current for current, _ in results]
    for current, calculated in results:
        assert image.authenticode(HashAlg.SHA256) == calculated == current


def test_signed_and_unsigned_shim_share_headers_but_not_the_digest() -> None:
    """The certificate table and its directory entry are excluded; the signed binary is a different build."""
    signed = PeImage.parse(need_bytes(SHIM / "fbx64.efi.signed"))
    unsigned = PeImage.parse(need_bytes(SHIM / "fbx64.efi"))
    assert unsigned.cert_table is None and signed.cert_table is not None
    # Debian signs the very file it ships unsigned: the digest must not see the signature.
    assert signed.authenticode() == unsigned.authenticode()


def test_parsed_headers() -> None:
    image = PeImage.parse(need_bytes(SHIM / "shimx64.efi.signed"))
    assert image.machine_name == "x86_64" and image.is_pe32_plus
    assert image.checksum_offset == image.pe_offset + 24 + 64
    assert image.cert_dir_offset == image.pe_offset + 24 + 112 + 4 * 8
    text = image.section(".text")
    assert text is not None and text.raw_size > 0
    assert bytes(text.raw) == image.data[text.raw_offset:text.raw_offset + text.raw_size].tobytes()
    sbat = image.section(".sbat")
    assert sbat is not None and sbat.contents.startswith(b"sbat,1,")


# --- trailing data, padding, fresh signatures ------------------------------------------------------------


def test_unaligned_trailing_data_is_hashed_as_is(tmp_path: Path) -> None:
    """EDK2 hashes the bytes after the last section as they are; pesign -h agrees, pesign -h -P pads to 8."""
    data = need_bytes(SHIM / "fbx64.efi") + b"abc"
    path = tmp_path / "odd.efi"
    path.write_bytes(data)
    assert authenticode(data) == pesign_hash(path, "sha256")
    padded = data + bytes(-len(data) % 8)
    assert authenticode(padded) == pesign_hash(path, "sha256", pad=True)
    assert authenticode(data) != authenticode(padded)


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway RSA key and self-signed certificate (PEM) for osslsigncode and sbsign."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tsmr test signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2)).sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("key")
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return d / "key.pem", d / "cert.pem"


@pytest.mark.parametrize("alg", ["sha1", "sha256", "sha384", "sha512"])
def test_osslsigncode_signatures_in_every_bank(tmp_path: Path, signing_key: tuple[Path, Path], alg: str) -> None:
    """An image whose length is not a multiple of 8, signed in each bank: the signer pads, then hashes."""
    exe = need_tool("osslsigncode", "osslsigncode")
    src = tmp_path / "in.efi"
    src.write_bytes(need_bytes(SHIM / "fbx64.efi") + b"\x01\x02\x03")
    out = tmp_path / "out.efi"
    key, cert = signing_key
    subprocess.run([exe, "sign", "-h", alg, "-key", str(key), "-certs", str(cert), "-in", str(src), "-out", str(out)],
                   check=True, capture_output=True, timeout=60)
    image = PeImage.parse(out.read_bytes())
    hash_alg = HashAlg.from_name(alg)
    assert image.signed_digests() == [(hash_alg, image.authenticode(hash_alg))]
    [(current, calculated)] = osslsigncode_digests(out)
    assert current == calculated == image.authenticode(hash_alg)


def test_nested_signature(tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    """A second signature nested in the first signer's unsigned attributes (osslsigncode -nest) is found too."""
    exe = need_tool("osslsigncode", "osslsigncode")
    key, cert = signing_key
    src = tmp_path / "in.efi"
    src.write_bytes(need_bytes(SHIM / "mmx64.efi"))
    once, twice = tmp_path / "once.efi", tmp_path / "twice.efi"
    common = ["-key", str(key), "-certs", str(cert)]
    subprocess.run([exe, "sign", "-h", "sha384", *common, "-in", str(src), "-out", str(once)],
                   check=True, capture_output=True, timeout=60)
    subprocess.run([exe, "sign", "-nest", "-h", "sha512", *common, "-in", str(once), "-out", str(twice)],
                   check=True, capture_output=True, timeout=60)
    image = PeImage.parse(twice.read_bytes())
    assert len(list(image.certificates())) == 1
    assert [a for a, _ in image.signed_digests()] == [HashAlg.SHA384, HashAlg.SHA512]
    theirs = osslsigncode_digests(twice)
    assert [d for _, d in image.signed_digests()] == [c for c, _ in theirs]
    assert [image.authenticode(a) for a, _ in image.signed_digests()] == [c for _, c in theirs]


def test_sbsign_signature(tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    exe = need_tool("sbsign", "sbsigntool")
    key, cert = signing_key
    src = tmp_path / "in.efi"
    src.write_bytes(need_bytes(STUB))
    out = tmp_path / "out.efi"
    subprocess.run([exe, "--key", str(key), "--cert", str(cert), "--output", str(out), str(src)],
                   check=True, capture_output=True, timeout=60)
    image = PeImage.parse(out.read_bytes())
    [(alg, digest)] = image.signed_digests()
    assert alg == HashAlg.SHA256 and digest == image.authenticode(alg)
    assert digest == pesign_hash(out, "sha256")


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_no_certificate_directory_entry() -> None:
    """With NumberOfRvaAndSizes <= 4 there is no certificate entry to skip: everything after CheckSum is hashed.

    No tool here handles such an image (pesign crashes on it), so the expected digest is the
    spec's rule written out over the file's own header fields.
    """
    base = need_bytes(SHIM / "fbx64.efi")
    pe = struct.unpack_from("<I", base, 0x3C)[0]
    data = _patch(base, pe + 24 + 108, "<I", 4)
    image = PeImage.parse(data)
    assert image.cert_dir_offset is None and image.cert_table is None
    cks = pe + 24 + 64
    size_of_headers = struct.unpack_from("<I", data, pe + 24 + 60)[0]
    nsec = struct.unpack_from("<H", data, pe + 6)[0]
    table = pe + 24 + struct.unpack_from("<H", data, pe + 20)[0]
    spans = sorted(struct.unpack_from("<II", data, table + 40 * i + 16)[::-1] for i in range(nsec))
    h = HashAlg.SHA256.new()
    h.update(data[:cks] + data[cks + 4:size_of_headers])
    total = size_of_headers
    for offset, size in spans:
        if size:
            h.update(data[offset:offset + size])
            total += size
    h.update(data[total:])
    assert image.authenticode() == h.digest()
    # and the 8 bytes where the certificate entry would be are hashed now
    assert image.authenticode() != authenticode(base)


# --- malformed input ------------------------------------------------------------------------------------


def test_every_truncation_of_a_signed_binary_is_an_input_error() -> None:
    """Cut anywhere, a signed image's certificate table (at its end) runs past the end: InputError, always."""
    data = need_bytes(SHIM / "fbx64.efi.signed")
    cuts = list(range(0, 4096)) + list(range(4096, len(data), 997)) + [len(data) - 1]
    for cut in cuts:
        with pytest.raises(InputError):
            PeImage.parse(data[:cut]).authenticode()


def test_truncated_header_messages_name_the_problem() -> None:
    data = need_bytes(SHIM / "fbx64.efi")
    with pytest.raises(InputError, match="truncated PE image"):
        PeImage.parse(data[:300])
    with pytest.raises(InputError, match="not a PE image"):
        PeImage.parse(b"MZ" + bytes(100))
    with pytest.raises(InputError, match="not a PE image"):
        PeImage.parse(b"")


def test_malformed_headers() -> None:
    base = need_bytes(SHIM / "fbx64.efi.signed")
    pe = struct.unpack_from("<I", base, 0x3C)[0]
    opt = pe + 24
    table = opt + struct.unpack_from("<H", base, pe + 20)[0]
    cases = {
        "e_lfanew past the end": _patch(base, 0x3C, "<I", 0xFFFFFFF0),
        "e_lfanew at no PE signature": _patch(base, 0x3C, "<I", 0x10),
        "bad optional header magic": _patch(base, opt, "<H", 0x1234),
        "optional header too short": _patch(base, pe + 20, "<H", 64),
        "optional header past the end": _patch(base, pe + 20, "<H", 0xFFFF),
        "section table past the end": _patch(base, pe + 6, "<H", 0xFFFF),
        "section data past the end": _patch(base, table + 20, "<I", len(base)),
        "section size past the end": _patch(base, table + 16, "<I", 0x7FFFFFFF),
        "certificate table past the end": _patch(base, opt + 112 + 32, "<I", len(base) - 8),
        "certificate table size past the end": _patch(base, opt + 112 + 36, "<I", 0x10000000),
        "SizeOfHeaders past the end": _patch(base, opt + 60, "<I", len(base) + 1),
        "SizeOfHeaders inside the optional header": _patch(base, opt + 60, "<I", opt + 100),
        "NumberOfRvaAndSizes beyond the optional header": _patch(_patch(base, pe + 20, "<H", 112 + 8), opt + 108, "<I",
                                                                 16),
    }
    for what, data in cases.items():
        with pytest.raises(InputError):
            PeImage.parse(data).authenticode()
            pytest.fail(f"{what}: accepted")


def test_malformed_signatures() -> None:
    """A damaged WIN_CERTIFICATE or PKCS#7 is an InputError from signed_digests, the digest unaffected."""
    base = need_bytes(SHIM / "fbx64.efi.signed")
    image = PeImage.parse(base)
    assert image.cert_table is not None
    start, size = image.cert_table
    bad_length = _patch(base, start, "<I", size + 8)
    with pytest.raises(InputError, match="WIN_CERTIFICATE"):
        PeImage.parse(bad_length).signed_digests()
    for offset in (start + 8, start + 9, start + 10, start + 30, start + 60):
        damaged = bytearray(base)
        damaged[offset] ^= 0xFF
        try:
            PeImage.parse(bytes(damaged)).signed_digests()
        except InputError:
            pass
        assert PeImage.parse(bytes(damaged)).authenticode() == image.authenticode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_images_raise_only_input_error(data: st.DataObject) -> None:
    """Random byte changes in the headers and certificate table, and random cuts: InputError or a result."""
    base = FBX64_SIGNED
    if base is None:
        base = need_bytes(SHIM / "fbx64.efi.signed")  # skips, or fails under CI=true
    buf = bytearray(base)
    image = PeImage.parse(base)
    assert image.cert_table is not None
    regions = [(0, 1024), (image.cert_table[0], image.cert_table[0] + image.cert_table[1])]
    for _ in range(data.draw(st.integers(1, 8))):
        lo, hi = data.draw(st.sampled_from(regions))
        buf[data.draw(st.integers(lo, hi - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del buf[data.draw(st.integers(0, len(buf))):]
    try:
        parsed = PeImage.parse(bytes(buf))
        parsed.authenticode(HashAlg.SHA1)
        parsed.signed_digests()
    except InputError:
        pass


def test_cli_authenticode(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from tsmr.cli.main import app

    path = SHIM / "shimx64.efi.signed"
    need_bytes(path)
    runner = CliRunner()
    res = runner.invoke(app, ["authenticode", str(path)])
    assert res.exit_code == 0, res.output
    assert bytes.fromhex(res.output.strip()) == pesign_hash(path, "sha256")
    res = runner.invoke(app, ["authenticode", "--alg", "sha1", "--json", str(path)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert bytes.fromhex(doc["digest"]) == pesign_hash(path, "sha1")
    assert doc["alg"] == "sha1" and len(doc["signed_digests"]) == 2
    assert all(s["alg"] == "sha256" and s["matches"] for s in doc["signed_digests"])
    cut = tmp_path / "cut.efi"
    cut.write_bytes(path.read_bytes()[:5000])
    res = runner.invoke(app, ["authenticode", str(cut)])
    assert res.exit_code == 2 and "certificate table" in res.output
    res = runner.invoke(app, ["authenticode", "--alg", "md5", str(path)])
    assert res.exit_code == 2


# --- a real kernel (make test fetches Debian's cloud kernel: the linux_kernel fixture) -------------------


def test_real_kernel_matches_debians_signature_and_pesign(linux_kernel: Path) -> None:
    """Debian signs its kernels: the EFI stub image's digest is the one the signature embeds, and pesign's."""
    import time

    data = linux_kernel.read_bytes()
    start = time.perf_counter()
    image = PeImage.parse(data)
    digest = image.authenticode(HashAlg.SHA256)
    elapsed = time.perf_counter() - start
    assert [(HashAlg.SHA256, digest)] == [(a, d) for a, d in image.signed_digests() if a == HashAlg.SHA256]
    assert digest == pesign_hash(linux_kernel, "sha256")
    assert image.authenticode(HashAlg.SHA1) == pesign_hash(linux_kernel, "sha1")
    # one pass of the hash over ~10 MiB, no copies: far below a second even on a loaded machine
    assert elapsed < 2.0, f"{len(data)} bytes took {elapsed:.2f} s"
