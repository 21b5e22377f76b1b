"""The default policy is decided natively: its decision must be the one rego-cpp gives for its Rego text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tsmr.appraisal import DEFAULT_POLICY, appraise, learn
from tsmr.appraisal.policy import evaluate, prepare_policy

from .conftest import WHEN, tdx_bundle

pytest.importorskip("regopy")

# The same Rego text with a comment added: another text, so rego-cpp compiles and evaluates it.
BY_REGO = DEFAULT_POLICY + "# evaluated by rego-cpp\n"


def _decided(policy: str, input: dict[str, Any], data: dict[str, Any] | None = None) -> tuple[Any, list[str]]:
    d = evaluate(policy, input, data)
    return d.allow, [f"{f.id}: {f.message}" for f in d.findings]


@pytest.mark.parametrize("input", [
    {"errors": []},
    {"errors": ["replay.mismatch"]},
    {"errors": ["a", "b"], "warnings": ["c"], "findings": ["a", "b", "c"]},
    {"warnings": ["refvals.uncovered"]},  # no errors field at all: the rule is undefined, allow its default
    {},
])
def test_native_default_policy_decides_as_its_rego_text(input: dict[str, Any]) -> None:
    assert prepare_policy(DEFAULT_POLICY).native and not prepare_policy(BY_REGO).native
    for data in (None, {"reference_values": {"id": "x"}}):
        assert _decided(DEFAULT_POLICY, input, data) == _decided(BY_REGO, input, data)


def test_appraisals_under_the_default_policy_and_its_rego_text_agree(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN)
    tampered = dict(doc, nonce="00" * 32)  # the quote is not over this nonce: an error finding
    for bundle in (doc, tampered):
        native = appraise(bundle, nonce=nonce, now=WHEN, reference_values=rv)
        rego = appraise(bundle, nonce=nonce, now=WHEN, reference_values=rv, policy=BY_REGO)
        assert native.finding_ids() == rego.finding_ids() and native.status == rego.status
        assert native.to_dict() == dict(rego.to_dict(), policy_id=native.policy_id)
    assert "policy.deny" in appraise(tampered, nonce=nonce, now=WHEN, reference_values=rv).finding_ids()
