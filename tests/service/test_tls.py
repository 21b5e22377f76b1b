"""``tsmr serve`` over TLS, with a throwaway PKI made here: HTTPS clients, client certificates on admin routes.

The CA, the server certificate (for 127.0.0.1, an IP SAN), a client certificate,
and a second CA that the verifier does not trust (with a client certificate of
its own) are made with ``cryptography`` for this module.  The verifier is a real
``tsmr serve`` process with two workers (the TLS settings reach the workers
through the environment), and the clients are the real commands and httpx.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import ADMIN_TOKEN, SERVE, Emulator, Server, admin_headers


# -- a throwaway PKI -------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tsmr tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: bytes | None = None) -> Path:
    encryption = (serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    path.chmod(0o600)
    return path


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
          | None, *, ca: bool = False, san_ip: str | None = None,
          usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
    if issuer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
                            critical=False)
    if san_ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
                            critical=False)
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(signer, hashes.SHA256())


class Pki:
    """PEM files of a CA, its server and client certificates, and of a second CA the verifier does not trust."""

    def __init__(self, d: Path) -> None:
        def pem(cert: x509.Certificate, name: str) -> Path:
            (d / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            return d / name

        ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _cert("tsmr test CA", ca_key, None, ca=True)
        other = _cert("an untrusted CA", other_key, None, ca=True)
        server_key, client_key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
        self.ca = pem(ca, "ca.pem")
        self.other_ca = pem(other, "other-ca.pem")
        self.server_cert = pem(_cert("127.0.0.1", server_key, (ca, ca_key), san_ip="127.0.0.1",
                                     usage=ExtendedKeyUsageOID.SERVER_AUTH), "server.pem")
        self.server_key = _write_key(server_key, d / "server-key.pem")
        self.client_cert = pem(_cert("operator", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH),
                               "client.pem")
        self.client_key = _write_key(client_key, d / "client-key.pem")
        self.stranger_cert = pem(_cert("operator", stranger_key, (other, other_key),
                                       usage=ExtendedKeyUsageOID.CLIENT_AUTH), "stranger.pem")
        self.stranger_key = _write_key(stranger_key, d / "stranger-key.pem")
        # for the startup checks: a key of another certificate, an encrypted key, a file that is not PEM
        self.wrong_key = _write_key(client_key, d / "wrong-key.pem")
        self.encrypted_key = _write_key(server_key, d / "encrypted-key.pem", password=b"secret")
        self.not_pem = d / "not.pem"
        self.not_pem.write_text("not a certificate\n")

    def context(self, *, cert: Path | None = None, key: Path | None = None, ca: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca or self.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki, emulator: Emulator) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("tls-serve")
    srv = Server(d, database=f"sqlite:///{d / 'v.db'}", trust_root=emulator.trust_root, workers=2,
                 extra=["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                        "--tls-client-ca", str(pki.ca)],
                 verify=pki.context())
    with srv:
        with srv.client(verify=pki.context(cert=pki.client_cert, key=pki.client_key), headers=admin_headers()) as c:
            r = c.put("/refvals/default", json={"document": {
                "format": "tsmr-refvals", "version": 1, "id": "example-apps",
                "appraisers": {"allowlist": {"rules": [{"domain": "example.com/*"}]}}}})
            assert r.status_code == 201, r.text
        yield srv
        assert '"level":"error"' not in srv.log(), srv.log()


def _tsmr(*args: str, env: dict[str, str] | None = None) -> "subprocess.CompletedProcess[str]":
    base = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    return subprocess.run([sys.executable, "-m", "tsmr", *args], capture_output=True, text=True, timeout=120,
                          env={**base, **(env or {})})


# -- the commands over https ----------------------------------------------------------------------

def test_challenge_attest_and_ear_verify_over_https(tls_server: Server, pki: Pki, emulator: Emulator,
                                                   tmp_path: Path) -> None:
    url = tls_server.url
    assert url.startswith("https://127.0.0.1:")
    r = _tsmr("challenge", "--verifier", url, "--cacert", str(pki.ca), "--json")
    assert r.returncode == 0, r.stderr
    nonce = json.loads(r.stdout)["nonce"]
    out = tmp_path / "ear.jwt"
    r = _tsmr("attest", "--nonce", nonce, "--verifier", url, "--cacert", str(pki.ca), "--backend", "emulated:tdx",
              "--state-dir", str(emulator.state), "--log-dir", str(emulator.log_dir), "--ear", str(out), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    body = json.loads(r.stdout)
    assert body["status"] == "affirming" and body["nonce"] == nonce
    jwks = url + "/.well-known/jwks.json"
    r = _tsmr("ear", "verify", str(out), "--jwks", jwks, "--cacert", str(pki.ca), "--nonce", nonce,
              "--require", "affirming")
    assert r.returncode == 0, r.stdout + r.stderr
    # $TSMR_CACERT instead of the option, and attest asking for its own nonce
    r = _tsmr("attest", "--verifier", url, "--backend", "emulated:tdx", "--state-dir", str(emulator.state),
              "--log-dir", str(emulator.log_dir), "--json", env={"TSMR_CACERT": str(pki.ca)})
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "affirming", r.stdout + r.stderr
    # the result is stored as the plain-HTTP one would be
    with tls_server.client() as c:
        assert c.get(f"/results/{body['id']}").json()["nonce"] == nonce
        # the file `tsmr attest -o` writes is the body, byte for byte (curl --data-binary @bundle.json)
        nonce = c.post("/challenge").json()["nonce"]
        bundle = tmp_path / "bundle.json"
        r = _tsmr("attest", "--nonce", nonce, "-o", str(bundle), "--backend", "emulated:tdx",
                  "--state-dir", str(emulator.state), "--log-dir", str(emulator.log_dir))
        assert r.returncode == 0, r.stderr
        r = c.post("/attest", content=bundle.read_bytes(), headers={"Content-Type": "application/json"})
        assert r.status_code == 201 and r.json()["status"] == "affirming", r.text


def test_curl_as_the_readme_shows(tls_server: Server, pki: Pki, emulator: Emulator, tmp_path: Path) -> None:
    """The README's curl lines: a bundle file as the body; an admin request with a client certificate."""
    from conftest import need_tool

    curl = need_tool("curl", "curl")
    with tls_server.client() as c:
        nonce = c.post("/challenge").json()["nonce"]
    bundle = tmp_path / "bundle.json"
    assert _tsmr("attest", "--nonce", nonce, "-o", str(bundle), "--backend", "emulated:tdx", "--state-dir",
                 str(emulator.state), "--log-dir", str(emulator.log_dir)).returncode == 0

    def run(*args: str) -> tuple[int, dict[str, object]]:
        r = subprocess.run([curl, "-sS", "--cacert", str(pki.ca), "-w", "\n%{http_code}", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        body, _, status = r.stdout.rpartition("\n")
        return int(status), json.loads(body)

    status, doc = run("--data-binary", f"@{bundle}", "-H", "Content-Type: application/json", tls_server.url + "/attest")
    assert status == 201 and doc["status"] == "affirming", doc
    token = ["-H", f"Authorization: Bearer {ADMIN_TOKEN}"]
    status, doc = run(*token, tls_server.url + "/policies")
    assert (status, doc["error"]) == (403, "admin.client-certificate-required")
    status, doc = run("--cert", str(pki.client_cert), "--key", str(pki.client_key), *token, tls_server.url + "/policies")
    assert status == 200 and "items" in doc, doc


@pytest.mark.parametrize("command", ["challenge", "attest", "ear"])
def test_a_verifier_certificate_from_another_ca_is_refused(tls_server: Server, pki: Pki, emulator: Emulator,
                                                          tmp_path: Path, command: str) -> None:
    url = tls_server.url
    ear = tmp_path / "x.jwt"
    ear.write_text("x.y.z\n")
    args = {"challenge": ["challenge", "--verifier", url],
            "attest": ["attest", "--verifier", url, "--backend", "emulated:tdx", "--state-dir", str(emulator.state),
                       "--log-dir", str(emulator.log_dir)],
            "ear": ["ear", "verify", str(ear), "--jwks", url + "/.well-known/jwks.json"]}[command]
    for extra in (["--cacert", str(pki.other_ca)], []):  # the wrong CA; the system's CAs (which never issued it)
        r = _tsmr(*args, *extra)
        assert r.returncode == 3, (extra, r.returncode, r.stdout + r.stderr)
        assert "certificate is not trusted" in r.stderr and "--cacert" in r.stderr, r.stderr
    # a --cacert that is not a CA certificate is bad input, said before any connection
    r = _tsmr(*args, "--cacert", str(pki.not_pem))
    assert r.returncode == 2 and "not PEM CA certificates" in r.stderr, r.stderr


# -- client certificates ---------------------------------------------------------------------------

def test_admin_routes_need_a_client_certificate(tls_server: Server, pki: Pki, emulator: Emulator) -> None:
    with tls_server.client() as anonymous:  # no client certificate: the public routes work
        assert anonymous.get("/healthz").status_code == 200
        nonce = anonymous.post("/challenge").json()["nonce"]
        # the admin token alone is not enough, on every admin route
        for method, path in (("GET", "/policies"), ("GET", "/refvals"), ("GET", "/tpm-aks"),
                             ("PUT", "/policies/p"), ("DELETE", "/refvals/default")):
            for headers in (admin_headers(), {}):
                r = anonymous.request(method, path, headers=headers, json={"rego": "package tsmr\n"})
                assert r.status_code == 403, (method, path, r.text)
                assert r.json()["error"] == "admin.client-certificate-required", r.text
        # nor for choosing a policy on /attest; refused before the nonce is spent
        r = anonymous.post("/attest", json=emulator.bundle(nonce), params={"refvals": "default-x"},
                           headers=admin_headers())
        assert r.status_code == 403 and r.json()["error"] == "refvals.selection-forbidden", r.text
        assert "client certificate" in r.json()["detail"]
        r = anonymous.post("/attest", json=emulator.bundle(nonce))  # the same nonce, still unspent
        assert r.status_code == 201 and r.json()["status"] == "affirming", r.text
    certified = pki.context(cert=pki.client_cert, key=pki.client_key)
    with tls_server.client(verify=certified) as operator:
        r = operator.get("/refvals", headers=admin_headers())
        assert r.status_code == 200 and [i["name"] for i in r.json()["items"]] == ["default"], r.text
        for _ in range(4):  # each worker: the client CA reached both through the environment
            assert operator.get("/policies", headers=admin_headers()).status_code == 200
        r = operator.get("/policies")  # the certificate is not enough either: the token is still needed
        assert r.status_code == 401 and r.json()["error"] == "auth.required", r.text
        r = operator.get("/policies", headers={"Authorization": "Bearer " + "x" * len(ADMIN_TOKEN)})
        assert r.status_code == 401 and r.json()["error"] == "auth.invalid"


def _raw_get(server: Server, ctx: ssl.SSLContext) -> bytes:
    """GET /healthz on a bare TLS socket: the first bytes of the answer (b"" when the server closed instead)."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return tls.recv(64)


def test_a_client_certificate_from_an_untrusted_ca_is_refused_in_the_handshake(tls_server: Server, pki: Pki) -> None:
    stranger = pki.context(cert=pki.stranger_cert, key=pki.stranger_key)
    with tls_server.client(verify=stranger) as c, pytest.raises(httpx.TransportError):
        c.get("/healthz")  # even a public route: the connection never gets that far
    # the same request on a bare socket: the trusted certificate gets an answer, the stranger's none
    assert _raw_get(tls_server, pki.context(cert=pki.client_cert, key=pki.client_key)).startswith(b"HTTP/1.1 200")
    assert _raw_get(tls_server, pki.context()).startswith(b"HTTP/1.1 200")  # no certificate: fine on public routes
    try:
        answer = _raw_get(tls_server, stranger)
    except (ssl.SSLError, ConnectionError):  # TLS 1.3: the client may already be sending when the server refuses
        answer = b""
    assert answer == b""
    # TLS 1.2, where the client's certificate is checked before the handshake ends: the handshake itself fails
    stranger.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw_get(tls_server, stranger)


# -- startup refusals ------------------------------------------------------------------------------

def _serve(tmp_path: Path, *tls: str) -> "subprocess.CompletedProcess[str]":
    base = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    return subprocess.run([sys.executable, SERVE, "serve", "--port", "0", "--database",
                           f"sqlite:///{tmp_path / 'v.db'}", "--state-dir", str(tmp_path / "state"), *tls],
                          capture_output=True, text=True, timeout=120, env=base)


def test_tls_files_that_do_not_load_are_refused_at_startup(tmp_path: Path, pki: Pki) -> None:
    cert, key = str(pki.server_cert), str(pki.server_key)
    for args, words in (
        (["--tls-cert", cert, "--tls-key", str(pki.wrong_key)], "do not load together"),
        (["--tls-cert", cert, "--tls-key", str(pki.encrypted_key)], "is encrypted"),
        (["--tls-cert", cert, "--tls-key", str(tmp_path / "missing.pem")], "cannot read"),
        (["--tls-cert", str(pki.not_pem), "--tls-key", key], "do not load together"),
        (["--tls-cert", cert], "both a certificate and its key"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(pki.not_pem)], "client CA"),
    ):
        r = _serve(tmp_path, *args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "v.db").exists()  # refused before anything was created
    help_text = _serve(tmp_path, "--help").stdout
    assert "--tls-cert" in help_text and "--tls-client-ca" in help_text and "client-certificate-required" in help_text
