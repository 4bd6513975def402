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
        newly = a.reputation.observe(rnd, {"refused": [FAC]}, {"refused": "norm"})
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
        newly = again.reputation.observe(rnd, {"refused": [FAC]}, {"refused": "norm"})
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
