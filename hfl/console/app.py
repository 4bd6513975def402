"""The console's Streamlit script (`hfl console` runs it). Views only render hfl.console.data snapshots.

Where the federation is comes from HFL_CONSOLE_RUN, or HFL_CONSOLE_LEADER/_AUTHORITY/_CERT_DIR (set by
`hfl console` from its --run, --leader, --authority, --cert-dir, as for `hfl status`).
"""

from __future__ import annotations

import os

import streamlit as st

from hfl.console.auth import Login, NoPassword, password_from_env
from hfl.console.data import Connection, Snapshot, check_ledger, snapshot


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
    for role in ("authority", "leader", "validator", "fog", "facility"):
        members = snap.nodes.by_role(role)
        if not members:
            continue
        st.subheader(f"{role.capitalize()} ({len(members)})")
        st.table(
            [
                {
                    "name": n.node_id,
                    "specialty": n.specialty or "-",
                    "status": "quarantined"
                    if n.node_id in snap.nodes.quarantined
                    else "absent"
                    if n.node_id in snap.nodes.inactive
                    else "out of privacy budget"
                    if snap.privacy and n.node_id in snap.privacy.exhausted
                    else "taking part",
                }
                for n in members
            ]
        )


def _training(snap: Snapshot) -> None:
    st.header("Training")
    if snap.leader is None:
        st.info("The leader did not answer.")
        return
    _number("Rounds committed", snap.leader.committed_round, "Training rounds the validators agreed on.")
    _number(
        "Target rounds",
        snap.leader.target_rounds or "unlimited",
        "How many rounds this federation was asked to run.",
    )
    _number("State", snap.leader.state, "What the leader is doing right now.")
    rounds = snap.summary.get("rounds") if snap.summary else None
    if isinstance(rounds, list) and rounds:
        st.subheader("Per round (from the run's summary)")
        st.caption(
            "Accuracy: share of validation patients the model got right. Loss: its error; lower is better."
        )
        st.table(
            [
                {
                    k: r.get(k)
                    for k in ("round", "committed", "accuracy", "loss", "duration_s", "participants")
                }
                for r in rounds
                if isinstance(r, dict)
            ]
        )


def _privacy(snap: Snapshot) -> None:
    st.header("Privacy")
    if snap.privacy is None:
        st.info("The authority did not answer.")
        return
    st.caption("ε (epsilon) measures how much a facility's patients could be learned about; lower is safer.")
    st.table([{"facility": f, "ε spent": round(e, 4)} for f, e in sorted(snap.privacy.epsilon_spent.items())])
    if snap.privacy.exhausted:
        st.warning("Budget used up, no longer training: " + ", ".join(snap.privacy.exhausted))


def _ledger(snap: Snapshot) -> None:
    st.header("Consensus and ledger")
    if snap.leader is None:
        st.info("The leader did not answer.")
        return
    _number(
        "Ledger head", snap.leader.head_hash[:16], "Fingerprint of the newest block of the shared record."
    )
    if st.button("Check the ledger"):
        ok, message = check_ledger(_connection().run)
        (st.success if ok else st.error)(message)


def _security(snap: Snapshot) -> None:
    st.header("Security")
    quarantined = snap.nodes.quarantined if snap.nodes else ()
    if quarantined:
        st.error("Needs attention: quarantined facilities: " + ", ".join(quarantined))
    _number(
        "Quarantined facilities", len(quarantined), "Facilities kept out after sending suspicious updates."
    )


VIEWS = {
    "Federation map": _map,
    "Training": _training,
    "Privacy": _privacy,
    "Consensus and ledger": _ledger,
    "Security": _security,
}


def main() -> None:
    st.set_page_config(page_title="hfl console", layout="wide")
    if not _gate():
        return
    snap = snapshot(_connection())
    for problem in snap.problems:
        st.warning(problem)
    view = st.sidebar.radio("View", list(VIEWS))
    VIEWS[view](snap)


main()
