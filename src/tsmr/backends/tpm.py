"""TPM 2.0 backend: PCRs as registers, through tpm2-pytss (ESAPI over a TCTI).

Theory of operation
-------------------
One ESAPI context is opened per register set and kept until ``close()``; every
operation is a single TPM command on it with no session (PCR_Read needs no
authorization, PCR_Extend uses the empty password of a PCR's authValue), so no
transient objects or sessions are ever created and nothing needs flushing,
which matters on swtpm and mssim where no resource manager cleans up for us.

Discovery is one TPM2_GetCapability(TPM_CAP_PCRS): the allocated banks and, per
bank, a bitmap of the PCRs it holds.  Register ``pcrN`` gets one bank per
allocated algorithm whose bit N is set and which tsmr's HashAlg knows.

Flags.  The PC Client Platform TPM Profile gives PCRs 17-22 extend localities
2-4 only (they hold DRTM measurements); a TCTI talks to the TPM at locality 0,
so the TPM answers TPM_RC_LOCALITY to any extend of them.  swtpm 0.7 does
exactly that (0x907, "bad locality") for each of 17..22.  They are therefore
READABLE|LIVE, so the caller gets an InputError before a command is sent.

Reading.  TPM2_PCR_Read returns at most 8 digests (TPML_DIGEST) and may return
fewer than asked: ``pcrSelectionOut`` says which (bank, PCR) pairs were
actually read.  We ask for every requested bank of the PCR in one command and
repeat with the remainder until all are in, so a PCR with <= 8 banks costs one
round trip.

Structures are built by marshalling bytes and unmarshalling them with the TSS
(instead of filling TPMU_HA members by name), which is algorithm-agnostic and
cheaper in Python.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from ..algorithms import HashAlg
from ..errors import BackendError
from ..registers import BaseRegisterSet, Bank, Flag, Register

DEFAULT_TCTI = "device:/dev/tpmrm0"

# PC Client PTP, PCR attributes: extendable only from localities 2-4.
_LOCALITY_RESTRICTED = frozenset(range(17, 23))
_MAX_PCR_HANDLES = 32  # ESYS_TR.PCR0 .. ESYS_TR.PCR31


@dataclass(frozen=True)
class TpmQuote:
    """A TPM2_Quote: TPMS_ATTEST, TPMT_SIGNATURE, the AK's TPM2B_PUBLIC and the PCR values it covers."""

    attest: bytes
    signature: bytes
    ak_public: bytes
    pcrs: dict[str, dict[HashAlg, bytes]]


def _pytss() -> Any:
    """Import tpm2-pytss only when a TPM is actually used (it is an optional extra)."""
    try:
        import tpm2_pytss
    except ImportError:
        raise BackendError(
            "the tpm backend needs tpm2-pytss: pip install 'tsmr[tpm]'", backend="tpm"
        ) from None
    # The TSS logs every failure to stderr; our exceptions already say it all.
    # Only a default: a user who sets TSS2_LOG keeps their setting.
    os.environ.setdefault("TSS2_LOG", "all+none")
    return tpm2_pytss


def _tss_error(exc: Exception, action: str, register: str | None = None, hint: str = "") -> BackendError:
    rc = getattr(exc, "rc", None)
    # Layer 0 is the TPM itself; other layers (0x8xxxx ESYS, 0xaxxxx TCTI...) are the TSS's.
    layer = "TPM" if rc is not None and int(rc) >> 16 == 0 else "TSS"
    code = f"{layer} response code 0x{int(rc):x}" if rc is not None else "TSS error"
    what = f"{action} {register}" if register else action
    msg = f"tpm: {what} failed: {code} ({exc})"
    if rc is not None and int(rc) == 0x907:  # TPM_RC_LOCALITY
        hint = "this PCR cannot be extended from locality 0"
    if hint:
        msg += f"; {hint}"
    return BackendError(msg, backend="tpm", register=register)


def _unmarshal_digests(raw: bytes) -> list[bytes]:
    """A marshalled TPML_DIGEST (count, then size-prefixed digests), parsed without a wrapper per item."""
    (count,), off, out = struct.unpack_from(">I", raw), 4, []
    for _ in range(count):
        (size,) = struct.unpack_from(">H", raw, off)
        out.append(raw[off + 2 : off + 2 + size])
        off += 2 + size
    return out


def _split_tcti(tcti: str) -> tuple[str, str]:
    name, _, conf = tcti.partition(":")
    return name.strip(), conf.strip()


def _conf_options(conf: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in conf.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _diagnose_open(tcti: str, exc: Exception) -> BackendError:
    """Turn a failed TCTI open into one sentence, recovering the errno the TSS hides.

    The TSS only reports "tcti:IO failure"; repeating the open or connect
    ourselves (only on failure) yields the OSError a user can act on.
    """
    name, conf = _split_tcti(tcti)
    action = f"opening TCTI {tcti!r}"
    try:
        if name == "device":
            os.close(os.open(conf or "/dev/tpmrm0", os.O_RDWR))
        elif name in ("swtpm", "mssim"):
            opts = _conf_options(conf)
            if "path" in opts:  # swtpm over a Unix socket
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(2)
                    sock.connect(opts["path"])
            else:
                host, port = opts.get("host", "localhost"), int(opts.get("port", "2321"))
                socket.create_connection((host, port), timeout=2).close()
    except OSError as oserr:
        hints = {
            "device": "is there a TPM, and may this user open it (group tss)?",
            "swtpm": "is swtpm running and listening there?",
            "mssim": "is the TPM simulator running and listening there?",
        }
        return BackendError.from_oserror(
            oserr, backend="tpm", register=None, action=action, hint=hints.get(name, "")
        )
    except ValueError:
        pass
    hint = ""
    if getattr(exc, "rc", None) == 0xA0015:  # TSS2_TCTI_RC_NOT_SUPPORTED: the loader found no such TCTI
        hint = f"is the TCTI library libtss2-tcti-{name}.so installed?"
    return _tss_error(exc, action, hint=hint)


def _provider(name: str, conf: str) -> str:
    if name == "device":
        base = os.path.basename(conf or "/dev/tpmrm0")
        return "tpm" + base[len("tpmrm"):] if base.startswith("tpmrm") else base
    return name or "tpm"


class TpmRegisterSet(BaseRegisterSet):
    """The PCRs of a TPM 2.0, reached through a TCTI string (``device:/dev/tpmrm0``, ``swtpm:port=2321``)."""

    kind = "tpm"

    def __init__(self, tcti: str | None = None) -> None:
        super().__init__()
        self.tcti = tcti or DEFAULT_TCTI
        name, conf = _split_tcti(self.tcti)
        self.provider = _provider(name, conf)
        # Only a device TCTI is known to reach hardware; tabrmd, cmd and others
        # may front a simulator, so they are not claimed to be hardware-backed.
        self.hardware_backed = name == "device"
        self._t = _pytss()
        self._lock = threading.Lock()  # an ESYS context is not thread-safe
        self._tctildr: Any = None
        self._esapi: Any = None
        self._select_size: dict[HashAlg, int] = {}
        try:
            self._tctildr = self._t.TCTILdr(name, conf or None)
        except self._t.TSS2_Exception as exc:
            raise _diagnose_open(self.tcti, exc) from exc
        try:
            self._esapi = self._t.ESAPI(self._tctildr)
        except self._t.TSS2_Exception as exc:
            self._tctildr.close()
            raise _tss_error(exc, f"opening ESAPI on TCTI {self.tcti!r}") from exc

    # -- plumbing ----------------------------------------------------------
    def _call(self, what: str, register: str | None, fn: str, *args: Any) -> Any:
        with self._lock:
            if self._esapi is None:
                raise BackendError(f"tpm: {what}{' ' + register if register else ''} failed: "
                                   "the TPM connection is closed", backend="tpm", register=register)
            try:
                return getattr(self._esapi, fn)(*args)
            except self._t.TSS2_Exception as exc:
                raise _tss_error(exc, what, register) from exc

    # -- discovery ---------------------------------------------------------
    def _discover(self) -> Sequence[Register]:
        _more, cap = self._call("reading the PCR allocation", None, "get_capability",
                                self._t.TPM2_CAP.PCRS, 0, 1)
        raw = cap.data.assignedPCR.marshal()
        per_pcr: dict[int, list[Bank]] = {}
        (count,), off = struct.unpack_from(">I", raw), 4
        for _ in range(count):
            alg_id, size = struct.unpack_from(">HB", raw, off)
            bitmap = raw[off + 3 : off + 3 + size]
            off += 3 + size
            try:
                alg = HashAlg(alg_id)
            except ValueError:
                continue  # a bank tsmr cannot hash for (vendor or future algorithm)
            self._select_size[alg] = size
            for pcr in range(min(size * 8, _MAX_PCR_HANDLES)):
                if bitmap[pcr // 8] >> (pcr % 8) & 1:
                    flags = Flag.READABLE | Flag.LIVE
                    if pcr not in _LOCALITY_RESTRICTED:
                        flags |= Flag.WRITABLE
                    per_pcr.setdefault(pcr, []).append(
                        Bank(alg, alg.digest_size, flags, f"pcr{pcr}:{alg.kernel_name}")
                    )
        return [
            Register(f"pcr{pcr}", tuple(sorted(banks, key=lambda b: int(b.alg))))  # type: ignore[arg-type]
            for pcr, banks in sorted(per_pcr.items())
        ]

    @staticmethod
    def _index(reg: Register) -> int:
        return int(reg.name[3:])

    def _selection(self, pcr: int, algs: Sequence[HashAlg]) -> Any:
        parts = [struct.pack(">I", len(algs))]
        for alg in algs:
            size = self._select_size[alg]
            bitmap = bytearray(size)
            bitmap[pcr // 8] |= 1 << (pcr % 8)
            parts.append(struct.pack(">HB", int(alg), size) + bytes(bitmap))
        return self._t.TPML_PCR_SELECTION.unmarshal(b"".join(parts))[0]

    # -- operations --------------------------------------------------------
    def _read_banks(self, reg: Register, banks: Sequence[Bank]) -> dict[HashAlg | None, bytes]:
        pcr = self._index(reg)
        pending = [b.alg for b in banks if b.alg is not None]
        out: dict[HashAlg | None, bytes] = {}
        while pending:
            _counter, sel_out, values = self._call(
                "reading", reg.name, "pcr_read", self._selection(pcr, pending[:16])
            )
            # Digests come in selection order: bank by bank, PCRs ascending.
            # We select one PCR, so each bank whose bit is set owns one digest.
            raw, digests = sel_out.marshal(), _unmarshal_digests(values.marshal())
            (count,), off, got = struct.unpack_from(">I", raw), 4, 0
            for _ in range(count):
                alg_id, size = struct.unpack_from(">HB", raw, off)
                bitmap = raw[off + 3 : off + 3 + size]
                off += 3 + size
                if pcr // 8 < size and bitmap[pcr // 8] >> (pcr % 8) & 1 and got < len(digests):
                    out[HashAlg(alg_id)] = digests[got]
                    got += 1
            if got == 0:  # a TPM that returns nothing would loop forever
                raise BackendError(
                    f"tpm: reading {reg.name} failed: the TPM returned no digest for bank(s) "
                    f"{', '.join(a.kernel_name for a in pending)}",
                    backend="tpm", register=reg.name,
                )
            pending = [a for a in pending if a not in out]
        return {b.alg: out[b.alg] for b in banks}

    def _extend_banks(self, reg: Register, digests: dict[Bank, bytes]) -> None:
        parts = [struct.pack(">I", len(digests))]
        for bank, digest in digests.items():
            parts.append(struct.pack(">H", int(bank.alg)) + digest)  # type: ignore[arg-type]
        try:
            values = self._t.TPML_DIGEST_VALUES.unmarshal(b"".join(parts))[0]
        except self._t.TSS2_Exception as exc:  # an algorithm this TSS cannot marshal
            raise _tss_error(exc, "marshalling the extend of", reg.name) from exc
        handle = self._t.ESYS_TR.PCR0 + self._index(reg)
        self._call("extend of", reg.name, "pcr_extend", handle, values)

    # -- quotes ------------------------------------------------------------
    def quote(self, nonce: bytes, pcrs: Sequence[int] | None = None, algs: Sequence[HashAlg] | None = None) -> "TpmQuote":
        """TPM2_Quote over ``pcrs`` (default: all) in every allocated bank (or ``algs``), with ``nonce``.

        The attestation key is a restricted ECC P-256 signing key created as a
        primary object in the endorsement hierarchy from the standard template, so
        the same TPM gives the same key every time (and nothing needs storing); it
        is flushed afterwards.  The PCR values are read before and after the quote
        and the quote is retried (up to 3 times) if they moved in between, so the
        values returned are the ones the quote covers.
        """
        if len(nonce) > 64:
            from ..errors import InputError

            raise InputError(f"a TPM quote nonce is at most 64 bytes, got {len(nonce)}")
        regs = self.registers()
        wanted = sorted(pcrs) if pcrs is not None else [self._index(r) for r in regs]
        banks = list(algs) if algs is not None else sorted(self._select_size)
        parts = [struct.pack(">I", len(banks))]
        for alg in banks:
            size = self._select_size[alg]
            bitmap = bytearray(size)
            for p in wanted:
                bitmap[p // 8] |= 1 << (p % 8)
            parts.append(struct.pack(">HB", int(alg), size) + bytes(bitmap))
        selection = self._t.TPML_PCR_SELECTION.unmarshal(b"".join(parts))[0]
        t = self._t
        attrs = (t.TPMA_OBJECT.FIXEDTPM | t.TPMA_OBJECT.FIXEDPARENT | t.TPMA_OBJECT.SENSITIVEDATAORIGIN
                 | t.TPMA_OBJECT.USERWITHAUTH | t.TPMA_OBJECT.RESTRICTED | t.TPMA_OBJECT.SIGN_ENCRYPT)
        template = t.TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)
        handle, ak_public, *_ = self._call("creating the attestation key", None, "create_primary",
                                           t.TPM2B_SENSITIVE_CREATE(), template, t.ESYS_TR.ENDORSEMENT)
        try:
            for _ in range(3):
                before = {f"pcr{p}": self.read(f"pcr{p}", banks) for p in wanted}
                quoted, signature = self._call("quoting", None, "quote", handle, selection, t.TPM2B_DATA(nonce),
                                               t.TPMT_SIG_SCHEME(scheme=t.TPM2_ALG.NULL))
                after = {f"pcr{p}": self.read(f"pcr{p}", banks) for p in wanted}
                if before == after:
                    break
            else:
                raise BackendError("tpm: the PCRs kept changing while quoting", backend="tpm")
        finally:
            self._call("flushing the attestation key", None, "flush_context", handle)
        return TpmQuote(
            attest=bytes(quoted.marshal()[2:]),  # TPM2B_ATTEST: drop the size
            signature=bytes(signature.marshal()),
            ak_public=bytes(ak_public.marshal()),
            pcrs={r: {a: v for a, v in vals.items() if a is not None} for r, vals in after.items()},
        )

    def close(self) -> None:
        with self._lock:
            esapi, tctildr, self._esapi, self._tctildr = self._esapi, self._tctildr, None, None
        # ESAPI does not own a TCTI it was handed, so both are finalized here.
        if esapi is not None:
            esapi.close()
        if tctildr is not None:
            tctildr.close()

    def __repr__(self) -> str:
        return f"<TpmRegisterSet tpm:{self.provider} tcti={self.tcti!r}>"


__all__ = ["TpmRegisterSet", "DEFAULT_TCTI"]
