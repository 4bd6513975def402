"""The operator's security report (`GetSecurityReport`, the console's Security view): gathered from the
reputation state, the round reports, the certificate authority's records and this process's refused calls.
Nothing here changes state."""

from __future__ import annotations

from typing import Any

from hfl import bounds
from hfl.domain import CertificateStatus, SecurityRecord, SecurityReport, SharedTokenStatus
from hfl.pki.ca import CAStore
from hfl.rpc.metrics import refused_calls

HISTORY_ROUNDS = 50  # rounds of suspicion history in one report


def security_report(
    reputation: dict[str, Any], reports: list[tuple[int, dict[str, object]]], ca: CAStore | None
) -> SecurityReport:
    """``reputation``: Reputation.to_dict(); ``reports``: the newest round reports; ``ca``: None without
    TLS (no certificates)."""
    history = tuple(
        (rnd, {str(f): float(s) for f, s in dict(rep.get("suspicion") or {}).items()})  # type: ignore[call-overload]
        for rnd, rep in reports
        if rep.get("suspicion") is not None
    )
    certificates: tuple[CertificateStatus, ...] = ()
    tokens: tuple[SharedTokenStatus, ...] = ()
    records: list[SecurityRecord] = []
    if ca is not None:
        certificates = tuple(CertificateStatus(**c) for c in ca.certificates())
        tokens = tuple(SharedTokenStatus(**t) for t in ca.shared_tokens())
        records += [
            SecurityRecord(e["node_id"], f"enrolled ({e['token']} token)", e["used_at"])
            for e in ca.enrolments()
        ]
        records += [
            SecurityRecord(r["node_id"], "revoked", r["revoked_at"], r["reason"], r["by"])
            for r in ca.revocations()
        ]
        records += [
            SecurityRecord(r["node_id"], "released", r["released_at"], r["reason"]) for r in ca.releases()
        ]
    return SecurityReport(
        quarantine_threshold=float(reputation.get("threshold") or reputation["config"]["threshold"]),
        suspicion={str(f): float(s) for f, s in reputation["suspicion"].items()},
        quarantined={str(f): bounds.slot_round(int(o)) for f, o in reputation["quarantined"].items()},
        history=history,
        validator_weights={str(v): float(w) for v, w in reputation["weights"].items()},
        certificates=certificates,
        shared_tokens=tokens,
        records=tuple(sorted(records, key=lambda r: r.at)),
        refused=refused_calls(),
    )
