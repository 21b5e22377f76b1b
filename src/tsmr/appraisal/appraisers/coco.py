"""``coco``: the Confidential Containers event convention (domain ``github.com/confidential-containers``).

CoCo's Attestation Agent records guest events as ``<domain> <operation>
<content>`` (AAEL; trustee's "Confidential Containers Event Spec").  The
operations judged here:

``PullImage``
    content ``{"image": "<reference>", "digest": "<alg>:<hex>"}`` (RFC 8785
    JSON), written by the Confidential Data Hub after pulling an image.
``CreateContainer``
    content ``<image reference>`` as plain text: the older convention of
    AAEL v1 logs (trustee's test data), without a digest.
``InitData``
    content ``{"digest": "<alg>:<hex>"}`` or ``<alg>:<hex>``: the digest of the
    pod's init data.  Current guest components bind init data to MRCONFIGID,
    HOST_DATA or a PCR instead of logging it; check those through reference
    value claims.  A guest that logs it in this form is judged here.

Configuration (``reference_values.appraisers["coco"]``)::

    {"images": ["docker.io/library/busybox:*",
                {"image": "docker.io/library/alpine*", "digests": ["sha256:<hex>", ...]}],
     "init_data": ["sha256:<hex>", ...],
     "operations": ["SetPolicy"],
     "strict": false}

* ``images``: allowed image references (shell-style patterns, matched against
  the reference as logged); an entry with ``digests`` also pins the manifest
  digest, so a ``CreateContainer`` event (which has none) cannot satisfy it.
  Absent: images are not judged.
* ``init_data``: allowed init-data digests; absent: not judged.
* ``operations``: further operations to accept without judging them.
* ``strict``: unknown operations and unreadable content are errors instead of warnings.

For reference-value coverage (:meth:`CocoAppraiser.judges`) an image event is
judged only when ``images`` is configured, an init-data event only when
``init_data`` is; other operations always are (accepted, or a finding).

Findings: ``appraiser.coco.image-denied`` (error, executables),
``appraiser.coco.init-data-denied`` (error, configuration),
``appraiser.coco.malformed`` and ``appraiser.coco.unknown-operation``
(warning, or error when strict; executables).
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any, Mapping

from ...errors import InputError
from ..model import Finding, Severity

__all__ = ["CocoAppraiser", "DOMAIN", "KNOWN_OPERATIONS"]

DOMAIN = "github.com/confidential-containers"
KNOWN_OPERATIONS = ("PullImage", "CreateContainer", "InitData")

_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")  # OCI digest: algorithm ":" encoded


def _bad(where: str, message: str) -> InputError:
    return InputError(f"appraiser coco: {where}: {message}")


def _digest_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(d, str) and _DIGEST.match(d) for d in value):
        raise _bad(where, "must be an array of digests '<alg>:<hex>'")
    return tuple(d.lower() for d in value)


def _config(config: Mapping[str, Any]) -> dict[str, Any]:
    extra = sorted(set(config) - {"images", "init_data", "operations", "strict"})
    if extra:
        raise _bad(extra[0], "unknown setting (known: images, init_data, operations, strict)")
    out: dict[str, Any] = {"images": None, "init_data": None, "operations": (), "strict": False}
    if "images" in config:
        images = config["images"]
        if not isinstance(images, list):
            raise _bad("images", "must be an array")
        entries: list[tuple[str, tuple[str, ...] | None]] = []
        for n, item in enumerate(images):
            if isinstance(item, str) and item:
                entries.append((item, None))
            elif isinstance(item, Mapping) and isinstance(item.get("image"), str) and item["image"]:
                unknown = sorted(set(item) - {"image", "digests"})
                if unknown:
                    raise _bad(f"images[{n}].{unknown[0]}", "unknown member")
                digests = _digest_list(item["digests"], f"images[{n}].digests") if "digests" in item else None
                entries.append((item["image"], digests))
            else:
                raise _bad(f"images[{n}]", "must be an image pattern or {\"image\": pattern, \"digests\": [...]}")
        out["images"] = entries
    if "init_data" in config:
        out["init_data"] = _digest_list(config["init_data"], "init_data")
    ops = config.get("operations", [])
    if not isinstance(ops, list) or not all(isinstance(o, str) and o for o in ops):
        raise _bad("operations", "must be an array of operation names")
    out["operations"] = tuple(ops)
    strict = config.get("strict", False)
    if not isinstance(strict, bool):
        raise _bad("strict", "must be true or false")
    out["strict"] = strict
    return out


def _where(ev: Mapping[str, Any]) -> str:
    return f"{ev['register']} record {ev['seq']} ({ev['operation']})"


def _context(ev: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    ctx = {"register": ev["register"], "seq": ev["seq"], "operation": ev["operation"], "content": ev["content"]}
    ctx.update(extra)
    return ctx


class CocoAppraiser:
    """Judges CoCo events: pulled images and init data against allowed values (see the module docstring)."""

    name = "coco"
    domains = (DOMAIN,)

    def check_config(self, config: Mapping[str, Any]) -> None:
        _config(config)

    def judges(self, event: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
        """Whether this configuration decides on the event: images need ``images``, init data ``init_data``.

        Other operations are judged too: the ones in ``operations`` are accepted
        by the configuration, and unknown ones are findings.
        """
        if event.get("domain") != DOMAIN:
            return False
        cfg = _config(config)
        op = str(event.get("operation"))
        if op in ("PullImage", "CreateContainer"):
            return cfg["images"] is not None
        if op == "InitData":
            return cfg["init_data"] is not None
        return True

    def appraise(self, events: list[dict[str, Any]], config: Mapping[str, Any]) -> list[Finding]:
        cfg = _config(config)
        soft = Severity.ERROR if cfg["strict"] else Severity.WARNING
        out: list[Finding] = []
        for ev in events:
            if ev["domain"] != DOMAIN:
                continue
            op, content = str(ev["operation"]), str(ev["content"])
            if op == "PullImage":
                try:
                    obj = json.loads(content)
                except ValueError:
                    obj = None
                if not (isinstance(obj, dict) and isinstance(obj.get("image"), str) and isinstance(obj.get("digest"), str)):
                    out.append(Finding("appraiser.coco.malformed", soft,
                                       f"{_where(ev)}: content is not {{\"image\": ..., \"digest\": ...}}", "executables",
                                       _context(ev)))
                    continue
                out.extend(self._image(ev, cfg, obj["image"], obj["digest"].lower()))
            elif op == "CreateContainer":
                if not content or " " in content:
                    out.append(Finding("appraiser.coco.malformed", soft, f"{_where(ev)}: content is not an image reference",
                                       "executables", _context(ev)))
                    continue
                out.extend(self._image(ev, cfg, content, None))
            elif op == "InitData":
                obj = None
                try:
                    obj = json.loads(content) if content.startswith("{") else None
                except ValueError:
                    pass
                digest = obj.get("digest") if isinstance(obj, dict) else content
                if not isinstance(digest, str) or not _DIGEST.match(digest):
                    out.append(Finding("appraiser.coco.malformed", soft, f"{_where(ev)}: content is not an init-data digest",
                                       "configuration", _context(ev)))
                    continue
                if cfg["init_data"] is not None and digest.lower() not in cfg["init_data"]:
                    out.append(Finding("appraiser.coco.init-data-denied", Severity.ERROR,
                                       f"{_where(ev)}: init data {digest} is not among the allowed digests",
                                       "configuration", _context(ev, digest=digest.lower())))
            elif op not in cfg["operations"]:
                out.append(Finding("appraiser.coco.unknown-operation", soft,
                                   f"{_where(ev)}: operation {op!r} is not one this appraiser knows", "executables",
                                   _context(ev)))
        return out

    @staticmethod
    def _image(ev: Mapping[str, Any], cfg: Mapping[str, Any], image: str, digest: str | None) -> list[Finding]:
        entries = cfg["images"]
        if entries is None:
            return []
        named = [(pattern, digests) for pattern, digests in entries if fnmatch.fnmatchcase(image, pattern)]
        if any(digests is None or (digest is not None and digest in digests) for _, digests in named):
            return []
        if not named:
            why = f"image {image} is not among the allowed images"
        elif digest is None:
            why = f"image {image} must be pinned to a digest, and this event carries none"
        else:
            why = f"image {image} has digest {digest}, which is not among the allowed digests"
        return [Finding("appraiser.coco.image-denied", Severity.ERROR, f"{_where(ev)}: {why}", "executables",
                        _context(ev, image=image, digest=digest))]
