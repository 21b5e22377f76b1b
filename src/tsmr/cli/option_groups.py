"""Groups of options that several commands take, each defined once: the trust options and the appraisal limits.

A command that takes a group has a parameter of the group's name (``trust``,
``limits``) and the group's decorator: the decorator puts the group's options in
the command's signature where that parameter stands, and hands the command one
value built from what was given.

* :func:`trust_options`: ``--trust-root``, ``--collateral``, ``--vcek``,
  ``--ask``, ``--ark`` (``--certs``), ``--crl``, ``--cpak``, ``--tpm-ak``,
  ``--tpm-ca``, as a :class:`TrustOptions`, whose :meth:`~TrustOptions.anchors`
  reads them into the verifier's :class:`~tsmr.evidence.TrustAnchors`
  (:func:`tsmr.system.trust.load_anchors`).
* :func:`limit_options`: ``--max-logs`` ... ``--time-budget``, as the
  :class:`~tsmr.evidence.limits.Limits` they and the ``TSMR_*`` variables give
  (or, for ``tsmr serve``, as the values given).
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Mapping, Optional, TypeVar

import typer

from ..evidence.anchors import TrustAnchors
from ..system.inputs import limits_from_env
from ..system.trust import load_anchors
from .common import (ArkOpt, AskOpt, CollateralOpt, CpakOpt, MaxLogRecordsOpt, MaxLogsOpt, MaxRecordBytesOpt,
                     MaxRecordsOpt, MaxRuntimeEventsOpt, SnpCrlOpt, TimeBudgetOpt, TpmAkOpt, TpmCaOpt, TrustRootOpt,
                     VcekOpt)

__all__ = ["TrustOptions", "trust_options", "limit_options", "option_group"]

F = TypeVar("F", bound=Callable[..., Any])


def option_group(param: str, options: Mapping[str, Any], build: Callable[..., Any]) -> Callable[[F], F]:
    """Replace the command's parameter ``param`` with ``options`` (name -> annotation); pass it ``build(**given)``."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
                  else p for p in sig.parameters.values()]
        at = [p.name for p in params].index(param)
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
                 for name, annotation in options.items()]
        new = sig.replace(parameters=params[:at] + added + params[at + 1:])

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name, None) for name in options}
            return fn(*args, **{param: build(**given)}, **kwargs)

        wrapper.__signature__ = new  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in new.parameters.values()
                                   if p.annotation is not inspect.Parameter.empty}
        return wrapper  # type: ignore[return-value]

    return decorate


# -- trust -------------------------------------------------------------------------------------------

CertsOpt = Annotated[Optional[str], typer.Option(
    "--certs", help="SNP: a directory of vcek/ask/ark (or cert_chain) files, or the report's certificate table "
    "(auxblob).")]

_TRUST: dict[str, Any] = {
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

# Trust option -> the verifier service's setting of the same file.
_SETTINGS = {"trust_root": "trust_root", "collateral": "collateral", "cpak": "cpak", "ark": "snp_ark",
             "ask": "snp_ask", "vcek": "snp_vcek", "crl": "snp_crl", "tpm_ak": "tpm_ak", "tpm_ca": "tpm_ca"}


@dataclass(frozen=True)
class TrustOptions:
    """The trust options as given (option name -> file or directory name, lists for --tpm-ak and --tpm-ca)."""

    given: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.given.get(name)

    def without(self, name: str) -> "TrustOptions":
        return TrustOptions({k: v for k, v in self.given.items() if k != name})

    def anchors(self, *, certs_complete: bool = False) -> TrustAnchors:
        """The files read into trust anchors (see :func:`tsmr.system.trust.load_anchors`)."""
        paths = {k: v for k, v in self.given.items() if v}
        return load_anchors(**paths, certs_complete=certs_complete)

    def settings(self) -> dict[str, str]:
        """The verifier service's settings these options give (absolute paths for the lists, as workers read them)."""
        out = {}
        for name, value in self.given.items():
            if value:
                out[_SETTINGS[name]] = (os.pathsep.join(os.path.abspath(p) for p in value)
                                        if isinstance(value, (list, tuple)) else value)
        return out


def trust_options(*, certs: bool = False) -> Callable[[F], F]:
    """The trust options in place of the command's ``trust`` parameter (and ``--certs`` when ``certs``)."""
    chosen = {name: opt for name, opt in _TRUST.items() if certs or name != "certs"}
    return option_group("trust", chosen, lambda **given: TrustOptions(given))


# -- appraisal limits --------------------------------------------------------------------------------

_LIMITS: dict[str, Any] = {
    "max_logs": MaxLogsOpt,
    "max_records": MaxRecordsOpt,
    "max_log_records": MaxLogRecordsOpt,
    "max_record_bytes": MaxRecordBytesOpt,
    "max_runtime_events": MaxRuntimeEventsOpt,
    "time_budget": TimeBudgetOpt,
}


def limit_options(*, runtime_events: bool = True, values: bool = False) -> Callable[[F], F]:
    """The limit options in place of the command's ``limits`` parameter.

    It gets the :class:`~tsmr.evidence.limits.Limits` that the options, else the
    ``TSMR_*`` variables, else the defaults give; with ``values``, the options
    given (name -> value) instead.
    """
    chosen = {name: opt for name, opt in _LIMITS.items() if runtime_events or name != "max_runtime_events"}

    def build(**given: Any) -> Any:
        return {k: v for k, v in given.items() if v is not None} if values else limits_from_env(**given)

    return option_group("limits", chosen, build)
