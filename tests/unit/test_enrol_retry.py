"""A node whose enrolment answer was lost (a timeout under load) may ask again with the same token and
the same key, and only that: another key, another node or a late retry is refused."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from hfl.crypto import x509
from hfl.errors import Unauthenticated
from hfl.pki.ca import ENROL_RETRY_WINDOW
from hfl.pki.tokens import add_enrol_token, add_role_token
from hfl.proto.v1 import authority_pb2
from tests.unit.conftest import EnrolAuthority


def _enrol(a: EnrolAuthority, token: str, role: str, node_id: str, csr: bytes) -> bytes:
    req = authority_pb2.EnrollRequest(token=token, role=role, node_id=node_id, csr_pem=csr)
    return bytes(asyncio.run(a.Enroll(req, None)).certificate_pem)  # type: ignore[arg-type]


def test_same_node_same_key_may_repeat_its_enrolment(authority: EnrolAuthority) -> None:
    token = add_enrol_token(authority.settings.state_dir, "fog", "fog-1")
    csr = x509.make_csr(x509.new_key(), "fog-1", "fog", [])
    first = x509.cert_from_pem(_enrol(authority, token, "fog", "fog-1", csr))
    again = x509.cert_from_pem(_enrol(authority, token, "fog", "fog-1", csr))
    assert x509.identity_of(again).node_id == x509.identity_of(first).node_id == "fog-1"
    asked = x509.key_fingerprint(x509.load_csr(csr).public_key())
    assert x509.key_fingerprint(first.public_key()) == x509.key_fingerprint(again.public_key()) == asked
    assert again.serial_number != first.serial_number  # a second certificate, for the same key


def test_a_different_key_cannot_reuse_the_token(authority: EnrolAuthority) -> None:
    token = add_enrol_token(authority.settings.state_dir, "fog", "fog-1")
    _enrol(authority, token, "fog", "fog-1", x509.make_csr(x509.new_key(), "fog-1", "fog", []))
    with pytest.raises(Unauthenticated, match="already used"):
        _enrol(authority, token, "fog", "fog-1", x509.make_csr(x509.new_key(), "fog-1", "fog", []))


def test_a_late_retry_is_refused(authority: EnrolAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    token = add_enrol_token(authority.settings.state_dir, "fog", "fog-1")
    csr = x509.make_csr(x509.new_key(), "fog-1", "fog", [])
    _enrol(authority, token, "fog", "fog-1", csr)
    later = x509.utcnow() + ENROL_RETRY_WINDOW + dt.timedelta(minutes=1)
    monkeypatch.setattr(x509, "utcnow", lambda: later)
    with pytest.raises(Unauthenticated, match="already used"):
        _enrol(authority, token, "fog", "fog-1", csr)


def test_shared_token_retry_with_the_same_key_does_not_use_up_the_cap(authority: EnrolAuthority) -> None:
    state = authority.settings.state_dir
    token = add_role_token(state, "facility", max_uses=2, hours=1)
    csr = x509.make_csr(x509.new_key(), "facility-x", "facility", [])
    _enrol(authority, token, "facility", "facility-x", csr)
    _enrol(authority, token, "facility", "facility-x", csr)  # the lost answer, asked for again
    assert authority.ca().shared_token_uses(token) == 1
    # the retry used nothing: a second new facility still enrols, and then the cap is reached
    second = _enrol(
        authority,
        token,
        "facility",
        "facility-y",
        x509.make_csr(x509.new_key(), "facility-y", "facility", []),
    )
    assert x509.identity_of(x509.cert_from_pem(second)).node_id == "facility-y"
    with pytest.raises(Unauthenticated, match="maximum"):
        _enrol(
            authority,
            token,
            "facility",
            "facility-z",
            x509.make_csr(x509.new_key(), "facility-z", "facility", []),
        )
