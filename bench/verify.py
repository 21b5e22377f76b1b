"""TDX quote verifications per second with cached collateral, beside dcap-qvl on the same quote.

    python bench/verify.py [--seconds 3] [--json]

Both verify the production SPR quote of the fixtures (go-tdx-guest/tdx_prod_quote_SPR_E4.dat)
at its fixed time with the same sample collateral (TCB info, QE identity, PCK and root CRLs):
signatures, the PCK chain to the Intel root, CRLs, the collateral's signatures and the TCB
level search.  The sample TCB info has no level for this platform, so both end in "no
matching TCB level" after doing all the work: the comparison is of the same verification.
dcap-qvl (Python bindings of Phala's Rust verifier) is installed into a separate venv under
.state/bench-dcap-qvl, never into tsmr's environment.  Also timed: tsmr without collateral, and
tsmr with its verification caches emptied before every call (the cost of first use).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fixtures_dir import FixtureMissing, fixture_file  # noqa: E402  (the test suite's resolver)

WHEN = datetime(2023, 7, 1, 1, tzinfo=timezone.utc)

DCAP = r"""
import calendar, datetime, json, sys, time
import dcap_qvl
F, seconds = sys.argv[1], float(sys.argv[2])
rd = lambda n: open(F + "/" + n, "rb").read()
def signed_object(resp, key):
    s = resp.decode(); i = s.index('"%s":' % key) + len(key) + 3; depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i:j + 1]
tcb, qe = json.loads(rd("sample_tcbInfo_response")), json.loads(rd("sample_qeIdentity_response"))
col = dcap_qvl.QuoteCollateralV3.from_json(json.dumps({
    "pck_crl_issuer_chain": rd("pckcrl_issuer_chain.pem").decode(), "root_ca_crl": rd("rootcrl.der").hex(),
    "pck_crl": rd("pckcrl").hex(), "tcb_info_issuer_chain": rd("tcbinfo_issuer_chain.pem").decode(),
    "tcb_info": signed_object(rd("sample_tcbInfo_response"), "tcbInfo"), "tcb_info_signature": tcb["signature"],
    "qe_identity_issuer_chain": rd("qeidentity_issuer_chain.pem").decode(),
    "qe_identity": signed_object(rd("sample_qeIdentity_response"), "enclaveIdentity"), "qe_identity_signature": qe["signature"]}))
q = rd("tdx_prod_quote_SPR_E4.dat")
now = calendar.timegm(datetime.datetime(2023, 7, 1, 1).timetuple())
outcome = None
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    try:
        dcap_qvl.verify(q, col, now); outcome = "verified"
    except ValueError as exc:
        outcome = str(exc)
    n += 1
print(json.dumps({"per_second": n / (time.perf_counter() - t0), "count": n, "outcome": outcome}))
"""


def dcap_env() -> Path | None:
    venv = ROOT / ".state" / "bench-dcap-qvl"
    py = venv / "bin" / "python"
    if not py.exists():
        if subprocess.run([sys.executable, "-m", "venv", str(venv)]).returncode != 0:
            return None
    if subprocess.run([str(py), "-c", "import dcap_qvl"], capture_output=True).returncode != 0:
        if subprocess.run([str(py), "-m", "pip", "install", "-q", "dcap-qvl"], capture_output=True).returncode != 0:
            return None
    return py


def rate(fn, seconds: float) -> tuple[float, int, str]:  # type: ignore[no-untyped-def]
    from tsmr.errors import EvidenceError

    n, outcome, t0 = 0, "", time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            fn()
            outcome = "verified"
        except EvidenceError as exc:
            outcome = f"{exc.check}: {exc}"[:90]
        n += 1
    return n / (time.perf_counter() - t0), n, outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from tsmr.evidence import tdx

    try:
        gtg = fixture_file("go-tdx-guest")
    except FixtureMissing as e:
        sys.exit(f"bench/verify.py: {e}")
    q = (gtg / "tdx_prod_quote_SPR_E4.dat").read_bytes()
    rd = lambda n: (gtg / n).read_bytes()  # noqa: E731
    col = tdx.Collateral.from_pcs(
        tcb_info_response=rd("sample_tcbInfo_response"), tcb_info_issuer_chain=rd("tcbinfo_issuer_chain.pem"),
        pck_crl=rd("pckcrl"), pck_crl_issuer_chain=rd("pckcrl_issuer_chain.pem"),
        qe_identity_response=rd("sample_qeIdentity_response"), qe_identity_issuer_chain=rd("qeidentity_issuer_chain.pem"),
        root_ca_crl=rd("rootcrl.der"))
    rows = []
    r, n, out = rate(lambda: tdx.verify_quote(q, now=WHEN, collateral=col), args.seconds)
    rows.append({"case": "tsmr, with collateral", "per_second": r, "count": n, "outcome": out})
    py = dcap_env()
    if py is None:
        rows.append({"case": "dcap-qvl, with collateral", "per_second": None, "count": 0, "outcome": "dcap-qvl could not be installed"})
    else:
        proc = subprocess.run([str(py), "-c", DCAP, str(gtg), str(args.seconds)], capture_output=True, text=True)
        res = json.loads(proc.stdout) if proc.returncode == 0 else {"per_second": None, "count": 0, "outcome": proc.stderr[-200:]}
        rows.append({"case": "dcap-qvl, with collateral", **res})
    r, n, out = rate(lambda: tdx.verify_quote(q, now=WHEN), args.seconds)
    rows.append({"case": "tsmr, signatures and chain only", "per_second": r, "count": n, "outcome": out})

    def cold() -> None:
        tdx.clear_caches()
        tdx.verify_quote(q, now=WHEN, collateral=col)

    r, n, out = rate(cold, args.seconds)
    rows.append({"case": "tsmr, with collateral, caches emptied", "per_second": r, "count": n, "outcome": out})
    base = rows[1]["per_second"]
    for row in rows:
        row["vs_dcap_qvl"] = (row["per_second"] / base) if row["per_second"] and base else None
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'case':38} {'verifications/s':>16} {'vs dcap-qvl':>12}  outcome")
    for row in rows:
        ps = f"{row['per_second']:,.0f}" if row["per_second"] else "-"
        ratio = f"{row['vs_dcap_qvl']:.2f}" if row["vs_dcap_qvl"] else "-"
        print(f"{row['case']:38} {ps:>16} {ratio:>12}  {row['outcome']}")


if __name__ == "__main__":
    main()
