"""Lifting a quarantine (`hfl release`): operator only, with a reason, persisted; the facility's old
certificates stay revoked and it re-joins with a new one-time token."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hfl.crypto import x509
from hfl.crypto.signing import SigningKey
from hfl.domain import NodeInfo
from hfl.errors import HflError, InvalidInput, NotAllowed, NotFound
from hfl.pki.ca import close_ca
from hfl.pki.tokens import add_enrol_token
from hfl.proto.v1 import authority_pb2
from hfl.robust.reputation import federation_test
from hfl.rpc import authz
from hfl.rpc.settings import Settings
from services.authority.registry import Registry
from services.authority.service import Authority

FAC = "facility-07"


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    state = tmp_path / "authority"
    registry = Registry(state / "registry.db")
    a = Authority(Settings(role="authority", tls=True, state_dir=state), SigningKey.generate(), registry)
    registry.upsert(
        NodeInfo(FAC, "facility", "127.0.0.1:1", SigningKey.generate().public_bytes, "cardiology")
    )
    registry.upsert(NodeInfo("fog-1", "fog", "127.0.0.1:2", SigningKey.generate().public_bytes))
    yield a
    registry.close()
    close_ca(state)


def _enrol(a: Authority) -> int:
    token = add_enrol_token(a.settings.state_dir, "facility", FAC)
    csr = x509.make_csr(x509.new_key(), FAC, "facility", [])
    req = authority_pb2.EnrollRequest(token=token, role="facility", node_id=FAC, csr_pem=csr)
    resp = asyncio.run(a.Enroll(req, None))  # type: ignore[arg-type]
    return int(x509.cert_from_pem(bytes(resp.certificate_pem)).serial_number)


def _quarantine(a: Authority) -> None:
    newly: list[str] = []
    for rnd in range(1, 20):  # its own updates refused every round: certain blame, one per round
        newly = a.reputation.observe(rnd, {f"refused:{FAC}": [FAC]}, {f"refused:{FAC}": "norm"})
        if newly:
            break
    assert newly == [FAC]
    a.revoke_quarantined(newly)


def _release(a: Authority, node_id: str = FAC, reason: str = "checked the site's data with its IT team"):
    req = authority_pb2.ReleaseFacilityRequest(node_id=node_id, reason=reason)
    return asyncio.run(a.ReleaseFacility(req, None))  # type: ignore[arg-type]


def test_release_lets_a_quarantined_facility_enrol_again_with_a_new_token(authority: Authority) -> None:
    old_serial = _enrol(authority)
    _quarantine(authority)
    with pytest.raises(NotAllowed, match="quarantined or revoked"):
        _enrol(authority)
    assert _release(authority).quarantined == []
    assert FAC not in authority.quarantined and authority.reputation.score(FAC) > 0.99
    new_serial = _enrol(authority)
    revoked = {serial for serial, _ in authority.ca().revoked()}
    assert old_serial in revoked and new_serial not in revoked  # the old certificate stays revoked
    assert authority.ca().releases()[0]["reason"] == "checked the site's data with its IT team"


def test_release_survives_a_restart_and_a_new_quarantine_counts_again(authority: Authority) -> None:
    _enrol(authority)
    _quarantine(authority)
    _release(authority)
    again = Authority(authority.settings, authority.key, authority.registry)
    assert FAC not in again.quarantined
    assert again.registry.get_json("releases") == [
        {"facility": FAC, "reason": "checked the site's data with its IT team"}
    ]
    _enrol(again)
    # misbehaving again after the release: quarantined and revoked again, enrolment refused again
    newly: list[str] = []
    for rnd in range(100, 120):
        newly = again.reputation.observe(rnd, {f"refused:{FAC}": [FAC]}, {f"refused:{FAC}": "norm"})
        if newly:
            break
    assert newly == [FAC] and FAC in again.quarantined  # suspicion counted afresh after the release
    again.revoke_quarantined(newly)
    with pytest.raises(NotAllowed):
        _enrol(again)


@pytest.mark.parametrize(
    ("node_id", "reason", "error", "match"),
    [
        (FAC, "", InvalidInput, "reason"),
        (FAC, "x" * 501, InvalidInput, "reason"),
        ("facility-99", "typo", NotFound, "no facility"),
        ("fog-1", "not a facility", NotFound, "no facility"),
        (FAC, "not quarantined yet", HflError, "not quarantined"),
    ],
)
def test_bad_release_requests_are_refused(
    authority: Authority, node_id: str, reason: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _release(authority, node_id, reason)
    assert authority.registry.get_json("releases") is None


def test_only_an_operator_may_release() -> None:
    rule = authz.rule_for("/hfl.v1.AuthorityService/ReleaseFacility")
    assert rule is not None and rule.roles == frozenset({"operator"})


def test_the_authority_sizes_its_quarantine_test_from_the_settings(tmp_path: Path) -> None:
    state = tmp_path / "authority"
    registry = Registry(state / "registry.db")
    settings = Settings(role="authority", state_dir=state, min_facilities=24, quarantine_horizon=50)
    a = Authority(settings, SigningKey.generate(), registry)
    assert a.reputation.test == federation_test(24, 3, horizon=50)
    assert a.reputation.test.max_byzantine == 4
    registry.close()


def test_the_authority_restates_the_quarantine_test_when_the_federation_grows(tmp_path: Path) -> None:
    state = tmp_path / "authority"
    registry = Registry(state / "registry.db")
    a = Authority(
        Settings(role="authority", state_dir=state, min_facilities=3), SigningKey.generate(), registry
    )
    assert a.reputation.test == federation_test(3, 3) and not a.reputation.test.detects
    a.reputation.observe(1, {"r": ["facility-00"]}, {"r": "norm"})
    before = a.reputation.evidence("facility-00")
    for i in range(12):
        registry.upsert(
            NodeInfo(f"facility-{i:02d}", "facility", "", SigningKey.generate().public_bytes, "cardiology")
        )
    a._resize_quarantine()
    assert a.reputation.test == federation_test(12, 3) and a.reputation.test.detects
    assert a.reputation.evidence("facility-00") == before  # the evidence gathered so far is kept
    a._resize_quarantine()  # no growth, no change
    assert a.reputation.test == federation_test(12, 3)
    registry.close()


def test_the_authority_loads_a_reputation_stored_by_the_former_version(tmp_path: Path) -> None:
    """A state with the fixed threshold (version 1) loads with the federation's test, keeping quarantines
    and each facility's share of the way to quarantine."""
    state = tmp_path / "authority"
    registry = Registry(state / "registry.db")
    old = {
        "version": 1,
        "config": {
            "threshold": 6.0,
            "norm_penalty": 1.0,
            "screen_penalty": 1.0,
            "outlier_penalty": 0.25,
            "decay": 0.8,
            "prior": 1.0,
            "vote_against_penalty": 0.5,
            "silent_penalty": 0.2,
            "vote_recovery": 0.1,
            "min_weight": 0.01,
        },
        "suspicion": {FAC: 3.0, "facility-08": 7.0},
        "quarantined": {"facility-08": 5001},
        "weights": {},
        "last_round": 6001,
        "last_vote_round": 6001,
    }
    registry.put_json("reputation", old)
    a = Authority(
        Settings(role="authority", state_dir=state, min_facilities=12), SigningKey.generate(), registry
    )
    assert a.reputation.test == federation_test(12, 3)
    assert a.quarantined == frozenset({"facility-08"})
    assert a.reputation.evidence(FAC) == pytest.approx(0.5 * a.reputation.threshold)
    registry.close()
