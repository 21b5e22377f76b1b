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
