"""Bundles to appraise: the go-tdx-guest matched set, the emulator's TDX quotes with runtime logs."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from tsmr.evidence import TrustAnchors
from tsmr.evidence.bundle import make_bundle

WHEN = datetime(2025, 6, 1, tzinfo=timezone.utc)  # inside the go-tdx-guest collateral's validity
NOW = datetime.now(timezone.utc)  # the emulator's certificates are made when first needed
COCO = "github.com/confidential-containers"
ALPINE_DIGEST = "sha256:" + "0c" * 32


def tdx_bundle(fixtures: Path, *, ccel: bytes | None = None, quote: bytes | None = None) -> tuple[dict[str, Any], bytes]:
    """The go-tdx-guest quote, its CCEL and its nonce, as a bundle; and the nonce."""
    d = fixtures / "go-tdx-guest/ccel"
    nonce = (d / "nonce.dat").read_bytes()
    doc = make_bundle(nonce=nonce, evidence={"kind": "tdx", "data": quote or (d / "cos-113-tdx-quote.dat").read_bytes()},
                      logs=[{"format": "ccel", "data": ccel or (d / "ccel_data.dat").read_bytes(), "name": "CCEL"}])
    return doc, nonce


def replace_in_log(doc: dict[str, Any], old: bytes, new: bytes, index: int = -1) -> dict[str, Any]:
    """A copy of the bundle whose log number ``index`` has ``old`` replaced by ``new``."""
    out = dict(doc, logs=[dict(lg) for lg in doc["logs"]])
    data = base64.b64decode(out["logs"][index]["data"])
    assert old in data
    out["logs"][index]["data"] = base64.b64encode(data.replace(old, new)).decode()
    return out


@dataclass
class EmulatedTDX:
    """An emulated TDX guest with a runtime log on RTMR3; :meth:`bundle` attests it."""

    rs: Any
    log: Any
    state: Path
    trust: TrustAnchors = field(default_factory=TrustAnchors)

    def append(self, *records: str) -> None:
        self.log.append_many(list(records))

    def bundle(self, nonce: bytes) -> dict[str, Any]:
        from cryptography import x509

        from tsmr.system.acquire import acquire

        got = acquire(nonce, backend="emulated:tdx", state_dir=str(self.state))
        from emulated_collateral import collateral
        from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner

        root = self.state / "emulator" / "tdx" / "qe" / "root.pem"
        # The emulator's collateral (UpToDate): without collateral the result would only be a warning.
        self.trust = TrustAnchors(tdx_root=x509.load_pem_x509_certificate(root.read_bytes()),
                                  tdx_collateral=collateral(EmulatedTDXSigner(root.parent)))
        return make_bundle(nonce=nonce, evidence=got.evidence,
                           logs=[{"format": "tsmr", "register": "rtmr3", "data": self.log.read(), "name": "rtmr3.log"}])


@pytest.fixture
def emulated_tdx(state_dir: Path, tmp_path: Path) -> Iterator[EmulatedTDX]:
    from tsmr.backends.emulated import EmulatedRegisterSet
    from tsmr.runtime_log.store import RuntimeLog

    with EmulatedRegisterSet("tdx", state_dir) as rs, RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs") as log:
        yield EmulatedTDX(rs, log, state_dir)


def swtpm_runtime_bundle(tmp_path: Path, nonce: bytes, records: list[str], pcrs: list[int], *,
                         unlogged_pcr9: bool = False) -> tuple[dict[str, Any], TrustAnchors, bytes]:
    """A real swtpm quote of ``pcrs`` with a runtime log of ``records`` on PCR 16.

    With ``unlogged_pcr9`` PCR 9 is also extended, in every bank, with no log.  Returns the
    bundle, the trust (the quote's own AK, enrolled) and the log's bytes.  Skips without swtpm
    and tpm2-pytss (``make test`` installs both).
    """
    pytest.importorskip("tpm2_pytss")
    from swtpm import Swtpm

    if not Swtpm.available():
        pytest.skip("swtpm not installed (make test installs it)")
    from tsmr.backends.tpm import TpmRegisterSet
    from tsmr.evidence.tpm import load_ak_anchor
    from tsmr.runtime_log.store import RuntimeLog
    from tsmr.system.acquire import acquire

    with Swtpm() as tpm:
        with TpmRegisterSet(tpm.tcti) as rs, RuntimeLog(rs, "pcr16", log_dir=tmp_path) as log:
            log.append_many(records)
            data = log.read()
            if unlogged_pcr9:
                rs.extend("pcr9", {alg: alg.hash(b"a measurement without a log") for alg in rs.read("pcr9")})
        got = acquire(nonce, backend=f"tpm:{tpm.tcti}", pcrs=pcrs)
    doc = make_bundle(nonce=nonce, evidence=got.evidence, logs=[{"format": "tsmr", "register": "pcr16", "data": data}])
    return doc, TrustAnchors(tpm_aks=[load_ak_anchor(bytes.fromhex(got.evidence["ak_public"]))]), data


def emulated_realm_bundle(state_dir: Path, tmp_path: Path, nonce: bytes, records: list[str], *,
                          rim: bytes | None = None) -> tuple[dict[str, Any], TrustAnchors, bytes]:
    """An emulated CCA realm's token with a runtime log of ``records`` on REM3 (and ``rim`` set at launch).

    Returns the bundle, the trust (the emulator's platform key, named explicitly) and the log's bytes.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from tsmr.backends.emulated import EmulatedRegisterSet, initialise
    from tsmr.runtime_log.store import RuntimeLog
    from tsmr.system.acquire import acquire

    if rim is not None:
        initialise("cca", state_dir=state_dir, values={"rim": rim})  # a launch value, as a realm has
    with EmulatedRegisterSet("cca", state_dir) as rs, RuntimeLog(rs, "rem3", log_dir=tmp_path) as log:
        log.append_many(records)
        data = log.read()
    got = acquire(nonce, backend="emulated:cca", state_dir=str(state_dir))
    assert got.trust_anchor is not None
    trust = TrustAnchors(cca_cpak=load_pem_public_key(Path(got.trust_anchor).read_bytes()))
    doc = make_bundle(nonce=nonce, evidence=got.evidence, logs=[{"format": "tsmr", "register": "rem3", "data": data}])
    return doc, trust, data
