"""Mutual TLS on a real federation: who gets in, who is refused, and how.

Refusals happen at two levels: the TLS handshake (no certificate, another CA's, an expired one: the
connection never reaches a service, the client sees UNAVAILABLE) and the authorization interceptor
(revoked -> UNAUTHENTICATED; wrong role or another node's name -> PERMISSION_DENIED)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hfl.crypto import x509
from hfl.demo import Federation, Proc
from hfl.ledger import LedgerStore
from hfl.pki.ca import CAStore
from hfl.pki.tokens import add_enrol_token
from hfl.proto.v1 import (
    authority_pb2,
    authority_pb2_grpc,
    common_pb2,
    fog_pb2,
    fog_pb2_grpc,
    leader_pb2,
    leader_pb2_grpc,
    validator_pb2,
    validator_pb2_grpc,
)
from hfl.rpc.tls import NodeTls, sync_channel
from tests.integration.helpers import client_tls, start_federation, wait_for_round

pytestmark = pytest.mark.integration

Fed = tuple[Federation, dict[str, Proc], Path]
CERT_HOURS = 0.015  # 54 s: renewal happens during the module (a third left: after about 36 s)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    out = tmp_path_factory.mktemp("mtls")
    fed, procs = start_federation(
        out,
        facilities=3,
        fogs=1,
        validators=1,
        rounds=0,
        extra_env={"HFL_CRL_REFRESH_S": "1", "HFL_CERT_HOURS": str(CERT_HOURS), "HFL_ROUND_INTERVAL": "0.5"},
    )
    try:
        yield fed, procs, out
    finally:
        fed.stop_all()


def _addr(procs: dict[str, Proc], name: str) -> str:
    return str(procs[name].info["address"])


def _code(fn: object, request: object, tls: NodeTls | None, address: str) -> grpc.StatusCode:
    with sync_channel(address, tls) as ch:
        method = getattr(_stub(fn, ch), str(fn).rpartition(".")[2])
        with pytest.raises(grpc.RpcError) as info:
            method(request, timeout=10)
    return info.value.code()


def _stub(fn: object, ch: grpc.Channel) -> object:
    service = str(fn).rpartition(".")[0]
    return {
        "authority": authority_pb2_grpc.AuthorityServiceStub,
        "leader": leader_pb2_grpc.LeaderServiceStub,
        "fog": fog_pb2_grpc.FogServiceStub,
        "validator": validator_pb2_grpc.ValidatorServiceStub,
    }[service](ch)


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.add(int(cols[1].rpartition(":")[2], 16))
    return ports


def test_a_facility_listens_on_no_port_but_its_own_metrics(federation: Fed) -> None:
    """Hospitals only dial out: a facility process opens no port but its local /metrics endpoint."""
    _fed, procs, _out = federation
    facility = procs["facility-01"]
    assert facility.info["address"] == ""
    assert _listening_ports(facility.popen.pid) <= {int(facility.info["metrics_port"])}
    assert _listening_ports(procs["fog-1"].popen.pid) > {int(procs["fog-1"].info["metrics_port"])}  # sanity


def test_no_certificate_is_refused(federation: Fed) -> None:
    _fed, procs, _out = federation
    for name in ("leader", "authority", "fog-1", "validator-1"):  # a facility has no port to try
        with grpc.insecure_channel(_addr(procs, name)) as ch, pytest.raises(grpc.RpcError) as info:
            leader_pb2_grpc.LeaderServiceStub(ch).GetStatus(leader_pb2.GetStatusRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS that trusts the right root but shows no client certificate: the handshake refuses it.
    ca_pem = (_out / "state" / "authority" / "ca" / "ca.pem").read_bytes()
    with (
        grpc.secure_channel(_addr(procs, "leader"), grpc.ssl_channel_credentials(ca_pem)) as ch,
        pytest.raises(grpc.RpcError) as info,
    ):
        leader_pb2_grpc.LeaderServiceStub(ch).GetStatus(leader_pb2.GetStatusRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_other_ca_and_expired_certificates_are_refused(federation: Fed, tmp_path: Path) -> None:
    _fed, procs, out = federation
    other = tmp_path / "other-ca"
    other.mkdir()
    key, cert = x509.make_ca("someone else's root")
    (other / "ca.key").write_bytes(x509.key_to_pem(key))
    (other / "ca.pem").write_bytes(x509.cert_to_pem(cert))
    foreign = client_tls(out, "operator", "operator", ca_dir=other)
    foreign.ca_pem = (out / "state" / "authority" / "ca" / "ca.pem").read_bytes()  # it trusts our server
    expired = client_tls(out, "operator", "operator", hours=1, now=x509.utcnow() - dt.timedelta(hours=3))
    for tls in (foreign, expired):
        assert _code("leader.GetStatus", leader_pb2.GetStatusRequest(), tls, _addr(procs, "leader")) in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNAUTHENTICATED,
        )
    good = client_tls(out, "operator", "operator")
    with sync_channel(_addr(procs, "leader"), good) as ch:
        leader_pb2_grpc.LeaderServiceStub(ch).GetStatus(leader_pb2.GetStatusRequest(), timeout=10)


def test_wrong_role_is_permission_denied(federation: Fed) -> None:
    _fed, procs, out = federation
    facility = client_tls(out, "facility", "facility-01")
    fog = client_tls(out, "fog", "fog-1")
    validator = client_tls(out, "validator", "validator-1")
    denied = grpc.StatusCode.PERMISSION_DENIED
    # a facility cannot call leader, validator, or leader-only authority and fog methods
    assert (
        _code("leader.GetStatus", leader_pb2.GetStatusRequest(), facility, _addr(procs, "leader")) == denied
    )
    assert (
        _code("validator.Vote", validator_pb2.VoteRequest(), facility, _addr(procs, "validator-1")) == denied
    )
    assert (
        _code(
            "authority.GetRoundConfig",
            authority_pb2.GetRoundConfigRequest(round=1),
            facility,
            _addr(procs, "authority"),
        )
        == denied
    )
    assert _code("fog.RunRound", fog_pb2.RunRoundRequest(), facility, _addr(procs, "fog-1")) == denied
    # a fog cannot vote; a validator cannot run rounds or submit updates
    assert _code("validator.Vote", validator_pb2.VoteRequest(), fog, _addr(procs, "validator-1")) == denied
    assert _code("fog.RunRound", fog_pb2.RunRoundRequest(), validator, _addr(procs, "fog-1")) == denied
    assert (
        _code(
            "fog.SubmitUpdate",
            fog_pb2.SubmitUpdateRequest(node_id="validator-1"),
            validator,
            _addr(procs, "fog-1"),
        )
        == denied
    )
    # identities are bound: facility-01 cannot submit or register as facility-02
    assert (
        _code(
            "fog.SubmitUpdate",
            fog_pb2.SubmitUpdateRequest(node_id="facility-02"),
            facility,
            _addr(procs, "fog-1"),
        )
        == denied
    )
    node = common_pb2.NodeInfo(
        node_id="facility-02", role="facility", address="127.0.0.1:1", sign_public_key=b"\x01" * 32
    )
    assert (
        _code(
            "authority.Register",
            authority_pb2.RegisterRequest(node=node),
            facility,
            _addr(procs, "authority"),
        )
        == denied
    )
    # enrolment is not served on the main port
    assert (
        _code("authority.Enroll", authority_pb2.EnrollRequest(), facility, _addr(procs, "authority"))
        == denied
    )


def _enrol(procs: dict[str, Proc], out: Path, token: str, role: str, node_id: str) -> grpc.StatusCode | None:
    ca_pem = (out / "state" / "authority" / "ca" / "ca.pem").read_bytes()
    csr = x509.make_csr(x509.new_key(), node_id, role, [])
    with grpc.secure_channel(
        procs["authority"].info["enrol_address"], grpc.ssl_channel_credentials(ca_pem)
    ) as ch:
        try:
            resp = authority_pb2_grpc.AuthorityServiceStub(ch).Enroll(
                authority_pb2.EnrollRequest(token=token, role=role, node_id=node_id, csr_pem=csr), timeout=10
            )
        except grpc.RpcError as e:
            return e.code()
    cert = x509.cert_from_pem(resp.certificate_pem)
    assert x509.identity_of(cert).uri == f"hfl://{role}/{node_id}"
    return None


def test_enrolment_tokens_are_one_time_and_bound(federation: Fed) -> None:
    _fed, procs, out = federation
    state = out / "state" / "authority"
    token = add_enrol_token(state, "fog", "fog-9")
    assert _enrol(procs, out, token, "facility", "fog-9") == grpc.StatusCode.PERMISSION_DENIED  # wrong role
    assert _enrol(procs, out, token, "fog", "fog-8") == grpc.StatusCode.PERMISSION_DENIED  # wrong node
    assert _enrol(procs, out, "not-a-token", "fog", "fog-9") == grpc.StatusCode.UNAUTHENTICATED
    assert _enrol(procs, out, token, "fog", "fog-9") is None
    assert _enrol(procs, out, token, "fog", "fog-9") == grpc.StatusCode.UNAUTHENTICATED  # used once already


def test_revoked_certificate_is_unauthenticated(federation: Fed) -> None:
    _fed, procs, out = federation
    state = out / "state" / "authority"
    ca = CAStore(state)  # the authority's CA database, opened from here as an operator would
    try:
        key_pem, cert_pem = ca.issue_local("facility", "facility-77", [])  # recorded in the CA database
        tls = NodeTls("facility", "facility-77", None, ca.cert_pem, key_pem, cert_pem)
        request = fog_pb2.SubmitUpdateRequest(node_id="facility-77", round=999)
        # before revocation the certificate gets through to the fog's own checks (the update is empty)
        assert _code("fog.SubmitUpdate", request, tls, _addr(procs, "fog-1")) in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert ca.revoke_node("facility-77")
    finally:
        ca.close()
    deadline = time.monotonic() + 30  # servers fetch the revocation list every second here
    while True:
        code = _code("fog.SubmitUpdate", request, tls, _addr(procs, "fog-1"))
        if code == grpc.StatusCode.UNAUTHENTICATED or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_certificates_are_renewed_and_rounds_go_on(federation: Fed) -> None:
    _fed, procs, out = federation
    cert_path = out / "state" / "fog-1" / "tls" / "cert.pem"
    first = x509.cert_from_pem(cert_path.read_bytes()).serial_number
    deadline = time.monotonic() + 120
    while x509.cert_from_pem(cert_path.read_bytes()).serial_number == first:
        assert time.monotonic() < deadline, "the fog never renewed its certificate"
        time.sleep(1.0)
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        before = store.head().header.round  # type: ignore[union-attr]
    wait_for_round(_addr(procs, "leader"), before + 2, limit_s=120)


def test_release_is_for_operators_and_explains_refusals(
    federation: Fed, capsys: pytest.CaptureFixture[str]
) -> None:
    from hfl.status import release_facility

    _fed, procs, out = federation
    request = authority_pb2.ReleaseFacilityRequest(node_id="facility-01", reason="checked")
    facility = client_tls(out, "facility", "facility-01")
    assert (
        _code("authority.ReleaseFacility", request, facility, _addr(procs, "authority"))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    cert_dir = str(out / "state" / "authority" / "operator")
    rc = release_facility("facility-01", "checked", None, _addr(procs, "authority"), cert_dir)
    assert rc == 1 and "facility facility-01 is not quarantined" in capsys.readouterr().out
    rc = release_facility("facility-42", "typo", None, _addr(procs, "authority"), cert_dir)
    assert rc == 1 and "no facility 'facility-42' is registered" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ bounded input
MIB = 1024 * 1024


def _raw_call(ch: grpc.Channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        ch.unary_unary(method)(payload, timeout=60)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def test_a_role_that_may_not_call_is_refused_before_its_request_is_parsed(federation: Fed) -> None:
    """Finding 5: the role check comes first; a request that is not even a message shows it (parsing
    first would answer INVALID_ARGUMENT)."""
    _fed, procs, out = federation
    facility = client_tls(out, "facility", "facility-01")
    leader = client_tls(out, "leader", "leader")
    garbage = b"\xff" * 1000
    with sync_channel(_addr(procs, "authority"), facility) as ch:
        code, _ = _raw_call(ch, "/hfl.v1.AuthorityService/ReportRound", garbage)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    with sync_channel(_addr(procs, "fog-1"), facility) as ch:  # a model-sized method, 20 MB of garbage
        code, _ = _raw_call(ch, "/hfl.v1.FogService/RunRound", b"\xff" * (20 * MIB))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    with sync_channel(_addr(procs, "authority"), leader) as ch:  # the allowed role: parsed, refused
        code, _ = _raw_call(ch, "/hfl.v1.AuthorityService/ReportRound", garbage)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
