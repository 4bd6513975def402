"""The console's Streamlit script (`hfl console` runs it). Views only render hfl.console.data snapshots.

Where the federation is comes from HFL_CONSOLE_RUN, or HFL_CONSOLE_LEADER/_AUTHORITY/_CERT_DIR (set by
`hfl console` from its --run, --leader, --authority, --cert-dir, as for `hfl status`).
"""

from __future__ import annotations

import datetime as dt
import os

import streamlit as st

from hfl.console.auth import Login, NoPassword, password_from_env
from hfl.console.data import (
    Connection,
    Snapshot,
    check_ledger,
    control_training,
    current_model,
    enrolment_token,
    quarantine,
    release,
    revoke,
    run_dataset,
    snapshot,
)
from hfl.console.derive import (
    attention,
    bucket_rows,
    certificate_rows,
    committee_rows,
    facility_rows,
    flagged_rows,
    leader_state,
    map_dot,
    privacy_rows,
    refused_rows,
    specialty_rows,
    suspicion_chart,
    suspicion_rows,
    training_rows,
    vote_rows,
)


@st.cache_resource
def _login() -> Login:
    """One Login for every browser session, so the lock-out holds across tabs."""
    return Login(password_from_env())


def _connection() -> Connection:
    env = {
        k: os.environ.get(f"HFL_CONSOLE_{k.upper()}") or None
        for k in ("run", "leader", "authority", "cert_dir")
    }
    return Connection.from_args(env["run"], env["leader"], env["authority"], env["cert_dir"])


def _number(label: str, value: int | str, meaning: str) -> None:
    st.metric(label, value)
    st.caption(meaning)


def _when(iso: str) -> str:
    """An ISO time in UTC as "2026-12-05 20:31:45" (no "T", no offset)."""
    return iso[:19].replace("T", " ")


def _gate() -> bool:
    if st.session_state.get("signed_in"):
        return True
    try:
        login = _login()
    except NoPassword as e:
        st.error(str(e))
        return False
    st.title("hfl console: sign in")
    with st.form("login"):
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        ok, message = login.attempt(password)
        if ok:
            st.session_state["signed_in"] = True
            st.rerun()
        st.error(message)
    return False


def _map(snap: Snapshot) -> None:
    st.header("Federation map")
    if snap.nodes is None:
        st.info("The authority did not answer, so the list of members is not known.")
        return
    latest = snap.latest
    st.caption(
        "Each box is one hospital or clinic (its colour is its specialty: blue hospital, green clinic, pink "
        "research, orange emergency). Boxes are grouped into this round's buckets: a fog (regional server) "
        "only ever learns the sum of a bucket, never one facility's update. Bold diamonds are the "
        "validators on this round's committee."
        + (f" Shown: round {latest.round}." if latest else " No round has started yet.")
    )
    st.graphviz_chart(
        map_dot(snap),
        width="stretch",
        alt="Diagram of the federation: fogs, buckets, facilities and validators",
    )
    for role in ("authority", "leader", "validator", "fog", "facility"):
        members = snap.nodes.by_role(role)
        if not members:
            continue
        st.subheader(f"{role.capitalize()} ({len(members)})")
        if role == "facility":
            st.table(facility_rows(snap))
        else:
            committee = set(latest.committee) if latest else set()
            st.table(
                [
                    {"name": n.node_id, "address": n.address}
                    | ({"on the committee": n.node_id in committee} if role == "validator" else {})
                    for n in members
                ]
            )
    if latest is not None:
        st.subheader(f"Buckets of round {latest.round}")
        st.caption("Which fog served each bucket, who was in it, and whether its sum was used.")
        st.table(bucket_rows(latest))


def _training(snap: Snapshot) -> None:
    st.header("Training")
    if snap.leader is None:
        st.info("The leader did not answer.")
        return
    left, middle, right = st.columns(3)
    with left:
        _number("Rounds committed", snap.leader.committed_round, "Training rounds the validators agreed on.")
    with middle:
        _number(
            "Target rounds",
            snap.leader.target_rounds or "unlimited",
            "How many rounds this federation was asked to run.",
        )
    with right:
        state, detail = leader_state(snap.leader.state)
        _number("State", state, f"What the leader is doing right now{': ' + detail if detail else ''}.")
    committed = snap.committed
    if not snap.rounds:
        st.info("No round has finished since the leader started.")
        return
    if committed:
        last = committed[-1]
        left, middle, right = st.columns(3)
        with left:
            _number(
                "Accuracy",
                f"{last.accuracy:.3f}",
                "Share of the facilities' held-out patients the model got right (last committed round).",
            )
        if last.clinical is not None:
            c = last.clinical
            with middle:
                _number(
                    "ROC AUC",
                    f"{c.auc:.3f}",
                    "How well the model ranks a patient with the outcome above one without (0.5 is chance, "
                    "1 is perfect).",
                )
            with right:
                _number(
                    "Baseline",
                    f"{c.baseline_accuracy:.3f}",
                    "Accuracy of always giving the more common answer: the model should beat it.",
                )
        reference = snap.summary.get("centralized_accuracy") if snap.summary else None
        chart = [
            {
                "committed round": e.round,
                "accuracy": e.accuracy,
                "AUC": e.clinical.auc if e.clinical else None,
                **({"centralised reference": float(reference)} if isinstance(reference, int | float) else {}),
            }
            for e in committed
        ]
        st.subheader("Accuracy and AUC per committed round")
        st.caption(
            "The centralised reference (when known) is the same model trained on all data pooled in one "
            "place, which the federation never does."
        )
        st.line_chart(chart, x="committed round", y_label="score")
        st.subheader("Results per specialty (last committed round)")
        st.caption(
            "From the summed results of at least three facilities of a specialty, never one site's. "
            "Baseline: the accuracy of always giving that specialty's more common answer; the model "
            "should beat it."
        )
        st.table(specialty_rows(last))
    st.subheader("Every round attempt")
    st.caption(
        "Sensitivity: patients with the outcome the model flags; specificity: patients without it it leaves "
        "alone. Loss: the model's average error on those patients (lower is better). Facilities: those in "
        "the round's buckets; dropouts: those that left mid-round. Seconds and MB moved: time and traffic "
        "of the round across the federation."
    )
    st.dataframe(training_rows(snap.rounds), hide_index=True)


def _privacy(snap: Snapshot) -> None:
    st.header("Privacy")
    if snap.privacy is None:
        st.info("The authority did not answer.")
        return
    p = snap.privacy
    if p.budget <= 0:
        st.warning(
            "Differential privacy is off in this federation: no noise is added to the facilities' training, "
            "so there is no privacy budget (ε) to track. Patient records still stay at each facility, but "
            "the shared model updates carry no formal guarantee about what could be learned about single "
            "patients."
        )
        return
    st.caption("ε (epsilon) measures how much a facility's patients could be learned about; lower is safer.")
    _number("Budget per facility", f"ε = {p.budget:g}", "The most privacy any facility may spend in all.")
    _number("δ", f"{p.delta:g}", "The small chance the ε guarantee does not hold.")
    _number(
        "Noise",
        p.mechanism,
        "The kind of random noise added to each facility's training so single patients cannot be seen.",
    )
    st.caption(
        "Each facility also publishes its number of patients and share with the outcome once, with "
        "noise added (a small part of its budget)."
    )
    st.table(privacy_rows(snap))
    if p.exhausted:
        st.warning("Budget used up, no longer training: " + ", ".join(p.exhausted))


def _ledger(snap: Snapshot) -> None:
    st.header("Consensus and ledger")
    if snap.leader is None:
        st.info("The leader did not answer.")
        return
    _number(
        "Ledger height",
        snap.leader.committed_round + 1,
        "Blocks in the shared record: one per committed round, plus the first (genesis) block.",
    )
    _number(
        "Ledger head", snap.leader.head_hash[:16], "Fingerprint of the newest block of the shared record."
    )
    committed = snap.committed
    if committed:
        last = committed[-1]
        st.subheader(f"Newest block (round {last.round})")
        st.caption(
            "A block is committed when enough committee members sign it (the quorum certificate). Its hash "
            "chains it to the block before, so no one can change history unnoticed."
        )
        st.table(
            [
                {"field": "block hash", "value": last.block_hash.hex()},
                {"field": "signed by", "value": ", ".join(v.validator for v in last.votes if v.accept)},
                {"field": "accepting votes", "value": f"{last.accepts} of {len(last.committee)}"},
            ]
        )
    if st.button("Check the ledger"):
        ok, message = check_ledger(_connection().run)
        (st.success if ok else st.error)(message)
    st.subheader("Votes per round")
    st.caption("Each committee member re-checks the proposed model and accepts or refuses it, with a reason.")
    st.dataframe(vote_rows(snap.rounds), hide_index=True)
    st.subheader("Committees")
    st.caption(
        "The validators on duty; the committee is drawn again every few rounds (an epoch), favouring "
        "validators whose past votes agreed with the certified outcome and that answered in time."
    )
    st.table(committee_rows(snap.rounds))


def _security(snap: Snapshot) -> None:
    st.header("Security")
    quarantined = snap.nodes.quarantined if snap.nodes else ()
    _number(
        "Quarantined facilities",
        len(quarantined),
        "Facilities kept out because the buckets they were in kept being flagged. Only bucket sums are "
        "seen, so an honest facility that kept sharing buckets with a dishonest one could be caught too, "
        "rarely: the chance is stated in the authority's log (at most 1 % over 100 rounds by default). "
        "Check a quarantined site before you release it.",
    )
    flagged = flagged_rows(snap.rounds)
    _number(
        "Flagged buckets",
        len(flagged),
        "Bucket sums the robust rule set aside as suspicious (one member may be to blame).",
    )
    report = snap.security
    if report is not None:
        st.subheader("Suspicion per facility")
        st.caption(
            "Each time a facility's bucket is flagged its suspicion grows, and it falls in clean rounds. "
            f"At {report.quarantine_threshold:.3f} the facility is quarantined: left out and its certificate "
            "revoked, until an operator releases it."
        )
        chart = suspicion_chart(report)
        if chart:
            st.line_chart(chart, x="round", x_label="round", y_label="suspicion")
        st.dataframe(suspicion_rows(report), hide_index=True)
    if flagged:
        st.subheader("Flagged buckets")
        st.table(flagged)
    absent = snap.nodes.inactive if snap.nodes else ()
    if absent:
        st.subheader("Absent facilities")
        st.caption("Left out after missing rounds in a row; they come back when they connect again.")
        st.table([{"facility": f} for f in absent])
    if report is None:
        return
    st.subheader("Enrolments, revocations and releases")
    st.caption("Who joined with which kind of token, whose certificates were revoked, and who was released.")
    st.dataframe(
        [
            {"node": r.node_id, "what": r.action, "when (UTC)": _when(r.at), "reason": r.reason, "by": r.by}
            for r in report.records
        ],
        hide_index=True,
    )
    if report.shared_tokens:
        st.caption("Shared enrolment tokens (one token for several new facilities) and their uses left.")
        st.table(
            [
                {
                    "for": t.role,
                    "used": t.used,
                    "uses left": t.max_uses - t.used,
                    "expires": t.expires[:16] or "not set",
                }
                for t in report.shared_tokens
            ]
        )
    st.subheader("Certificates")
    st.caption(
        "Every node proves who it is with a certificate from the authority; it renews it by itself before "
        "it expires. Soonest to expire first."
    )
    st.dataframe(certificate_rows(report, dt.datetime.now(dt.UTC)), hide_index=True)
    st.subheader("Refused calls")
    st.caption(
        "Calls the authority turned away, by kind and reason. A quarantined or revoked node keeps calling "
        "until it enrols again, so its count goes on growing; that alone is no attack."
    )
    if report.refused:
        st.table(refused_rows(report.refused))
    else:
        st.write("None so far.")


def _done(ok: bool, message: str) -> None:
    (st.success if ok else st.error)(message)


def _controls(snap: Snapshot) -> None:
    st.header("Controls")
    st.caption(
        "Every control needs a reason. The leader or the authority carries it out and records who did it, "
        "when and why; the record is listed at the bottom of this page."
    )
    conn = _connection()
    if snap.leader is not None:
        c = snap.leader.control
        _, detail = leader_state(snap.leader.state)
        _number(
            "Training",
            "finished" if snap.leader.finished else f"paused ({c.pause_reason})" if c.paused else "running",
            (f"Training has ended: {detail}. " if snap.leader.finished and detail else "")
            + "Paused training finishes the current round, then waits until someone resumes it.",
        )
        with st.form("training"):
            st.subheader("Pause, resume, stop after a round, round interval")
            what = st.radio(
                "Control",
                ["Pause", "Resume", "Stop after round", "Round interval"],
                horizontal=True,
                key="control_kind",
            )
            last = st.number_input(
                "Stop after round (0: as planned)", min_value=0, value=int(c.stop_after or 0), step=1
            )
            seconds = st.number_input(
                "Seconds between rounds (-1: as configured)", min_value=-1.0, value=c.round_interval_s or -1.0
            )
            reason = st.text_input("Reason", key="control_reason")
            if st.form_submit_button("Apply"):
                action = {
                    "Pause": "pause",
                    "Resume": "resume",
                    "Stop after round": "stop_after",
                    "Round interval": "round_interval",
                }[what or "Pause"]
                _done(*control_training(conn, action, reason, round_=int(last), seconds=float(seconds)))
    if snap.nodes is not None:
        facilities = [n.node_id for n in snap.nodes.by_role("facility")]
        with st.form("release"):
            st.subheader("Release a quarantined facility")
            st.caption(
                "After you have checked it. It takes part again only once it enrols with a new one-time "
                "token: make one below, under Enrolment token."
            )
            who = st.selectbox("Facility", list(snap.nodes.quarantined) or ["(none is quarantined)"])
            reason = st.text_input("Reason", key="release_reason")
            if st.form_submit_button("Release"):
                _done(*release(conn, who or "", reason))
        with st.form("quarantine"):
            st.subheader("Quarantine or revoke by hand")
            st.caption(
                "Quarantine: the facility is left out of training and its certificates are revoked until "
                "it is released. Revoke: any node (facility, fog, validator) loses its certificates."
            )
            who = st.selectbox(
                "Node", facilities + [n.node_id for n in snap.nodes.nodes if n.role in ("fog", "validator")]
            )
            how = st.radio("Action", ["Quarantine", "Revoke"], horizontal=True, key="quarantine_kind")
            reason = st.text_input("Reason", key="quarantine_reason")
            if st.form_submit_button("Apply"):
                _done(*(quarantine if how == "Quarantine" else revoke)(conn, who or "", reason))
        with st.form("token"):
            st.subheader("Enrolment token for a new or released facility")
            st.caption("A one-time token the new site starts with (HFL_ENROL_TOKEN); it is shown only once.")
            name = st.text_input("Facility's name (for example hospital-north)", key="token_name")
            hours = st.number_input("Valid for (hours)", min_value=1.0, max_value=8760.0, value=24.0)
            if st.form_submit_button("Make a token"):
                ok, message, token = enrolment_token(conn, name, float(hours))
                _done(ok, message)
                if ok:
                    st.code(token, language=None)
    if snap.leader is not None and snap.leader.committed_round > 0:
        st.subheader("Download the current model")
        st.caption(
            "The ledger is checked first, as `hfl model export` does; then the model is offered as .npz."
        )
        known = run_dataset(conn)
        dataset = known or st.selectbox("The data the federation trains on", ["synthetic", "breast_cancer"])
        if st.button("Prepare the download"):
            try:
                data, name = current_model(conn, dataset)
            except ValueError as e:
                st.error(str(e))
            else:
                st.download_button(f"Download {name}", data, file_name=name, mime="application/octet-stream")
    st.subheader("What operators did")
    if snap.actions:
        st.dataframe(
            [
                {
                    "when (UTC)": _when(a.at),
                    "who": a.by,
                    "what": a.action.replace("_", " "),
                    "on": a.target,
                    "why": a.reason,
                    "result": a.result,
                }
                for a in snap.actions
            ],
            hide_index=True,
        )
    else:
        st.write("No operator action has been recorded yet.")


VIEWS = {
    "Federation map": _map,
    "Training": _training,
    "Privacy": _privacy,
    "Consensus and ledger": _ledger,
    "Security": _security,
    "Controls": _controls,
}


def main() -> None:
    st.set_page_config(page_title="hfl console", layout="wide")
    if not _gate():
        return
    snap = snapshot(_connection())
    for line in attention(snap):
        st.warning("Needs attention: " + line)
    view = st.sidebar.radio("View", list(VIEWS))
    VIEWS[view](snap)


main()
