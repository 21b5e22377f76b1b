"""A stored policy or reference values replaced by a new version is what the next attestation uses.

The verifier keeps compiled policies and read reference values between appraisals (by their content);
these tests change the "default" of each under the same name, back and forth, on every worker.
"""

from __future__ import annotations

from typing import Callable

from .conftest import COVERING, Emulator, Server, admin_headers
from .test_service_http import ALLOW_ALL, DENY_ALL, _attest


def test_a_new_version_is_used_at_once(db_url: str, make_server: Callable[..., Server], emulator: Emulator) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root, workers=2)
    srv.cover()
    strict = dict(COVERING, id="strict", registers={"rtmr3": {"sha384": ["00" * 48]}})
    h = admin_headers()
    with srv.client() as c:
        steps = [("policies", {"rego": ALLOW_ALL}, "affirming", ("default@1", "default@1")),
                 ("policies", {"rego": DENY_ALL}, "contraindicated", ("default@2", "default@1")),
                 ("policies", {"rego": ALLOW_ALL}, "affirming", ("default@3", "default@1")),  # v1's text again
                 ("refvals", {"document": strict}, "contraindicated", ("default@3", "default@2")),
                 ("refvals", {"document": COVERING}, "affirming", ("default@3", "default@3"))]
        for kind, body, status, ids in steps:
            assert c.put(f"/{kind}/default", json=body, headers=h).status_code == 201
            for _ in range(4):  # several requests, so that both workers are likely to serve one
                r = _attest(c, emulator)
                assert r.status_code == 201, r.text
                result = r.json()["result"]
                assert (r.json()["status"], (result["policy_id"], result["refvals_id"])) == (status, ids), result
