"""Identities bound to roles, on a live federation (issue 18): a client refuses a server that holds
another role's or node's certificate, even one that lists the right host names; an operator revokes a
fog, a validator and a facility with `hfl revoke` and every server refuses them within one refresh
interval, while rounds go on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hfl.cli import main
from hfl.crypto import x509
from hfl.demo import Federation, Proc
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.rpc.tls import AUTHORITY, NodeTls, Peer, load_client, sync_channel
from tests.integration.helpers import leader_status, start_federation, wait_for_round

pytestmark = pytest.mark.integration
Fed = tuple[Federation, dict[str, Proc], Path]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    out = tmp_path_factory.mktemp("identity")
    fed, procs = start_federation(
        out,
        facilities=4,
        fogs=2,
        validators=4,
        committee_size=1,
        min_facilities=3,
        rounds=0,
        extra_env={"HFL_CRL_REFRESH_S": "1", "HFL_ROUND_INTERVAL": "0.3"},
    )
    try:
        yield fed, procs, out
    finally:
        fed.stop_all()


def health_code(address: str, tls: NodeTls, peer: Peer | None) -> grpc.StatusCode:
    with sync_channel(address, tls, peer=peer) as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def test_a_client_refuses_a_server_with_another_identity(federation: Fed) -> None:
    fed, procs, _out = federation
    operator = fed.operator()
    fog = procs["fog-1"].info["address"]
    assert health_code(fog, operator, Peer("fog", "fog-1")) == grpc.StatusCode.OK
    assert health_code(fog, operator, Peer("fog")) == grpc.StatusCode.OK
    for wrong in (AUTHORITY, Peer("fog", "fog-2"), Peer("facility", "fog-1"), Peer("leader")):
        assert health_code(fog, operator, wrong) == grpc.StatusCode.UNAVAILABLE, wrong


def test_a_facility_certificate_naming_the_authority_does_not_pass_as_it(federation: Fed) -> None:
    """The finding: a facility certificate that also lists `authority`, `leader` and 127.0.0.1 (as the
    old renewal would sign) served on a port. A client that wants the authority refuses it."""
    fed, _procs, out = federation
    ca_dir = out / "state" / "authority" / "ca"
    ca_key = x509.key_from_pem((ca_dir / "ca.key").read_bytes())
    ca_cert = x509.cert_from_pem((ca_dir / "ca.pem").read_bytes())
    key = x509.new_key()
    cert = x509.issue(
        ca_key,
        ca_cert,
        x509.make_csr(key, "facility-01", "facility", []),
        role="facility",
        node_id="facility-01",
        hosts=["authority", "leader", "fog-1", "127.0.0.1", "authority.hfl"],
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    creds = grpc.ssl_server_credentials([(x509.key_to_pem(key), x509.cert_to_pem(cert))])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        address = f"127.0.0.1:{port}"
        operator = fed.operator()
        assert health_code(address, operator, None) == grpc.StatusCode.OK  # what clients did before
        assert health_code(address, operator, AUTHORITY) == grpc.StatusCode.UNAVAILABLE
        assert health_code(address, operator, Peer("leader")) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def refused_everywhere(procs: dict[str, Proc], tls: NodeTls) -> bool:
    """Whether the authority, a fog and the leader all refuse this certificate (health checks are open to
    every role, so only the revocation can refuse them)."""
    return all(
        health_code(procs[name].info["address"], tls, None) == grpc.StatusCode.UNAUTHENTICATED
        for name in ("authority", "fog-1", "leader")
    )


def test_revoking_a_fog_a_validator_and_a_facility(
    federation: Fed, capsys: pytest.CaptureFixture[str]
) -> None:
    fed, procs, out = federation
    leader = procs["leader"].info["address"]
    start = wait_for_round(leader, 1).committed_round
    authority = procs["authority"].info["address"]
    cert_dir = str(out / "state" / "authority" / "operator")
    stolen = {n: load_client(out / "state" / n / "tls") for n in ("fog-2", "validator-4", "facility-04")}
    for tls in stolen.values():  # accepted everywhere until revoked
        assert health_code(authority, tls, None) == grpc.StatusCode.OK
    for node in stolen:
        argv = ["revoke", node, "--reason", "key copied to a laptop", "--authority", authority]
        assert main([*argv, "--cert-dir", cert_dir]) == 0
        said = capsys.readouterr().out
        assert "Every service refuses it within 1 s" in said
        assert "enrol it under a new name" in said  # enrolment refuses a revoked name (enrol.py)
    deadline = time.monotonic() + 30  # one refresh interval (1 s) plus the upkeep loop's pace
    while not all(refused_everywhere(procs, tls) for tls in stolen.values()):
        assert time.monotonic() < deadline, "a revoked certificate is still accepted"
        time.sleep(0.5)
    # Rounds go on without them, and they are not scheduled any more.
    status = wait_for_round(leader, start + 2)
    assert status.committed_round >= start + 2
    with sync_channel(authority, fed.operator(), peer=AUTHORITY) as ch:
        nodes = authority_pb2_grpc.AuthorityServiceStub(ch).ListNodes(
            authority_pb2.ListNodesRequest(), timeout=5
        )
    assert not {n.node_id for n in nodes.nodes} & set(stolen)
    # Refusals of the command, each in plain words.
    argv = ["--authority", authority, "--cert-dir", cert_dir]
    assert main(["revoke", "nobody", "--reason", "typo", *argv]) == 1
    assert "has ever held a certificate" in capsys.readouterr().out
    assert main(["revoke", "fog-1", "--reason", " ", *argv]) == 1
    assert "give the reason" in capsys.readouterr().out
    assert leader_status(leader).committed_round >= start + 2


def test_every_node_pinned_the_authoritys_key_at_set_up(federation: Fed) -> None:
    _fed, procs, out = federation
    key = bytes.fromhex(str(procs["authority"].info["public_key"]))
    for name in ("leader", "fog-1", "validator-1", "facility-01"):
        pin = (out / "state" / name / "tls" / "authority-key.pub").read_text().strip()
        assert bytes.fromhex(pin) == key, name
