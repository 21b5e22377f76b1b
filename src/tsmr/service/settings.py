"""The verifier's settings: from keyword arguments, or from ``TSMR_*`` environment variables.

Worker processes started by uvicorn get their settings from the environment
(:meth:`Settings.from_env`), which ``tsmr serve`` fills in from its options;
the admin token travels as a file path when it came from a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..system.inputs import read_input
from ..system.trust import load_anchors, read_file
from ..version import __version__
from ..evidence.limits import ENV as LIMITS_ENV, Limits
from .db import default_state_dir, default_url

__all__ = ["Settings", "ENV"]

MiB = 1 << 20

# Settings field -> environment variable.
ENV = {
    "database_url": "TSMR_DATABASE_URL",
    "state_dir": "TSMR_STATE_DIR",
    "key_path": "TSMR_EAR_KEY",
    "key_alg": "TSMR_EAR_ALG",
    "publish_keys": "TSMR_EAR_PUBLISH",
    "admin_token": "TSMR_ADMIN_TOKEN",
    "admin_token_file": "TSMR_ADMIN_TOKEN_FILE",
    "trust_root": "TSMR_TRUST_ROOT",
    "collateral": "TSMR_COLLATERAL",
    "cpak": "TSMR_CPAK",
    "snp_ark": "TSMR_SNP_ARK",
    "snp_ask": "TSMR_SNP_ASK",
    "snp_vcek": "TSMR_SNP_VCEK",
    "snp_crl": "TSMR_SNP_CRL",
    "pccs_url": "TSMR_PCCS_URL",
    "kds_url": "TSMR_KDS_URL",
    "kds_product": "TSMR_KDS_PRODUCT",
    "fetch_timeout": "TSMR_FETCH_TIMEOUT",
    "collateral_cacert": "TSMR_COLLATERAL_CACERT",
    "collateral_refresh": "TSMR_COLLATERAL_REFRESH",
    "allow_debug": "TSMR_ALLOW_DEBUG",
    "require_refvals": "TSMR_REQUIRE_REFVALS",
    "tpm_ak": "TSMR_TPM_AK",
    "tpm_ca": "TSMR_TPM_CA",
    "challenge_ttl": "TSMR_CHALLENGE_TTL",
    "max_attest_bytes": "TSMR_MAX_ATTEST_BYTES",
    "max_body_bytes": "TSMR_MAX_BODY_BYTES",
    # What one bundle may ask of the appraisal (tsmr.evidence.limits.Limits; same variables as the CLI).
    **LIMITS_ENV,
    "json_logs": "TSMR_JSON_LOGS",
    "log_level": "TSMR_LOG_LEVEL",
    "migrate": "TSMR_MIGRATE",
    "metrics_dir": "TSMR_METRICS_DIR",
    "policy": "TSMR_POLICY",
    "refvals": "TSMR_REFVALS",
    "challenge_rate": "TSMR_CHALLENGE_RATE",
    "challenge_burst": "TSMR_CHALLENGE_BURST",
    "tls_cert": "TSMR_TLS_CERT",
    "tls_key": "TSMR_TLS_KEY",
    "tls_client_ca": "TSMR_TLS_CLIENT_CA",
}


@dataclass(frozen=True)
class Settings:
    """Everything :func:`tsmr.service.app.create_app` needs.

    Trust anchors are paths: ``trust_root`` (TDX root CA, PEM, instead of Intel's),
    ``collateral`` (TDX PCCS-style collateral JSON), ``cpak`` (CCA platform key,
    PEM or JWK), ``snp_ark`` / ``snp_ask`` / ``snp_vcek`` (SEV-SNP certificates), ``snp_crl``
    (AMD's CRL for the product, signed by the ARK).
    """

    database_url: str | None = None  # default: sqlite:///<state dir>/verifier.db
    state_dir: str | None = None  # default: $TSMR_STATE_DIR or ~/.local/state/tsmr
    key_path: str | None = None  # default: <state dir>/ear-key.pem
    key_alg: str = "ES256"
    # More keys for the JWKS, besides the signing key: files (PEM or JWK) separated by os.pathsep.
    # A retired key stays published while its results are in use; a new one can be published
    # before it signs, so relying parties hold it when the switch happens.
    publish_keys: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    admin_token_file: str | None = None
    trust_root: str | None = None
    collateral: str | None = None
    cpak: str | None = None
    snp_ark: str | None = None
    snp_ask: str | None = None
    snp_vcek: str | None = None
    snp_crl: str | None = None  # AMD's CRL (DER or PEM), signed by the ARK
    # Collateral fetched for the evidence and cached in the database (tsmr.system.collateral): TDX from a PCCS
    # or Intel PCS base URL, SEV-SNP from AMD KDS or a mirror.  Files given above take precedence over the
    # cache, the cache over a fetch.  `fetch_timeout` bounds one HTTP request (seconds); every
    # `collateral_refresh` seconds each worker refreshes the cached documents that are due, ahead of expiry.
    pccs_url: str | None = None
    kds_url: str | None = None
    kds_product: str | None = None  # SEV-SNP product name for KDS URLs when the report does not say (e.g. Milan)
    fetch_timeout: float = 10.0
    collateral_cacert: str | None = None  # CA certificates (PEM) for an https PCCS / KDS, instead of the system's
    collateral_refresh: float = 300.0
    # Accept debuggable guests (TDX DEBUG, SEV-SNP policy DEBUG, CCA not secured); they are
    # refused otherwise, and even when accepted every result says so (evidence.debug-allowed).
    allow_debug: bool = False
    # A signed register that holds a measurement and that the reference values do not cover makes a
    # result contraindicated instead of a warning (refvals.uncovered; tsmr.appraisal.coverage).
    require_refvals: bool = False
    # TPM: enrolled attestation keys, and CAs that AK certificates must chain to (files, os.pathsep-separated).
    tpm_ak: str | None = None
    tpm_ca: str | None = None
    challenge_ttl: float = 300.0  # seconds a nonce stays usable
    max_attest_bytes: int = 16 * MiB
    max_body_bytes: int = 1 * MiB
    # Bundle limits and the appraisal's time budget: the defaults of tsmr.evidence.limits.Limits
    # (0 switches one off).  Over a size limit, POST /attest answers 413 before the nonce is spent.
    max_logs: int = Limits.max_logs
    max_records: int = Limits.max_records
    max_log_records: int = Limits.max_log_records
    max_record_bytes: int = Limits.max_record_bytes
    max_runtime_events: int = Limits.max_runtime_events
    time_budget: float = Limits.time_budget
    json_logs: bool = False
    log_level: str = "INFO"
    migrate: bool = True  # run the migrations at startup
    metrics_dir: str | None = None  # shared by the workers of one `tsmr serve --workers N`
    # The stored policy and reference values every attestation is appraised with.  The verifier
    # decides them, never the attester: a request may name others only with the admin token.
    policy: str = "default"
    refvals: str = "default"
    # POST /challenge per client address and worker: a token bucket of `challenge_burst` nonces
    # refilled at `challenge_rate` per second (0 turns the limit off).
    challenge_rate: float = 5.0
    challenge_burst: int = 30
    # TLS (PEM files): the server's certificate chain and key; with a client CA, clients may present a
    # certificate it issued, and the admin endpoints require one (besides the admin token).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    verifier_developer: str = "tsmr"
    verifier_build: str | None = None  # default: "tsmr <version>"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            kind = str(types[name])
            if "bool" in kind:
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif kind.startswith("int"):
                values[name] = _number(int, raw, var)
            elif kind.startswith("float"):
                values[name] = _number(float, raw, var)
            else:
                values[name] = raw
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` give these settings back (the token as its file, if any)."""
        out: dict[str, str] = {}
        for name, var in ENV.items():
            value = getattr(self, name)
            if value is None or (name == "admin_token" and self.admin_token_file):
                continue
            out[var] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out

    def resolved(self) -> "Settings":
        """Defaults filled in: the state directory, the database URL and the key path."""
        state = Path(self.state_dir) if self.state_dir else default_state_dir()
        return replace(self, state_dir=str(state), database_url=self.database_url or default_url(state),
                       key_path=self.key_path or str(state / "ear-key.pem"))

    def published_keys(self) -> list[Any]:
        """The public keys of ``publish_keys``, read and checked."""
        from ..appraisal import ear
        out: list[Any] = []
        for path in filter(None, (self.publish_keys or "").split(os.pathsep)):
            out.extend(ear.load_public_keys(read_file(path, "the EAR key to publish"), what=path))
        return out

    def read_admin_token(self) -> str | None:
        """The admin token (from the settings, else from its file); None means no admin endpoints."""
        if self.admin_token:
            return _strong_token(self.admin_token, "the admin token ($TSMR_ADMIN_TOKEN)")
        if not self.admin_token_file:
            return None
        raw = read_input(self.admin_token_file, "the admin token file", limit=64 << 10)
        try:
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InputError(f"the admin token file {self.admin_token_file} is not UTF-8 text") from None
        return _strong_token(token, f"the admin token in {self.admin_token_file}")

    def limits(self) -> Any:
        """The appraisal limits these settings give (a :class:`tsmr.evidence.limits.Limits`)."""
        from ..evidence.limits import Limits

        return Limits(max_logs=self.max_logs, max_records=self.max_records, max_log_records=self.max_log_records,
                      max_record_bytes=self.max_record_bytes, max_runtime_events=self.max_runtime_events,
                      time_budget=self.time_budget)

    def trust_anchors(self) -> Any:
        """The :class:`~tsmr.evidence.TrustAnchors` the trust settings name, read from their files."""
        return load_anchors(trust_root=self.trust_root, collateral=self.collateral, vcek=self.snp_vcek,
                            ask=self.snp_ask, ark=self.snp_ark, cpak=self.cpak, crl=self.snp_crl,
                            tpm_ak=list(filter(None, (self.tpm_ak or "").split(os.pathsep))),
                            tpm_ca=list(filter(None, (self.tpm_ca or "").split(os.pathsep))))

    def check_collateral(self) -> None:
        """Refuse collateral settings that cannot work, with one sentence (before any worker starts)."""
        from ..evidence.anchors import TrustAnchors
        from ..system.collateral import Fetcher

        if not (0 < self.fetch_timeout <= 600):
            raise InputError("the collateral fetch timeout must be more than 0 and at most 600 s, "
                             f"not {self.fetch_timeout}")
        if not (0 < self.collateral_refresh <= 86400):
            raise InputError("the collateral refresh interval must be more than 0 and at most 86400 s, "
                             f"not {self.collateral_refresh}")
        if self.kds_url and not self.snp_ark:
            raise InputError("--kds needs the pinned AMD root key (--ark): a fetched ARK is never trusted by itself")
        if self.kds_product is not None and \
                self.kds_product.split("-", 1)[0].strip().capitalize() not in ("Milan", "Genoa", "Turin"):
            raise InputError(f"unknown SEV-SNP product {self.kds_product!r} for --kds-product "
                             "(products: Milan, Genoa, Turin)")
        if self.pccs_url or self.kds_url:  # the fetcher checks its URLs
            Fetcher(pccs_url=self.pccs_url, kds_url=self.kds_url, timeout=self.fetch_timeout, trust=TrustAnchors(),
                    cafile=self.collateral_cacert)

    def build(self) -> str:
        if self.verifier_build:
            return self.verifier_build
        return f"tsmr {__version__}"


MIN_TOKEN_BYTES = 32  # 256 bits if random: out of reach of guessing through the API


def _strong_token(token: str, what: str) -> str:
    if len(token.encode("utf-8", "surrogateescape")) < MIN_TOKEN_BYTES:
        raise InputError(f"{what} is shorter than {MIN_TOKEN_BYTES} bytes: use e.g. `openssl rand -hex 32`")
    return token


def _number(kind: type, raw: str, var: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise InputError(f"{var}={raw!r} is not a number") from None


