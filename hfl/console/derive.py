"""What the console's views show, computed from a Snapshot: pure functions, no Streamlit, no gRPC.

Tables are lists of plain dicts (column name -> value) so the views only render them and tests can
compare them with what the leader, the authority and the ledger say.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from hfl.console.data import Snapshot
from hfl.domain import RoundEvent, SecurityReport

# Fill colours per specialty in the federation map (colour-blind-safe Okabe-Ito palette).
SPECIALTY_COLOURS = {
    "hospital": "#56B4E9",
    "clinic": "#009E73",
    "research": "#CC79A7",
    "emergency": "#E69F00",
}
STATUS_STYLE = {
    "quarantined": 'color="#D55E00", penwidth=3, style="filled,bold"',
    "revoked: needs a new token": 'color="#D55E00", style="filled,dashed"',
    "absent": 'color="#999999", style="filled,dashed"',
    "out of privacy budget": 'color="#F0E442", penwidth=3, style="filled"',
    "dropped out": 'color="#000000", style="filled,dashed"',
}


def _num(x: float, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


def facility_status(snap: Snapshot, node_id: str) -> str:
    """One word (or a few) for where a facility stands: quarantined, revoked (released or revoked by hand,
    it takes part again only after enrolling with a new token), absent, out of budget, dropped out of
    the latest round, training, waiting (registered but not in the latest round), or done once training
    has ended."""
    if snap.nodes and node_id in snap.nodes.quarantined:
        return "quarantined"
    if snap.security and any(c.node_id == node_id and c.revoked for c in snap.security.certificates):
        return "revoked: needs a new token"
    if snap.nodes and node_id in snap.nodes.inactive:
        return "absent"
    if snap.privacy and node_id in snap.privacy.exhausted:
        return "out of privacy budget"
    if snap.leader is not None and snap.leader.finished:
        return "done: training has ended"
    latest = snap.latest
    if latest is None:
        return "waiting"
    for b in latest.buckets:
        if node_id in b.dropped:
            return "dropped out"
        if node_id in b.members:
            return "training"
    return "waiting"


def _quote(s: str) -> str:
    """A DOT string literal: backslashes and quotes escaped, line breaks as DOT's own \\n."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def map_dot(snap: Snapshot) -> str:
    """Graphviz DOT of the federation: authority and leader, each fog with this round's buckets (boxes
    holding their facilities, coloured by specialty, outlined by status), and the validators (the
    current committee in bold). Facilities outside the latest round hang below the fogs."""
    nodes = snap.nodes.nodes if snap.nodes else ()
    specialty = {n.node_id: n.specialty for n in nodes if n.role == "facility"}
    latest = snap.latest
    committee = set(latest.committee) if latest else set()
    lines = [
        "digraph federation {",
        "  rankdir=TB; compound=true; node [shape=box, style=filled, fillcolor=white, fontsize=10];",
        '  authority [label="authority\\n(certificates, schedule)", shape=hexagon];',
        '  leader [label="leader\\n(global model)", shape=doubleoctagon];',
        "  authority -> leader [style=dotted, arrowhead=none];",
    ]
    fogs = sorted(
        {n.node_id for n in nodes if n.role == "fog"} | {b.fog_id for b in (latest.buckets if latest else ())}
    )
    placed: set[str] = set()
    for fog in fogs:
        lines.append(f"  {_quote(fog)} [shape=ellipse];")
        lines.append(f"  leader -> {_quote(fog)};")
    for b in latest.buckets if latest else ():
        cluster = _quote(f"cluster_{b.bucket_id}")
        state = " (flagged)" if b.flagged else " (abandoned)" if b.abandoned else ""
        colour = ', color="#D55E00", penwidth=2' if b.flagged else ""
        lines.append(f"  subgraph {cluster} {{ label={_quote(f'bucket {b.bucket_id}{state}')}{colour};")
        for m in b.members:
            placed.add(m)
            lines.append("    " + _facility_node(snap, m, specialty.get(m, "")))
        lines.append("  }")
        if b.members:
            lines.append(f"  {_quote(b.fog_id)} -> {_quote(b.members[0])} [lhead={cluster}];")
    for fid in sorted(set(specialty) - placed):
        lines.append("  " + _facility_node(snap, fid, specialty[fid]))
    for v in sorted(n.node_id for n in nodes if n.role == "validator"):
        bold = ", penwidth=3" if v in committee else ", style=dashed"
        lines.append(f"  {_quote(v)} [shape=diamond{bold}];")
        lines.append(f"  leader -> {_quote(v)} [style=dotted, arrowhead=none];")
    lines.append("}")
    return "\n".join(lines)


def _facility_node(snap: Snapshot, node_id: str, specialty: str) -> str:
    status = facility_status(snap, node_id)
    fill = SPECIALTY_COLOURS.get(specialty, "#FFFFFF")
    style = STATUS_STYLE.get(status, "")
    label = f"{node_id}\n{specialty or '-'}\n{status}"
    return (
        f"{_quote(node_id)} [label={_quote(label)}, fillcolor={_quote(fill)}{', ' + style if style else ''}];"
    )


def leader_state(state: str) -> tuple[str, str]:
    """The leader's state split into a few words for a metric and the rest for its caption, e.g.
    "finished: all planned rounds are done" -> ("finished", "all planned rounds are done")."""
    head, _, rest = state.partition(": ")
    return head, rest


def facility_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """Every registered facility with its specialty and where it stands now."""
    if snap.nodes is None:
        return []
    return [
        {
            "name": n.node_id,
            "specialty": n.specialty or "not given",
            "status": facility_status(snap, n.node_id),
        }
        for n in snap.nodes.by_role("facility")
    ]


def bucket_rows(event: RoundEvent | None) -> list[dict[str, Any]]:
    """The buckets of one round attempt: the fog serving each, its members and what became of it. Cells
    never hold a lone "-": st.table renders cells as Markdown, where "-" becomes a bullet."""
    if event is None:
        return []
    return [
        {
            "bucket": b.bucket_id,
            "fog": b.fog_id,
            "members": ", ".join(b.members),
            "dropped out": ", ".join(b.dropped) or "none",
            "outcome": "flagged" if b.flagged else "abandoned" if b.abandoned else "used",
        }
        for b in event.buckets
    ]


def training_rows(rounds: Sequence[RoundEvent]) -> list[dict[str, Any]]:
    """One row per round attempt: outcome, accuracy and clinical metrics, time and traffic."""
    out = []
    for e in rounds:
        c = e.clinical
        out.append(
            {
                "round": e.round,
                "committed": e.committed,
                "accuracy": _num(e.accuracy),
                "AUC": _num(c.auc) if c else None,
                "sensitivity": _num(c.sensitivity) if c else None,
                "specificity": _num(c.specificity) if c else None,
                "loss": _num(e.loss),
                "seconds": round(e.duration_s, 2),
                "MB moved": round(e.bytes_sent / 1e6, 3),
                "facilities": e.participants,
                "dropouts": e.dropouts,
                "outcome": e.detail if e.committed else f"not committed: {e.detail}",
            }
        )
    return out


def specialty_rows(event: RoundEvent | None) -> list[dict[str, Any]]:
    """Results per specialty of one committed round, each accuracy beside its baseline (always giving the
    specialty's more common answer); groups too small to report say why."""
    if event is None:
        return []
    return [
        {
            "specialty": r.specialty,
            "facilities": r.facilities,
            "accuracy": None if r.not_reported else _num(r.accuracy),
            "baseline": None if r.not_reported or r.clinical is None else _num(r.clinical.baseline_accuracy),
            "AUC": None if r.not_reported or r.clinical is None else _num(r.clinical.auc),
            "note": r.not_reported or "",
        }
        for r in event.specialties
    ]


def vote_rows(rounds: Sequence[RoundEvent]) -> list[dict[str, Any]]:
    """Who voted what on every round attempt, with each refusal's reason."""
    return [
        {
            "round": e.round,
            "validator": v.validator,
            "vote": "accept" if v.accept else "no answer" if not v.answered else "reject",
            "reason": v.reason or "-",
            "block committed": e.committed,
        }
        for e in rounds
        for v in e.votes
    ]


def committee_rows(rounds: Sequence[RoundEvent]) -> list[dict[str, Any]]:
    """Committees over time: consecutive rounds with the same committee form one row."""
    out: list[dict[str, Any]] = []
    for e in rounds:
        members = ", ".join(e.committee)
        if not members:
            continue
        if out and out[-1]["committee"] == members:
            out[-1]["last round"] = e.round
        else:
            out.append({"first round": e.round, "last round": e.round, "committee": members})
    return out


def epsilon_per_round(rounds: Sequence[RoundEvent]) -> float | None:
    """ε the worst-off facility spends per committed round, from the last rounds (None before two)."""
    eps = [e.epsilon for e in rounds if e.committed and not math.isnan(e.epsilon)]
    recent = eps[-5:]
    if len(recent) < 2 or recent[-1] <= recent[0]:
        return None
    return (recent[-1] - recent[0]) / (len(recent) - 1)


def privacy_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """ε spent per facility against the budget, and rounds left at the current rate (the worst-off
    facility's spend per round, so the estimate errs on the short side)."""
    p = snap.privacy
    if p is None:
        return []
    rate = epsilon_per_round(snap.rounds)
    out = []
    for f, e in sorted(p.epsilon_spent.items()):
        left = p.budget - e if p.budget > 0 else None
        estimate = max(0, math.floor(left / rate + 1e-9)) if left is not None and rate else "not known yet"
        out.append(
            {
                "facility": f,
                "ε spent": round(e, 4),
                "budget": p.budget or None,
                "used": f"{100 * e / p.budget:.0f} %" if p.budget > 0 else "no budget",
                "rounds left (about)": "none" if f in p.exhausted else estimate,
            }
        )
    return out


def flagged_rows(rounds: Sequence[RoundEvent]) -> list[dict[str, Any]]:
    """Every bucket the robust rule flagged: its round, fog and members (one of them may be to blame)."""
    return [
        {"round": e.round, "bucket": b.bucket_id, "fog": b.fog_id, "members": ", ".join(b.members)}
        for e in rounds
        for b in e.buckets
        if b.flagged
    ]


def attention(snap: Snapshot) -> list[str]:
    """Plain sentences for what needs a person now (shown as a banner on every view)."""
    out = list(snap.problems)
    if snap.nodes and snap.nodes.quarantined:
        out.append(
            "Quarantined facilities: "
            + ", ".join(snap.nodes.quarantined)
            + ". Investigate, then release them with a reason if they are honest."
        )
    if snap.privacy and snap.privacy.budget > 0:
        near = [f for f, e in sorted(snap.privacy.epsilon_spent.items()) if e >= 0.8 * snap.privacy.budget]
        if near:
            out.append("Past 80 % of their privacy budget: " + ", ".join(near) + ".")
    if snap.nodes and snap.nodes.inactive:
        out.append("Absent (missed their last rounds): " + ", ".join(snap.nodes.inactive) + ".")
    recent = snap.rounds[-3:]
    if len(recent) == 3 and not any(e.committed for e in recent):
        out.append(f"The last 3 round attempts were not committed: {recent[-1].detail}")
    soon = expiring(snap.security, dt.datetime.now(dt.UTC))
    if soon:
        out.append(
            "Certificates expiring within the hour (they should have renewed): " + ", ".join(soon) + "."
        )
    if snap.ended and snap.ended != "all planned rounds are done":
        out.append(f"Training has ended: {snap.ended}")
    return out


def suspicion_rows(report: SecurityReport | None) -> list[dict[str, Any]]:
    """Every facility's suspicion now against the quarantine threshold, most suspicious first."""
    if report is None:
        return []
    return [
        {
            "facility": f,
            "suspicion": round(s, 3),
            "share of the threshold": f"{100 * s / report.quarantine_threshold:.0f} %",
            "quarantined in round": report.quarantined.get(f),
        }
        for f, s in sorted(report.suspicion.items(), key=lambda x: (-x[1], x[0]))
    ]


def suspicion_chart(report: SecurityReport | None, top: int = 8) -> dict[str, list[Any]]:
    """Suspicion per round of the ``top`` facilities most suspected now (one line each) and the rounds
    themselves (key "round", for the x axis), for a chart. A round a facility sat out (no value) between
    two of its values keeps its last value, since suspicion only changes in rounds it takes part in; a
    gap would otherwise hide a lone newest point, such as the round that crossed the threshold."""
    if report is None or not report.history:
        return {}
    worst = [f for f, s in sorted(report.suspicion.items(), key=lambda x: (-x[1], x[0]))[:top] if s > 0]
    chart: dict[str, list[Any]] = {"round": [rnd for rnd, _ in report.history]}
    for f in worst:
        values = [h.get(f) for _, h in report.history]
        known = [i for i, v in enumerate(values) if v is not None]
        for i in range(known[0] + 1, known[-1]) if known else ():
            if values[i] is None:
                values[i] = values[i - 1]
        chart[f] = values
    return chart


# What a refused call's status means, for someone who does not know gRPC's status codes.
REFUSAL_MEANINGS = {
    "UNAUTHENTICATED": "no valid certificate (for example a revoked or quarantined node still calling)",
    "PERMISSION_DENIED": "a role that may not make this call",
    "INVALID_ARGUMENT": "bad input (for example a missing reason or name)",
    "NOT_FOUND": "an unknown node",
    "FAILED_PRECONDITION": "not possible now (for example already quarantined)",
    "ALREADY_EXISTS": "already done or already there",
    "RESOURCE_EXHAUSTED": "too many calls or too much data",
}


def refused_rows(refused: dict[str, int]) -> list[dict[str, Any]]:
    """The authority's refused calls ("Method: STATUS" -> times) with the status in plain words."""
    rows = []
    for key, times in sorted(refused.items()):
        call, _, code = key.partition(": ")
        meaning = REFUSAL_MEANINGS.get(code, "")
        rows.append(
            {"call": call, "why": f"{meaning} ({code})" if meaning else code or "not given", "times": times}
        )
    return rows


def certificate_rows(report: SecurityReport | None, now: dt.datetime) -> list[dict[str, Any]]:
    """Each node's newest certificate with the hours it has left, soonest first."""
    if report is None:
        return []
    rows = []
    for c in report.certificates:
        expires = dt.datetime.fromisoformat(c.expires)
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
        rows.append(
            {
                "node": c.node_id,
                "role": c.role,
                "expires (UTC)": expires.strftime("%Y-%m-%d %H:%M"),
                "hours left": round((expires - now).total_seconds() / 3600, 1),
                "revoked": c.revoked,
            }
        )
    return sorted(rows, key=lambda r: r["hours left"])


def expiring(report: SecurityReport | None, now: dt.datetime, hours: float = 1.0) -> list[str]:
    """Nodes whose certificate (not revoked) expires within ``hours``: they should have renewed by now
    (nodes renew when a third of the lifetime is left)."""
    return [r["node"] for r in certificate_rows(report, now) if not r["revoked"] and r["hours left"] < hours]
