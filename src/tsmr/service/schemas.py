"""The verifier's request and response bodies (pydantic models), and the checks every JSON body passes.

These shapes are the service's OpenAPI document: :mod:`tsmr.service.app` routes
them, and nothing here touches the database or the appraisal.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Path, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HEX_PATTERN = r"^([0-9a-f]{2})*$"
MAX_JSON_DEPTH = 64  # bundles and reference values nest a handful of levels; this leaves room, and no recursion


# -- models ---------------------------------------------------------------------------------------

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Letters, digits, '.', '_', '-'; at most 128.")]
NamePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=128)]
VersionQuery = Annotated[int | None, Query(ge=1, le=2**31 - 1, description="A version (default: latest).")]
BEARER = HTTPBearer(auto_error=False, description="The admin token (TSMR_ADMIN_TOKEN or --admin-token-file).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def _unicode(text: str) -> None:
    # isascii() is a flag lookup for most strings: only the others are encoded to find a lone surrogate.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise PydanticCustomError("json_not_unicode", "strings must be Unicode text (a lone surrogate "
                                      "escape such as \\ud800 is not)") from None


def check_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse a parsed JSON value nested too deep, or holding what no later step can carry.

    Iterative, so hostile nesting cannot exhaust the stack here; everything after this
    (validation, serialisation, appraisal, storage) recurses and would fail half-way,
    possibly after the nonce was consumed.  ``Infinity`` and ``NaN`` (Python's JSON
    reader accepts them, and ``1e999`` becomes one) are not JSON and PostgreSQL refuses
    them; a lone surrogate (``"\\ud800"``) cannot be written as UTF-8, so no EAR could carry it.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            for key in item:
                if isinstance(key, str):
                    _unicode(key)
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        elif isinstance(item, float) and not math.isfinite(item):
            raise PydanticCustomError("json_not_finite", "numbers must be finite")
        elif isinstance(item, str):
            _unicode(item)
            continue
        else:
            continue
        if depth > max_depth:
            raise PydanticCustomError("json_too_deep", "JSON nested deeper than {limit} levels",
                                      {"limit": max_depth})
        stack.extend((child, depth + 1) for child in children)


class _CheckedBody(BaseModel):
    """A request body whose raw JSON is checked by :func:`check_json` before any validation recurses into it."""

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        check_json(data)
        return data


class ErrorBody(BaseModel):
    error: str = Field(description="A stable dotted error code, e.g. freshness.nonce-reused.")
    detail: Any = Field(None, description="A sentence, or the list of validation errors.")


class ChallengeResponse(BaseModel):
    nonce: str = Field(pattern=HEX_PATTERN, description="32 random bytes, hex: put them in the evidence.")
    expires_at: datetime


class BundleLog(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)
    format: str | None = None
    data: str = Field(description="base64")
    register_: str | None = Field(None, alias="register", description="The register a runtime log belongs to.")
    name: str | None = None


class BundleEvidence(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: Literal["tdx", "snp", "cca", "tpm"]
    data: str | None = Field(None, description="base64 (TDX quote, SNP report, CCA token)")


class Bundle(BaseModel):
    """A tsmr evidence bundle (``tsmr attest`` writes one; see tsmr.evidence.bundle.SCHEMA)."""

    model_config = ConfigDict(extra="allow")
    format: Literal["tsmr-bundle"]
    version: Literal[1]
    nonce: str = Field(pattern=HEX_PATTERN, max_length=256)
    evidence: BundleEvidence
    logs: list[BundleLog] = Field(default_factory=list, max_length=4096)


PolicyQuery = Annotated[Name | None, Query(
    max_length=128, description="Appraise with this stored policy (latest version) instead of the verifier's: "
                                "needs the admin bearer token, else 403 policy.selection-forbidden.")]
RefvalsQuery = Annotated[Name | None, Query(
    max_length=128, description="Appraise with these stored reference values instead of the verifier's: "
                                "needs the admin bearer token, else 403 refvals.selection-forbidden.")]


NodeQuery = Annotated[Name | None, Query(
    max_length=128, description="Attest as this enrolled node: appraised with the node's policy and reference "
                                "values, and its evidence must show the node's identity (else the error finding "
                                "node.identity-mismatch). Cannot be combined with ?policy= / ?refvals= (400).")]


def bundle_schemas() -> dict[str, Any]:
    """The OpenAPI component schemas of the ``POST /attest`` body (``Bundle`` and the models it uses).

    The route reads its body itself (:func:`read_bundle_body`), so FastAPI does not
    see a body model to describe; these schemas are added to the document instead.
    """
    from pydantic.json_schema import models_json_schema

    _, top = models_json_schema([(Bundle, "validation")], ref_template="#/components/schemas/{model}")
    return dict(top.get("$defs", {}))


def load_json(raw: bytes) -> Any:
    """Parse a request body as JSON, quickly, with the standard reader's answers for anything unusual.

    pydantic-core's reader is several times faster than :func:`json.loads` on a
    bundle (long base64 strings), and stricter: it refuses ``NaN``, lone
    surrogates, a BOM and non-UTF-8 text, and nesting past a couple of hundred
    levels.  Only when it refuses is the body read again with :func:`json.loads`,
    so that hostile bodies get the same answers as before: ``RecursionError``
    becomes a ``json_too_deep`` error, :class:`json.JSONDecodeError` means "not
    JSON", another ``ValueError`` a body that cannot be read (e.g. a 5,000-digit
    number), and a value it does read goes on to :func:`check_json`.
    """
    import json

    from pydantic_core import from_json

    try:
        return from_json(raw, allow_inf_nan=False)
    except ValueError:
        pass
    try:
        return json.loads(raw)
    except RecursionError:
        raise PydanticCustomError("json_too_deep", "JSON nested deeper than {limit} levels",
                                  {"limit": MAX_JSON_DEPTH}) from None


def read_bundle_body(raw: bytes) -> tuple[dict[str, Any], "Bundle"]:
    """The bundle a ``POST /attest`` body is, as parsed JSON (what the appraisal reads) and its checked shape.

    One parse, one :func:`check_json` walk and one validation of the outer shape
    (the pydantic model reads the few fields it names and leaves the rest, e.g. the
    base64 of the logs, as the parsed strings): no copy of the document is made.
    Raises ``PydanticCustomError`` / ``pydantic.ValidationError`` for a body that is
    not a bundle, ``ValueError`` (``json.JSONDecodeError`` among them) for one that
    is not JSON.
    """
    if not raw.strip():
        raise PydanticCustomError("missing", "the body is empty: send the bundle that `tsmr attest -o` writes")
    doc = load_json(raw)
    check_json(doc)
    if isinstance(doc, dict) and "bundle" in doc and "format" not in doc:
        raise PydanticCustomError("bundle_wrapped", 'the body is the bundle itself (as `tsmr attest -o` writes it), '
                                  'not {"bundle": ...}; choosing a policy or reference values is ?policy= / '
                                  '?refvals= with the admin token')
    return doc, Bundle.model_validate(doc, strict=True)


class AkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(max_length=16384, description="PEM public key or AK certificate, or TPM2B_PUBLIC as hex.")


class AkOut(BaseModel):
    name: str
    fingerprint: str = Field(description="SHA-256 of the key's SubjectPublicKeyInfo, hex.")
    pem: str
    created_at: datetime


class AttestResponse(BaseModel):
    id: str = Field(description="Result id (UUID): GET /results/{id}.")
    status: str = Field(description="EAR status: affirming, warning, contraindicated (or none).")
    ear: str = Field(description="The EAR, a JWT signed by the key in /.well-known/jwks.json.")
    findings: list[str] = Field(description="Finding ids, worst first as the appraisal lists them.")
    result: dict[str, Any] = Field(description="The full appraisal result.")


class StoredResultResponse(AttestResponse):
    created_at: datetime
    nonce: str
    kind: str | None = None
    policy_id: str | None = None
    refvals_id: str | None = None
    node_id: str | None = Field(None, description="The enrolled node this attestation was made as (?node=).")


class VersionInfo(BaseModel):
    name: str
    version: int
    created_at: datetime


class VersionList(BaseModel):
    items: list[VersionInfo]


class PolicyIn(_CheckedBody):
    model_config = ConfigDict(extra="forbid")
    rego: str = Field(min_length=1, max_length=512 * 1024, description="A Rego module.")


class PolicyOut(VersionInfo):
    rego: str


def _refvals_schema() -> dict[str, Any]:
    from ..appraisal.refvals import SCHEMA

    return {k: v for k, v in SCHEMA.items() if k not in ("$schema", "title")}


class RefvalsIn(_CheckedBody):
    model_config = ConfigDict(extra="forbid")
    document: dict[str, Any] = Field(description="A reference values document (tsmr-refvals, version 1).",
                                     json_schema_extra=_refvals_schema())


class RefvalsOut(VersionInfo):
    document: dict[str, Any]


# -- nodes ----------------------------------------------------------------------------------------

# What pins a node's evidence to it, by kind: the one identity field and the byte lengths its hex may have.
IDENTITY_FIELDS: dict[str, tuple[str, tuple[int, ...]]] = {
    "tpm": ("ak_fingerprint", (32,)),  # SHA-256 of the AK's SubjectPublicKeyInfo (DER), as /tpm-aks shows it
    "tdx": ("mrtd", (48,)),  # the TD's build-time measurement
    "snp": ("measurement", (48,)),  # the guest's launch measurement
    "cca": ("rim", (32, 48, 64)),  # the realm initial measurement (SHA-256 or SHA-512 realms)
}
NodeKind = Literal["tdx", "snp", "cca", "tpm"]
NodeState = Literal["unknown", "affirming", "warning", "contraindicated", "stale"]


class NodeIn(_CheckedBody):
    """A node to enrol, or its new settings (``PUT /nodes/{id}`` replaces them all)."""

    model_config = ConfigDict(extra="forbid")
    kind: NodeKind
    identity: dict[str, str] = Field(
        description="What binds the node's evidence to it, one field by kind: tpm {ak_fingerprint: SHA-256 hex of "
                    "the AK's SubjectPublicKeyInfo}, tdx {mrtd: hex}, snp {measurement: hex}, cca {rim: hex}.")
    policy: Name | None = Field(None, description="A stored policy to appraise the node with (default: the "
                                                  "verifier's own).")
    refvals: Name | None = Field(None, description="Stored reference values for the node (default: the verifier's).")
    interval_s: int = Field(60, ge=1, le=7 * 86400, description="Seconds between the node's attestations.")

    @model_validator(mode="after")
    def _identity_fits_kind(self) -> "NodeIn":
        field, sizes = IDENTITY_FIELDS[self.kind]
        if set(self.identity) != {field}:
            raise PydanticCustomError("node_identity", "a {kind} node's identity is one field, {field} (hex)",
                                      {"kind": self.kind, "field": field})
        value = self.identity[field].lower()
        if len(value) not in {2 * n for n in sizes} or any(c not in "0123456789abcdef" for c in value):
            raise PydanticCustomError("node_identity", "{field} must be hex of {sizes} bytes",
                                      {"field": field, "sizes": " or ".join(map(str, sizes))})
        self.identity = {field: value}
        return self


class NodeOut(BaseModel):
    id: str
    kind: NodeKind
    identity: dict[str, str]
    policy: str | None = Field(None, description="None: the verifier's own.")
    refvals: str | None = Field(None, description="None: the verifier's own.")
    interval_s: int
    state: NodeState
    state_since: datetime
    last_result_id: str | None = None
    last_attested_at: datetime | None = None
    created_at: datetime
    retired_at: datetime | None = Field(None, description="Set once the node is retired (it keeps its history).")


class NodeStateOut(BaseModel):
    seq: int = Field(description="The change's number for this node, from 1.")
    state: NodeState
    at: datetime
    result_id: str | None = Field(None, description="The result that caused the change, if one did.")
    reason: str


class NodeDetail(NodeOut):
    history: list[NodeStateOut] = Field(description="The latest state changes, newest first.")


class NodeList(BaseModel):
    items: list[NodeOut]


class JWK(BaseModel):
    kty: str
    crv: str
    x: str
    y: str
    kid: str
    alg: str
    use: str


class JWKSet(BaseModel):
    keys: list[JWK]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str
    revision: str | None = None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Malformed request", 401: "Missing or wrong admin token",
            403: "Nonce never issued, a policy / reference values named without the admin token, or (with a "
                 "TLS client CA) an admin request without a client certificate",
            415: "The body is not sent as application/json",
            404: "Not found", 409: "Nonce already used", 410: "Nonce expired", 413: "Body too large",
            422: "Invalid request or evidence that could not be appraised",
            429: "Too many requests from this address: try again after Retry-After seconds",
            503: "Database unavailable, or the verifier's configured policy is not stored"}
    return {c: {"model": ErrorBody, "description": text.get(c, "Error")} for c in codes}
