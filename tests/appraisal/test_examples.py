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
