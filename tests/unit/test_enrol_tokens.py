"""Enrolment tokens: one-time per-node tokens, the shared facility token (cap, expiry, role binding, new node
ids only), and `hfl provision`, which hands them out to containers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography.x509 import load_der_x509_certificate

from hfl.crypto import x509
from hfl.errors import ConfigError, NotAllowed, Unauthenticated
from hfl.pki.ca import close_ca, open_ca
from hfl.pki.tokens import ANY_NODE, TOKENS_FILE, add_enrol_token, add_role_token
from hfl.proto.v1 import authority_pb2
from hfl.provision import (
    CA_FROM_FILES,
    FACILITY_TOKEN_FILE,
    TOKEN_FILE,
    FixedNode,
    install_authority_state,
    parse_node,
    provision,
)
from hfl.rpc.enrolment import _forget_used_token, enrol_token_of
from hfl.rpc.server import start_enrol_server
from hfl.rpc.settings import Settings
from hfl.rpc.tls import NodeTls
from tests.unit.conftest import EnrolAuthority


def _enrol(a: EnrolAuthority, token: str, role: str, node_id: str) -> bytes:
    csr = x509.make_csr(x509.new_key(), node_id, role, [])
    req = authority_pb2.EnrollRequest(token=token, role=role, node_id=node_id, csr_pem=csr)
    resp = asyncio.run(a.Enroll(req, None))  # type: ignore[arg-type]
    return bytes(resp.certificate_pem)


def _expire_all(state: Path) -> None:
    path = state / TOKENS_FILE
    doc = json.loads(path.read_text())
    for e in doc["tokens"]:
        e["expires"] = (x509.utcnow() - dt.timedelta(minutes=1)).isoformat()
    path.write_text(json.dumps(doc))


def test_shared_token_enrols_new_facilities_up_to_its_cap(authority: EnrolAuthority) -> None:
    state = authority.settings.state_dir
    token = add_role_token(state, "facility", max_uses=2, hours=1)
    for node_id in ("facility-a1", "facility-b2"):
        cert = x509.cert_from_pem(_enrol(authority, token, "facility", node_id))
        identity = x509.identity_of(cert)
        assert (identity.role, identity.node_id) == ("facility", node_id)  # bound to the node id asked for
    with pytest.raises(Unauthenticated, match="maximum number of times"):
        _enrol(authority, token, "facility", "facility-c3")
    uses = [e for e in authority.ca().enrolments() if e["token"] == "shared facility"]
    assert [e["node_id"] for e in uses] == ["facility-a1", "facility-b2"]


def test_shared_token_expires(authority: EnrolAuthority) -> None:
    state = authority.settings.state_dir
    token = add_role_token(state, "facility", max_uses=5, hours=1)
    _expire_all(state)
    with pytest.raises(Unauthenticated, match="expired"):
        _enrol(authority, token, "facility", "facility-late")


def test_shared_token_is_bound_to_the_facility_role(authority: EnrolAuthority) -> None:
    state = authority.settings.state_dir
    token = add_role_token(state, "facility", max_uses=5, hours=1)
    for role, node_id in (("leader", "leader-2"), ("fog", "fog-9"), ("validator", "validator-9")):
        with pytest.raises(NotAllowed, match="new facility nodes"):
            _enrol(authority, token, role, node_id)
    for role in ("leader", "fog", "validator", "authority", "operator"):
        with pytest.raises(ConfigError, match="only facilities"):
            add_role_token(state, role, max_uses=5, hours=1)
    # A hand-edited file cannot turn a shared token into one for another role either.
    path = state / TOKENS_FILE
    doc = json.loads(path.read_text())
    doc["tokens"][0]["role"] = "fog"
    path.write_text(json.dumps(doc))
    with pytest.raises(Unauthenticated, match="not accepted for fog"):
        _enrol(authority, token, "fog", "fog-9")


def test_shared_token_cannot_take_an_existing_or_reserved_node_id(authority: EnrolAuthority) -> None:
    state = authority.settings.state_dir
    shared = add_role_token(state, "facility", max_uses=10, hours=1)
    _enrol(authority, shared, "facility", "facility-x")
    with pytest.raises(NotAllowed, match="already enrolled"):
        _enrol(authority, shared, "facility", "facility-x")  # the same name twice
    own = add_enrol_token(state, "facility", "facility-01")
    with pytest.raises(NotAllowed, match="already enrolled or reserved"):
        _enrol(authority, shared, "facility", "facility-01")  # reserved by its own one-time token
    _enrol(authority, own, "facility", "facility-01")
    authority.quarantined = frozenset({"facility-q"})
    with pytest.raises(NotAllowed, match="quarantined"):
        _enrol(authority, shared, "facility", "facility-q")
    assert authority.ca().shared_token_uses(shared) == 1  # refusals do not use up the token


def test_one_time_tokens_stay_one_time_and_bound(authority: EnrolAuthority) -> None:
    state = authority.settings.state_dir
    token = add_enrol_token(state, "fog", "fog-1")
    with pytest.raises(NotAllowed, match="fog fog-1"):
        _enrol(authority, token, "fog", "fog-2")
    _enrol(authority, token, "fog", "fog-1")
    with pytest.raises(Unauthenticated, match="already used"):
        _enrol(authority, token, "fog", "fog-1")
    late = add_enrol_token(state, "validator", "validator-1", hours=1)
    _expire_all(state)
    with pytest.raises(Unauthenticated, match="expired"):
        _enrol(authority, late, "validator", "validator-1")
    with pytest.raises(Unauthenticated, match="unknown"):
        _enrol(authority, "not-a-token", "fog", "fog-1")


def test_bad_shared_token_parameters(tmp_path: Path) -> None:
    for uses, hours in ((0, 1.0), (10_001, 1.0), (5, 0.0), (5, -1.0), (5, 10_000.0)):
        with pytest.raises(ConfigError):
            add_role_token(tmp_path, "facility", max_uses=uses, hours=hours)


def test_provision_hands_out_tokens_once_and_is_idempotent(tmp_path: Path) -> None:
    auth = tmp_path / "authority"
    nodes = [
        FixedNode("leader", "leader", tmp_path / "leader"),
        FixedNode("fog", "fog-1", tmp_path / "fog-1"),
    ]
    trust = tmp_path / "trust"
    first = provision(auth, nodes, trust, facility_uses=3, facility_hours=2)
    assert first == {
        "leader": "new one-time token",
        "fog-1": "new one-time token",
        "facilities": "new shared facility token (3 enrolments, expires in 2 h)",
    }
    ca_pem = (auth / "ca" / "ca.pem").read_bytes()
    assert (trust / "ca.pem").read_bytes() == ca_pem == (tmp_path / "leader" / "tls" / "ca.pem").read_bytes()
    assert not (trust / "ca.key").exists() and (auth / "ca" / "ca.key").exists()
    assert (tmp_path / "fog-1" / "tls" / TOKEN_FILE).stat().st_mode & 0o077 == 0
    tokens = {n.node_id: (n.state_dir / "tls" / TOKEN_FILE).read_text() for n in nodes}
    shared = (trust / FACILITY_TOKEN_FILE).read_text()

    again = provision(auth, nodes, trust, facility_uses=3, facility_hours=2)
    assert set(again.values()) == {"has an unused one-time token", "shared facility token still valid"}
    assert {n.node_id: (n.state_dir / "tls" / TOKEN_FILE).read_text() for n in nodes} == tokens
    assert (trust / FACILITY_TOKEN_FILE).read_text() == shared

    ca = open_ca(auth)
    try:
        assert ca.token_identity(tokens["fog-1"]) == ("fog", "fog-1")
        assert ca.token_identity(shared) == ("facility", ANY_NODE)
    finally:
        close_ca(auth)
    (tmp_path / "leader" / "tls" / "cert.pem").write_bytes(b"enrolled")
    _expire_all(auth)
    third = provision(auth, nodes, trust, facility_uses=3, facility_hours=2)
    assert third["leader"] == "has a certificate"
    assert third["fog-1"] == "new one-time token"  # its old one expired
    assert third["facilities"].startswith("new shared facility token")
    assert (trust / FACILITY_TOKEN_FILE).read_text() != shared


def test_parse_node_refuses_bad_input() -> None:
    assert parse_node("fog:fog-1=/x") == FixedNode("fog", "fog-1", Path("/x"))
    for bad in ("fog-1=/x", "fog:fog-1", "facility:f=/x", "authority:a=/x", "fog:bad id=/x"):
        with pytest.raises(ConfigError):
            parse_node(bad)


def test_token_file_is_read_and_deleted_after_use_only_in_the_state_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "tls").mkdir(parents=True)
    own = state / "tls" / TOKEN_FILE
    own.write_text("tok-1\n")
    s = Settings(state_dir=state, enrol_token_file=str(own))
    assert enrol_token_of(s) == "tok-1"
    _forget_used_token(s)
    assert not own.exists()
    shared = tmp_path / "trust" / FACILITY_TOKEN_FILE
    shared.parent.mkdir()
    shared.write_text("tok-2")
    s = Settings(state_dir=state, enrol_token_file=str(shared))
    assert enrol_token_of(s) == "tok-2"
    _forget_used_token(s)
    assert shared.exists()
    assert enrol_token_of(Settings(state_dir=state, enrol_token="direct", enrol_token_file=str(shared))) == (
        "direct"
    )
    with pytest.raises(ConfigError, match="does not exist"):
        enrol_token_of(Settings(state_dir=state, enrol_token_file=str(tmp_path / "missing")))


def _served_serial(address: str, ca_pem: bytes) -> int:
    """The serial of the certificate a TLS port shows a client that has no certificate of its own."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    host, _, port = address.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return load_der_x509_certificate(der).serial_number


def test_enrolment_port_serves_the_renewed_authority_certificate(
    authority: EnrolAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = authority.ca()
    hosts = ["localhost", "127.0.0.1"]
    tls = NodeTls(
        "authority", "authority", None, ca.cert_pem, *ca.issue_local("authority", "authority", hosts)
    )
    monkeypatch.setattr("hfl.rpc.tls._DEFAULT", tls)
    settings = authority.settings.model_copy(
        update={"enrol_listen": "127.0.0.1:0", "advertise_host": "127.0.0.1"}
    )

    async def scenario() -> tuple[int, int, int]:
        started = await start_enrol_server(settings, lambda server: None)
        assert started is not None
        server, address = started
        try:
            before = await asyncio.to_thread(_served_serial, address, ca.cert_pem)
            tls.install(*ca.issue_local("authority", "authority", hosts))  # what hfl.rpc.enrolment.renew does
            after = await asyncio.to_thread(_served_serial, address, ca.cert_pem)
            return before, after, await asyncio.to_thread(_served_serial, address, ca.cert_pem)
        finally:
            await server.stop(None)

    first = tls.cert.serial_number
    before, after, again = asyncio.run(scenario())
    assert before != tls.cert.serial_number and before == first
    assert after == again == tls.cert.serial_number  # new handshakes get the renewed certificate


def test_an_authority_starts_from_a_ca_provisioned_elsewhere(tmp_path: Path) -> None:
    """HFL_CA_FROM (deploy/central/stack.yml): the files `hfl provision` made, mounted flat as Docker
    secrets, become the authority's state on its first start; a volume of another federation is refused."""
    made = tmp_path / "made"
    provision(made / "authority", [FixedNode("fog", "fog-1", made / "fog-1")], None)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, place in CA_FROM_FILES.items():
        (secrets / name).write_bytes((made / "authority" / place).read_bytes())
    state = tmp_path / "state"
    assert install_authority_state(secrets, state).startswith("installed the federation's certificate")
    assert (state / "identity.key").read_bytes() == (made / "authority" / "identity.key").read_bytes()
    assert (state / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    ca = open_ca(state)
    try:
        assert ca.cert_pem == (secrets / "ca.pem").read_bytes()
        token = (made / "fog-1" / "tls" / TOKEN_FILE).read_text()
        assert ca.token_identity(token) == ("fog", "fog-1")
    finally:
        close_ca(state)
    add_enrol_token(state, "facility", "st-anna")  # the state moves on; a restart keeps it
    tokens = (state / TOKENS_FILE).read_bytes()
    assert "is the one in" in install_authority_state(secrets, state)
    assert (state / TOKENS_FILE).read_bytes() == tokens

    other = tmp_path / "other"
    provision(other, [], None)
    (secrets / "ca.pem").write_bytes((other / "ca" / "ca.pem").read_bytes())
    with pytest.raises(ConfigError, match="belongs to another federation"):
        install_authority_state(secrets, state)
    (secrets / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"lacks ca\.key"):
        install_authority_state(secrets, tmp_path / "empty")
