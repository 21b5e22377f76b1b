"""The trust options (``--trust-root``, ``--collateral``, ``--ark``, ``--tpm-ak``...), defined once for every command.

A command that verifies evidence takes a parameter ``trust: TrustOptions`` and
is decorated with :func:`trust_options`: the decorator puts the options in the
command's signature where ``trust`` stands, and hands the command what was
given as one :class:`TrustOptions`, which :meth:`TrustOptions.anchors` turns
into the verifier's :class:`~tsmr.evidence.TrustAnchors`
(:func:`tsmr.system.trust.load_anchors`).
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from ..evidence.anchors import TrustAnchors
from ..system.trust import load_anchors
from .common import ArkOpt, AskOpt, CollateralOpt, CpakOpt, SnpCrlOpt, TpmAkOpt, TpmCaOpt, TrustRootOpt, VcekOpt

__all__ = ["TrustOptions", "trust_options"]

CertsOpt = Annotated[Optional[str], typer.Option(
    "--certs", help="SNP: a directory of vcek/ask/ark (or cert_chain) files, or the report's certificate table "
    "(auxblob).")]

# Option parameter -> its annotation, in the order --help lists them.
_OPTIONS: dict[str, Any] = {
    "trust_root": TrustRootOpt,
    "collateral": CollateralOpt,
    "vcek": VcekOpt,
    "ask": AskOpt,
    "ark": ArkOpt,
    "certs": CertsOpt,
    "crl": SnpCrlOpt,
    "cpak": CpakOpt,
    "tpm_ak": TpmAkOpt,
    "tpm_ca": TpmCaOpt,
}


@dataclass(frozen=True)
class TrustOptions:
    """The trust options as given: file and directory names, not yet read."""

    trust_root: str | None = None
    collateral: str | None = None
    vcek: str | None = None
    ask: str | None = None
    ark: str | None = None
    certs: str | None = None
    crl: str | None = None
    cpak: str | None = None
    tpm_ak: tuple[str, ...] = ()
    tpm_ca: tuple[str, ...] = ()

    def anchors(self, *, certs_complete: bool = False) -> TrustAnchors:
        """The files read into trust anchors (see :func:`tsmr.system.trust.load_anchors`)."""
        return load_anchors(**asdict(self), certs_complete=certs_complete)

    def settings(self) -> dict[str, str]:
        """The verifier service's settings these options give (absolute paths, as workers read them)."""
        names = {"trust_root": "trust_root", "collateral": "collateral", "cpak": "cpak", "ark": "snp_ark",
                 "ask": "snp_ask", "vcek": "snp_vcek", "crl": "snp_crl"}
        out = {setting: getattr(self, name) for name, setting in names.items() if getattr(self, name) is not None}
        for name in ("tpm_ak", "tpm_ca"):
            if getattr(self, name):
                out[name] = os.pathsep.join(os.path.abspath(p) for p in getattr(self, name))
        return out


F = TypeVar("F", bound=Callable[..., Any])


def trust_options(*, certs: bool = False) -> Callable[[F], F]:
    """Give the decorated command the trust options in place of its ``trust`` parameter (``--certs`` if ``certs``)."""
    chosen = [name for name in _OPTIONS if certs or name != "certs"]

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        params = list(sig.parameters.values())
        at = [p.name for p in params].index("trust")
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_OPTIONS[name])
                 for name in chosen]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
                  else p for p in params]
        new = sig.replace(parameters=params[:at] + added + params[at + 1:])

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name, None) for name in chosen}
            for name in ("tpm_ak", "tpm_ca"):
                given[name] = tuple(given[name] or ())
            return fn(*args, trust=TrustOptions(**given), **kwargs)

        wrapper.__signature__ = new  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in new.parameters.values()
                                   if p.annotation is not inspect.Parameter.empty}
        return wrapper  # type: ignore[return-value]

    return decorate
