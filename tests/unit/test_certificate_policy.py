"""The authority decides what a certificate names: host names are fixed at enrolment and renewals cannot
add any; renewals are rate-limited and refused once revoked; revocation works for every role."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from hfl.crypto import x509
from hfl.errors import InvalidInput, NotAllowed, NotFound, RateLimited
from hfl.proto.v1 import authority_pb2
from hfl.rpc import authz
from tests.unit.conftest import EnrolAuthority


def hosts_of(pem: bytes) -> list[str]:
    cert = x509.cert_from_pem(pem)
    san = cert.extensions.get_extension_for_class(x509.x509.SubjectAlternativeName).value
    return [str(n.value) for n in san if not isinstance(n, x509.x509.UniformResourceIdentifier)]


def renew(authority: EnrolAuthority, role: str, node_id: str, hosts: list[str]) -> bytes:
    csr = x509.make_csr(x509.new_key(), node_id, role, hosts)
    who = x509.Identity(role, node_id, 1, x509.utcnow())
    token = authz._CALLER.set(who)
    try:
        resp = asyncio.run(
            authority.RenewCertificate(authority_pb2.RenewCertificateRequest(csr_pem=csr), None)  # type: ignore[arg-type]
        )
    finally:
        authz._CALLER.reset(token)
    return bytes(resp.certificate_pem)


def backdate(authority: EnrolAuthority, node_id: str, hours: float = 7.0) -> None:
    """Pretend the node's certificates were issued ``hours`` ago (24 h certificates: renewable after 6 h)."""
    then = (x509.utcnow() - dt.timedelta(hours=hours)).isoformat()
    authority.ca()._db.execute("UPDATE certs SET issued_at=? WHERE node_id=?", (then, node_id))


def enrol(authority: EnrolAuthority, role: str, node_id: str, hosts: list[str]) -> bytes:
    ca = authority.ca()
    return ca.issue(x509.make_csr(x509.new_key(), node_id, role, hosts), role, node_id)


def test_a_renewal_asking_for_other_nodes_names_gets_only_its_own(authority: EnrolAuthority) -> None:
    enrol(authority, "fog", "fog-1", ["fog-1", "10.0.0.5"])
    first = enrol(authority, "facility", "f1", ["f1.hospital.example", "10.0.0.9", "fog-1", "authority"])
    # at enrolment, other nodes' ids and role names are dropped
    assert hosts_of(first) == [
        x509.identity_name("facility", "f1"),
        "facility.hfl",
        "f1",
        "f1.hospital.example",
        "10.0.0.9",
    ]
    backdate(authority, "f1")  # so that the rate limit does not apply here
    renewed = renew(
        authority, "facility", "f1", ["authority", "leader", "fog-1", "127.0.0.1", "evil.example"]
    )
    assert hosts_of(renewed) == hosts_of(first)  # only what the authority recorded at enrolment


def test_renewal_is_rate_limited_and_refused_once_revoked(authority: EnrolAuthority) -> None:
    enrol(authority, "validator", "v1", [])
    with pytest.raises(RateLimited, match="renews at most once every"):
        renew(authority, "validator", "v1", [])
    backdate(authority, "v1")  # a quarter of the lifetime later
    renew(authority, "validator", "v1", [])
    authority.ca().revoke_node("v1", reason="key left on a laptop", by="operator")
    with pytest.raises(NotAllowed, match="revoked"):
        renew(authority, "validator", "v1", [])


def revoke(authority: Any, node_id: str, reason: str) -> authority_pb2.RevokeNodeResponse:
    token = authz._CALLER.set(x509.Identity("operator", "operator", 1, x509.utcnow()))
    try:
        return asyncio.run(
            authority.RevokeNode(authority_pb2.RevokeNodeRequest(node_id=node_id, reason=reason), None)
        )
    finally:
        authz._CALLER.reset(token)


@pytest.mark.parametrize("role", ["leader", "fog", "validator", "facility"])
def test_any_role_can_be_revoked_with_a_reason(authority: EnrolAuthority, role: str) -> None:
    enrol(authority, role, f"{role}-9", [])
    forgotten: list[str] = []
    authority.forget_node = forgotten.append  # type: ignore[method-assign]
    resp = revoke(authority, f"{role}-9", "  stolen   laptop ")
    assert (resp.role, resp.certificates) == (role, 1)
    assert forgotten == [f"{role}-9"]
    assert authority.ca().is_node_revoked(f"{role}-9")
    (entry,) = authority.ca().revocations()
    assert (entry["node_id"], entry["reason"], entry["by"]) == (f"{role}-9", "stolen laptop", "operator")
    assert x509.revoked_serials(authority.ca().crl_pem(), authority.ca().cert)


def test_revocation_refusals(authority: EnrolAuthority) -> None:
    enrol(authority, "fog", "fog-1", [])
    with pytest.raises(InvalidInput, match="reason"):
        revoke(authority, "fog-1", "   ")
    with pytest.raises(NotFound, match="ever held a certificate"):
        revoke(authority, "nobody", "typo")
    authority.ca().write_operator()
    with pytest.raises(NotAllowed, match="operator's own certificate cannot be revoked"):
        revoke(authority, "operator", "locking myself out")
    assert not authority.ca().is_node_revoked("fog-1")
