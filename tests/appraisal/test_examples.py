"""The example files shipped in examples/ work: the policy compiles and decides, the agent configuration loads."""

from __future__ import annotations

import json
from pathlib import Path


from tsmr.appraisal.policy import check_policy, evaluate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _input(**over):  # type: ignore[no-untyped-def]
    base = {"kind": "tdx", "nonce": "00", "claims": {"td_attributes": "0000000000000000"}, "registers": {},
            "events": {"example.com/app": [{"operation": "deploy", "json": {"image": "alpine"}}]},
            "findings": [], "errors": [], "warnings": []}
    base.update(over)
    return base


def test_example_policy_compiles_and_decides() -> None:
    rego = (EXAMPLES / "policy.rego").read_text()
    check_policy(rego)
    ok = evaluate(rego, _input())
    assert ok.allow is True and ok.findings == ()
    bad = evaluate(rego, _input(
        claims={"td_attributes": "0100000000000000"}, warnings=["replay.gap"],
        events={"example.com/app": [{"operation": "deploy", "json": {"image": "evil"}}]}))
    assert sorted(f.context.get("rule") for f in bad.findings) == ["debug", "image", "no-gaps"]
    assert all(f.id == "policy.deny" for f in bad.findings)
    assert evaluate(rego, _input(errors=["replay.mismatch"])).allow is False
    snp_ok = evaluate(rego, _input(kind="snp", claims={"policy": 0x30000}))
    assert snp_ok.allow is True and snp_ok.findings == ()
    snp_debug = evaluate(rego, _input(kind="snp", claims={"policy": 0x30000 | 1 << 19}))
    assert [f.context.get("rule") for f in snp_debug.findings] == ["snp-debug"]  # a deny refuses whatever allow says


def test_example_policy_on_emulated_snp_reports(tmp_path: Path) -> None:
    """The whole appraisal of real SEV-SNP report bytes (the emulator's), debug policy bit clear and set."""
    from datetime import datetime, timezone

    from tsmr.appraisal import appraise
    from tsmr.evidence.bundle import make_bundle
    from tsmr.backends.emulated_evidence.snp import DEFAULT_POLICY, EmulatedSNPSigner
    from tsmr.system.trust import load_anchors

    from emulated_collateral import snp_crl

    signer = EmulatedSNPSigner(tmp_path / "sp")
    crl = tmp_path / "amd.crl"
    crl.write_bytes(snp_crl(signer.dir))
    trust = load_anchors(ark=str(signer.ark_pem), crl=str(crl))
    nonce = bytes(range(32))
    rego = (EXAMPLES / "policy.rego").read_text()
    statuses = {}
    # the launch measurement the reports carry, as reference values: the policy's verdict is what is under test
    launch = {"format": "tsmr-refvals", "version": 1, "id": "launch", "claims": {"measurement": ["11" * 48]}}
    for name, policy, allow_debug in (("plain", DEFAULT_POLICY, False), ("debug", DEFAULT_POLICY | 1 << 19, False),
                                      ("debug allowed", DEFAULT_POLICY | 1 << 19, True)):
        report = signer.report(report_data=nonce.ljust(64, b"\0"), measurement=b"\x11" * 48, policy=policy)
        doc = make_bundle(nonce=nonce, evidence={"kind": "snp", "data": report, "auxblob": signer.cert_table()})
        result = appraise(doc, policy=rego, nonce=nonce, now=datetime.now(timezone.utc), trust=trust,
                          allow_debug=allow_debug, reference_values=launch)
        statuses[name] = (result.status, sorted(f.context.get("rule", "") for f in result.findings if f.id == "policy.deny"),
                          sorted(f.id for f in result.findings if f.id != "policy.deny"))
    # The verifier refuses a debug guest by itself; allowed there, the example policy still refuses it.
    assert statuses == {"plain": ("affirming", [], []),
                        "debug": ("contraindicated", ["allow"], ["evidence.snp.policy.debug"]),
                        "debug allowed": ("contraindicated", ["snp-debug"], ["evidence.debug-allowed"])}


def test_example_agent_configuration_loads(tmp_path: Path) -> None:
    import grp
    import pwd

    from tsmr.agent.config import load_config

    doc = json.loads((EXAMPLES / "agent.json").read_text())
    try:
        grp.getgrnam("tsmr")
    except KeyError:  # the example names a group this machine does not have: use one it has
        doc["socket_group"] = grp.getgrgid(0).gr_name
        doc["rules"][0]["group"] = grp.getgrgid(0).gr_name
    pwd.getpwnam("root")
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(doc))
    config = load_config(path)
    assert list(config.registers) == ["rtmr2", "rtmr3"]
    assert len(config.rules) == 2
