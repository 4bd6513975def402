"""Certificates: issuing, identities, validity, other CAs, CRLs; the token bucket."""

from __future__ import annotations

import datetime as dt

import pytest

from hfl.crypto import x509
from hfl.errors import RateLimited
from hfl.rpc.ratelimit import TokenBuckets


@pytest.fixture(scope="module")
def ca() -> tuple[object, object]:
    return x509.make_ca()


def _issue(ca: tuple, role: str = "fog", node: str = "fog-1", **kw: object) -> object:
    key = x509.new_key()
    return x509.issue(
        ca[0],
        ca[1],
        x509.make_csr(key, node, role, ["127.0.0.1", "fog-1.local"]),
        role=role,
        node_id=node,
        **kw,
    )


def test_issued_certificate_names_role_and_node(ca: tuple) -> None:
    cert = _issue(ca)
    who = x509.verify_issued(cert, ca[1])  # type: ignore[arg-type]
    assert (who.role, who.node_id, who.uri) == ("fog", "fog-1", "hfl://fog/fog-1")


def test_issued_certificate_names_the_node_and_its_hosts_once(ca: tuple) -> None:
    csr = x509.make_csr(x509.new_key(), "fog-1", "fog", ["fog-1", "127.0.0.1", "fog-1.local", "not a host!"])
    cert = x509.issue(ca[0], ca[1], csr, role="fog", node_id="fog-1")
    san = cert.extensions.get_extension_for_class(x509.x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == [
        "hfl://fog/fog-1",
        x509.identity_name("fog", "fog-1"),  # identity names, from the role and node id alone
        "fog.hfl",
        "fog-1",
        "127.0.0.1",
        "fog-1.local",
    ]


def test_requested_identity_names_are_never_signed(ca: tuple) -> None:
    """A facility asking for the authority's or the leader's identity name gets its own only."""
    csr = x509.make_csr(
        x509.new_key(), "f1", "facility", ["authority.hfl", "leader.leader.hfl", "f1.example"]
    )
    cert = x509.issue(ca[0], ca[1], csr, role="facility", node_id="f1")
    san = cert.extensions.get_extension_for_class(x509.x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.x509.DNSName)
    assert dns == [x509.identity_name("facility", "f1"), "facility.hfl", "f1", "f1.example"]
    assert x509.names_identity(cert, "facility", "f1")
    assert not x509.names_identity(cert, "authority", "f1")


def test_authority_decides_the_identity_not_the_csr(ca: tuple) -> None:
    key = x509.new_key()
    csr = x509.make_csr(key, "leader", "leader", [])  # asks to be the leader ...
    cert = x509.issue(
        ca[0], ca[1], csr, role="facility", node_id="facility-03"
    )  # ... gets what the token says
    assert x509.identity_of(cert).uri == "hfl://facility/facility-03"


def test_other_ca_expired_and_not_yet_valid_are_refused(ca: tuple) -> None:
    other = x509.make_ca("another root")
    with pytest.raises(x509.CertificateError, match="not issued"):
        x509.verify_issued(_issue(other), ca[1])  # type: ignore[arg-type]
    old = _issue(ca, now=x509.utcnow() - dt.timedelta(hours=5), hours=1)
    with pytest.raises(x509.CertificateError, match="expired"):
        x509.verify_issued(old, ca[1])  # type: ignore[arg-type]
    future = _issue(ca, now=x509.utcnow() + dt.timedelta(hours=5), hours=1)
    with pytest.raises(x509.CertificateError, match="not valid yet"):
        x509.verify_issued(future, ca[1])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"x" * 20000,
    ],
)
def test_malformed_csr_is_refused(ca: tuple, bad: bytes) -> None:
    with pytest.raises(x509.CertificateError):
        x509.issue(ca[0], ca[1], bad, role="fog", node_id="fog-1")


@pytest.mark.parametrize("role,node", [("root", "x"), ("fog", ""), ("fog", "a/b"), ("fog", "x" * 200)])
def test_bad_role_or_node_id_is_refused(ca: tuple, role: str, node: str) -> None:
    with pytest.raises(x509.CertificateError):
        x509.issue(
            ca[0],
            ca[1],
            x509.make_csr(x509.new_key(), "ok", "fog", []),
            role=role,
            node_id=node,
        )


def test_crl_lists_revoked_serials_and_must_be_signed_by_the_ca(ca: tuple) -> None:
    cert = _issue(ca)
    crl = x509.make_crl(ca[0], ca[1], [(cert.serial_number, x509.utcnow())])
    assert x509.revoked_serials(crl, ca[1]) == {cert.serial_number}
    other = x509.make_ca("another root")
    with pytest.raises(x509.CertificateError, match="not signed"):
        x509.revoked_serials(crl, other[1])


def test_remaining_fraction_drives_renewal(ca: tuple) -> None:
    fresh = _issue(ca, hours=3)
    assert x509.remaining_fraction(fresh) > 0.9  # type: ignore[arg-type]
    late = _issue(ca, now=x509.utcnow() - dt.timedelta(hours=2, minutes=30), hours=3)
    assert x509.remaining_fraction(late) < 1 / 3  # type: ignore[arg-type]


def test_token_bucket_limits_bursts_and_refills() -> None:
    now = [0.0]
    tb = TokenBuckets(rate=1.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        tb.take("peer-a")
    with pytest.raises(RateLimited, match="slow down"):
        tb.take("peer-a")
    tb.take("peer-b")  # per peer
    now[0] += 1.0
    tb.take("peer-a")
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1)
