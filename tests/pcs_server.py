"""A loopback Intel PCS / PCCS and AMD KDS for tests: real HTTP on 127.0.0.1, real response shapes.

Usage::

    server = PcsServer.from_fixtures(FIXTURES.root).start()   # or PcsServer() and add_* calls
    try:
        fetcher = Fetcher(pccs_url=server.url, kds_url=server.url, trust=anchors, timeout=1)
        ...
        assert server.counts["/tdx/certification/v4/tcb"] == 1
    finally:
        server.stop()

``PcsServer(tls=context)`` serves https (an ``ssl.SSLContext`` for the server side); or the
``pcs_server`` pytest fixture (tests/integration/test_collateral_fetch.py), which
starts one per test and stops it afterwards.

What it serves (Intel PCS API v4 shapes, as a PCCS serves them too, and AMD KDS):

* ``GET /tdx/certification/v4/tcb?fmspc=HEX``: the ``{"tcbInfo": ..., "signature": ...}``
  body, header ``TCB-Info-Issuer-Chain`` (URL-encoded PEM); 404 for an unknown FMSPC;
* ``GET /tdx/certification/v4/qe/identity``: header ``SGX-Enclave-Identity-Issuer-Chain``;
* ``GET /sgx/certification/v4/pckcrl?ca=platform|processor``: the CRL (DER), header
  ``SGX-PCK-CRL-Issuer-Chain``; 404 for a CA it has no CRL of;
* ``GET /sgx/certification/v4/rootcacrl``: the root CA CRL as PCCS serves it, hex text of the DER;
* ``GET /vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..``: the VCEK (DER);
  404 for an unknown chip or TCB;
* ``GET /vcek/v1/{product}/cert_chain``: ASK then ARK (PEM).

``counts`` counts requests per path (without the query); ``requests`` lists them in order.
``mode`` switches the server, per test, into a fault:

* ``"ok"``: as above;
* ``"down"``: the listening socket is closed (connections are refused); back to ``"ok"``
  listens on the same port again;
* ``"slow"``: every answer waits ``slow_seconds`` first (past a client's timeout);
* ``"garbage"``: bodies are bytes that are no document (headers as usual);
* ``"bad-signature"``: one byte of each document's signature is flipped;
* ``"wrong-fmspc"``: a TCB info request gets the document of another FMSPC it has (valid,
  signed, for the wrong platform);
* ``"redirect"``: every answer is a 302 to the same path on another host name (``localhost``);
* ``"huge"``: every body is 2 MiB of zeros (past a client's size bound);
* ``"trickle"``: the body is sent one byte every ``slow_seconds / 10`` (each read is quick, the whole is not).
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

MODES = ("ok", "down", "slow", "garbage", "bad-signature", "wrong-fmspc", "redirect", "huge", "trickle")
GARBAGE = b"\x00not a document\xff" * 8

TCB_PATH = "/tdx/certification/v4/tcb"
QE_PATH = "/tdx/certification/v4/qe/identity"
PCKCRL_PATH = "/sgx/certification/v4/pckcrl"
ROOTCRL_PATH = "/sgx/certification/v4/rootcacrl"


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (a port bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _flip_json_signature(body: bytes) -> bytes:
    doc = json.loads(body)
    sig = doc["signature"]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    return body.replace(f'"{sig}"'.encode(), f'"{flipped}"'.encode())


def _flip_last(der: bytes) -> bytes:
    """DER with the last byte (inside the signature BIT STRING, at the end) changed."""
    return der[:-1] + bytes([der[-1] ^ 0x01])


def _flip_pem(pem: bytes) -> bytes:
    """The first certificate of a PEM chain with one signature byte flipped; the rest as is."""
    certs = x509.load_pem_x509_certificates(pem)
    first = _flip_last(certs[0].public_bytes(serialization.Encoding.DER))
    out = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(first) + b"-----END CERTIFICATE-----\n"
    return out + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:])


class PcsServer:
    """The server: documents registered with the ``add_*`` / ``set_*`` methods, served once started."""

    def __init__(self, *, tls: Any = None) -> None:
        self.tls = tls  # an ssl.SSLContext (server side): serve https instead of http
        self.tcb: dict[str, tuple[bytes, bytes]] = {}  # fmspc -> (response body, issuer chain PEM)
        self.qe: tuple[bytes, bytes] | None = None
        self.pckcrl: dict[str, tuple[bytes, bytes]] = {}  # ca -> (CRL DER, issuer chain PEM)
        self.rootcrl: bytes | None = None  # DER; served as hex
        self.vcek: dict[tuple[str, str, str], bytes] = {}  # (product, hwid hex, sorted query) -> DER
        self.chains: dict[str, bytes] = {}  # product -> PEM (ASK, ARK)
        self.counts: Counter[str] = Counter()
        self.requests: list[str] = []
        self.slow_seconds = 3.0
        self._mode = "ok"
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- content

    def add_tcb(self, response: bytes, chain: bytes) -> PcsServer:
        """A TCB info response (``{"tcbInfo": ..., "signature": ...}``), served at its own FMSPC."""
        fmspc = str(json.loads(response)["tcbInfo"]["fmspc"]).lower()
        self.tcb[fmspc] = (response, chain)
        return self

    def set_qe(self, response: bytes, chain: bytes) -> PcsServer:
        self.qe = (response, chain)
        return self

    def set_pckcrl(self, ca: str, crl: bytes, chain: bytes) -> PcsServer:
        self.pckcrl[ca] = (crl, chain)
        return self

    def set_rootcrl(self, der: bytes) -> PcsServer:
        self.rootcrl = der
        return self

    def add_vcek(self, product: str, der: bytes) -> PcsServer:
        """A VCEK, served at the URL of its own hwID and TCB (read from its extensions)."""
        from tsmr.evidence import snp

        cert = x509.load_der_x509_certificate(der)
        hwid = snp._vcek_hwid(cert)
        assert hwid is not None, "a VCEK has a hwID"
        tcb = snp.vcek_tcb(cert)
        if len(hwid) != 8:
            tcb.pop("fmcSPL", None)
        self.vcek[(product, hwid.hex(), urllib.parse.urlencode(sorted((k, str(v)) for k, v in tcb.items())))] = der
        return self

    def set_chain(self, product: str, pem: bytes) -> PcsServer:
        self.chains[product] = pem
        return self

    @classmethod
    def from_fixtures(cls, root: Path | str, *, tls: Any = None) -> PcsServer:
        """The go-tdx-guest collateral (FMSPCs 50806f000000 and 90c06f000000, QE identity, platform PCK
        CRL, root CA CRL; valid around 2023-06/07) and the go-sev-guest Milan VCEK and cert_chain."""
        root = Path(root)
        tdx, sev = root / "go-tdx-guest", root / "go-sev-guest"
        tcb_chain = (tdx / "tcbinfo_issuer_chain.pem").read_bytes()
        server = cls(tls=tls)
        server.add_tcb((tdx / "sample_tcbInfo_response").read_bytes(), tcb_chain)
        server.add_tcb((tdx / "sample_tcbinfo_response_v5").read_bytes(), tcb_chain)
        server.set_qe((tdx / "sample_qeIdentity_response").read_bytes(),
                      (tdx / "qeidentity_issuer_chain.pem").read_bytes())
        server.set_pckcrl("platform", (tdx / "pckcrl").read_bytes(), (tdx / "pckcrl_issuer_chain.pem").read_bytes())
        server.set_rootcrl((tdx / "rootcrl.der").read_bytes())
        server.add_vcek("Milan", (sev / "vcek.testcer").read_bytes())
        server.set_chain("Milan", (sev / "milan.testcer").read_bytes())
        return server

    def add_emulated_tdx(self, signer: Any, **kw: Any) -> PcsServer:
        """The collateral of an emulated TDX platform (``EmulatedTDXSigner``), as PCS would serve it.

        ``kw`` go to ``emulated_collateral`` (status, qe_status, revoked_pck, now, ...).  The
        emulator's PCK CA is served as the ``platform`` CA."""
        from tsmr.backends.emulated_evidence.tdx import emulated_collateral

        doc: dict[str, Any] = emulated_collateral(signer, **kw)
        self.add_tcb(b'{"tcbInfo":' + str(doc["tcb_info"]).encode() + b',"signature":"'
                     + str(doc["tcb_info_signature"]).encode() + b'"}', str(doc["tcb_info_issuer_chain"]).encode())
        if "qe_identity" in doc:
            self.set_qe(b'{"enclaveIdentity":' + str(doc["qe_identity"]).encode() + b',"signature":"'
                        + str(doc["qe_identity_signature"]).encode() + b'"}',
                        str(doc["qe_identity_issuer_chain"]).encode())
        self.set_pckcrl("platform", bytes.fromhex(str(doc["pck_crl"])), str(doc["pck_crl_issuer_chain"]).encode())
        if "root_ca_crl" in doc:
            self.set_rootcrl(bytes.fromhex(str(doc["root_ca_crl"])))
        return self

    def add_emulated_snp(self, signer: Any, product: str = "Milan") -> PcsServer:
        """The VCEK and cert_chain of an emulated SEV-SNP chip (``EmulatedSNPSigner``)."""
        pem = b"".join(x509.load_der_x509_certificate(signer.der(n)).public_bytes(serialization.Encoding.PEM)
                       for n in ("ask", "ark"))
        return self.add_vcek(product, signer.der("vcek")).set_chain(product, pem)

    # -- running

    @property
    def url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode {value!r} is not one of {MODES}")
        was, self._mode = self._mode, value
        if value == "down" and was != "down":
            self._close()
        elif value != "down" and was == "down" and self._thread is not None:
            self._listen(self.port)

    def start(self) -> PcsServer:
        self._listen(0)
        return self

    def _listen(self, port: int) -> None:
        server = self

        class Handler(_Handler):
            pcs = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        if self.tls is not None:
            self._httpd.socket = self.tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"pcs-server-{self.port}", daemon=True)
        self._thread.start()

    def _close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def stop(self) -> None:
        self._close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> PcsServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def count(self, prefix: str) -> int:
        """Requests whose path starts with ``prefix`` (``/vcek/v1/Milan/``)."""
        with self._lock:
            return sum(n for path, n in self.counts.items() if path.startswith(prefix))

    # -- answers

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers) for a GET, in the current mode (not "down", not the delay)."""
        mode = self._mode
        chain_header: tuple[str, bytes] | None = None
        kind = "json"
        if path == TCB_PATH:
            fmspc = query.get("fmspc", "").lower()
            if mode == "wrong-fmspc":
                other = [f for f in self.tcb if f != fmspc]
                if fmspc in self.tcb and other:
                    fmspc = other[0]
            if fmspc not in self.tcb:
                return 404, b"", {}
            body, chain = self.tcb[fmspc]
            chain_header = ("TCB-Info-Issuer-Chain", chain)
        elif path == QE_PATH:
            if self.qe is None:
                return 404, b"", {}
            body, chain = self.qe
            chain_header = ("SGX-Enclave-Identity-Issuer-Chain", chain)
        elif path == PCKCRL_PATH:
            ca = query.get("ca", "").lower()
            if ca not in self.pckcrl:
                return (400 if ca not in ("platform", "processor") else 404), b"", {}
            body, chain = self.pckcrl[ca]
            chain_header = ("SGX-PCK-CRL-Issuer-Chain", chain)
            kind = "der"
        elif path == ROOTCRL_PATH:
            if self.rootcrl is None:
                return 404, b"", {}
            body, kind = self.rootcrl, "hexder"
        elif path.startswith("/vcek/v1/"):
            parts = path[len("/vcek/v1/"):].split("/")
            if len(parts) != 2:
                return 404, b"", {}
            product, what = parts
            if what == "cert_chain":
                if product not in self.chains:
                    return 404, b"", {}
                body, kind = self.chains[product], "pem"
            else:
                spl = urllib.parse.urlencode(sorted(query.items()))
                der = self.vcek.get((product, what.lower(), spl))
                if der is None:
                    return 404, b"", {}
                body, kind = der, "der"
        else:
            return 404, b"", {}
        if mode == "garbage":
            body = GARBAGE
        elif mode == "bad-signature":
            body = {"json": _flip_json_signature, "der": _flip_last, "pem": _flip_pem,
                    "hexder": _flip_last}[kind](body)
        if kind == "hexder" and mode != "garbage":
            body = body.hex().encode()
        headers = {"Content-Type": "application/json" if kind == "json" else "application/octet-stream"}
        if chain_header is not None:
            headers[chain_header[0]] = urllib.parse.quote(chain_header[1].decode())
        return 200, body, headers


class _Handler(BaseHTTPRequestHandler):
    pcs: PcsServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        split = urllib.parse.urlsplit(self.path)
        with self.pcs._lock:
            self.pcs.counts[split.path] += 1
            self.pcs.requests.append(self.path)
        if self.pcs.mode == "slow":
            time.sleep(self.pcs.slow_seconds)
        query = dict(urllib.parse.parse_qsl(split.query))
        status, body, headers = self.pcs.answer(split.path, query)
        if self.pcs.mode == "redirect":
            status, body, headers = 302, b"", {"Location": f"http://localhost:{self.pcs.port}{self.path}"}
        elif self.pcs.mode == "huge" and status == 200:
            body = bytes(2 << 20)
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.pcs.mode == "trickle":
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(self.pcs.slow_seconds / 10)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass
