"""`hfl site check`: before a hospital starts its facility, say in plain words whether it can take part.

It reads the same HFL_* settings as `hfl serve facility` (the site kit's .env) and checks, in order:
the root certificate, this site's certificate (or its one-time enrolment token), that the authority
answers, that every fog answers (connecting OUT, as the facility will), that the patient data can be
read, and that this machine's clock agrees with the authority's. It never uses up the enrolment token
and changes nothing. Exit status 0 when nothing failed.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from hfl.crypto import x509
from hfl.errors import ConfigError, HflError
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.rpc import serde
from hfl.rpc.enrolment import enrol_address, enrol_token_of
from hfl.rpc.settings import FacilitySettings
from hfl.rpc.tls import AUTHORITY, NodeTls, Peer, sync_channel

CLOCK_TOLERANCE_S = 30.0  # more than this apart from the authority's clock fails the check
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Finding:
    status: str  # "ok", "warn" or "FAIL"
    what: str
    detail: str

    def line(self) -> str:
        return f"[{self.status:>4}] {self.what}: {self.detail}"


def _ok(what: str, detail: str) -> Finding:
    return Finding("ok", what, detail)


def _warn(what: str, detail: str) -> Finding:
    return Finding("warn", what, detail)


def _fail(what: str, detail: str) -> Finding:
    return Finding("FAIL", what, detail)


def _reachable(address: str, credentials: grpc.ChannelCredentials, peer: Peer, timeout: float) -> str:
    """ "" when a TLS connection to ``address`` holding ``peer``'s certificate succeeds, else why not."""
    options = [("grpc.ssl_target_name_override", peer.name)]
    with grpc.secure_channel(address, credentials, options=options) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return f"no answer from {address} within {timeout:.0f} s"
    return ""


def check_root(settings: FacilitySettings) -> tuple[Finding, bytes | None]:
    what = "root certificate"
    path = Path(settings.tls_ca) if settings.tls_ca else settings.state_dir / "tls" / "ca.pem"
    try:
        pem = path.read_bytes()
        cert = x509.cert_from_pem(pem)
    except OSError as e:
        return _fail(
            what, f"cannot read {path} ({e.strerror}); set HFL_TLS_CA to the ca.pem you were given"
        ), None
    except Exception:
        return _fail(what, f"{path} is not a certificate; ask the coordinating team for ca.pem again"), None
    until = cert.not_valid_after_utc
    return _ok(what, f"{path}, valid until {until:%Y-%m-%d}"), pem


def check_certificate(
    settings: FacilitySettings, root: bytes, now: dt.datetime
) -> tuple[Finding, NodeTls | None]:
    what = "this site's certificate"
    node_id = settings.resolved_node_id()
    tls_dir = settings.state_dir / "tls"
    key, cert = tls_dir / "key.pem", tls_dir / "cert.pem"
    if not (key.is_file() and cert.is_file()):
        try:
            token = enrol_token_of(settings)
        except ConfigError as e:
            return _fail(what, f"none yet, and the enrolment token cannot be read: {e}"), None
        if token:
            return (
                _ok(
                    what, f"none yet; the facility enrols as {node_id} with its one-time token when it starts"
                ),
                None,
            )
        return (
            _fail(
                what,
                "none yet and no enrolment token: put the one-time token from the coordinating team in "
                "HFL_ENROL_TOKEN (or a file named by HFL_ENROL_TOKEN_FILE)",
            ),
            None,
        )
    try:
        tls = NodeTls("facility", node_id, None, root, key.read_bytes(), cert.read_bytes())
    except (x509.CertificateError, ConfigError, OSError, ValueError) as e:
        return _fail(what, f"{cert} cannot be used ({e}); delete it and enrol again with a new token"), None
    if tls.identity.not_after <= now:
        return _fail(
            what, f"expired on {tls.identity.not_after:%Y-%m-%d %H:%M} UTC; enrol again with a new token"
        ), None
    detail = (
        f"facility {node_id}, valid until {tls.identity.not_after:%Y-%m-%d %H:%M} UTC "
        "(renewed automatically while the facility runs)"
    )
    return _ok(what, detail), tls


def check_authority(
    settings: FacilitySettings, root: bytes, tls: NodeTls | None, timeout: float
) -> tuple[Finding, authority_pb2.ListNodesResponse | None]:
    what = "authority"
    if tls is None:  # not enrolled yet: the enrolment port must answer (TLS, no client certificate)
        address = enrol_address(settings)
        why = _reachable(address, grpc.ssl_channel_credentials(root), AUTHORITY, timeout)
        if why:
            return _fail(what, f"{why}; check HFL_ENROL and that this machine may connect out to it"), None
        return _ok(what, f"its enrolment port {address} answers, with a certificate from your root"), None
    try:
        with sync_channel(settings.authority, tls, peer=AUTHORITY) as ch:
            answer = authority_pb2_grpc.AuthorityServiceStub(ch).ListNodes(
                authority_pb2.ListNodesRequest(), timeout=timeout
            )
    except grpc.RpcError as e:
        return (
            _fail(
                what,
                f"{settings.authority} did not answer ({e.code().name}: {e.details()}); check HFL_AUTHORITY "
                "and that this machine may connect out to it",
            ),
            None,
        )
    return _ok(what, f"{settings.authority} answers"), answer


def check_fogs(
    answer: authority_pb2.ListNodesResponse | None, tls: NodeTls | None, timeout: float
) -> list[Finding]:
    if answer is None or tls is None:
        return [_warn("fogs", "checked once this site has its certificate (after its first start)")]
    fogs = []
    for n in answer.nodes:
        try:
            node = serde.node_from_proto(n)
        except HflError:
            continue
        if node.role == "fog" and node.address:
            fogs.append(node)
    if not fogs:
        return [_fail("fogs", "the authority lists no fog yet; ask the coordinating team")]
    credentials = tls.channel_credentials()
    out = []
    for fog in sorted(fogs, key=lambda f: f.node_id):
        why = _reachable(fog.address, credentials, Peer("fog", fog.node_id), timeout)
        if why:
            out.append(
                _fail(f"fog {fog.node_id}", f"{why}; this machine must be allowed to connect out to it")
            )
        else:
            out.append(_ok(f"fog {fog.node_id}", f"{fog.address} answers (this site connects out to it)"))
    return out


def check_data(settings: FacilitySettings) -> Finding:
    from hfl.learning.data import MISSING_SUFFIX, load_facility_data

    what = "patient data"
    try:
        data = load_facility_data(
            settings.dataset,
            specialty=settings.specialty or "hospital",
            seed=settings.seed,
            label=settings.label,
            n_patients=settings.n_patients,
            stream=settings.resolved_node_id(),
        )
    except (ConfigError, HflError, ValueError, OSError) as e:
        return _fail(what, f"{settings.dataset} cannot be used: {e}")
    columns = [n for n in data.train.feature_names if not n.endswith(MISSING_SUFFIX)]  # not the indicators
    detail = (
        f"{data.train.n} training and {data.test.n} test records, {len(columns)} feature columns "
        f"({settings.dataset})"
    )
    if not settings.dataset.startswith("csv:"):
        return _warn(what, f"{detail}: not your own patients; set HFL_DATASET=csv:/data/<file>.csv")
    return _ok(what, detail)


def check_clock(answer: authority_pb2.ListNodesResponse | None, sent: float, received: float) -> Finding:
    what = "clock"
    if answer is None or not answer.time_unix_ms:
        return _warn(what, "compared with the authority's once this site has its certificate")
    theirs = answer.time_unix_ms / 1000
    ours = (sent + received) / 2
    skew = ours - theirs
    if abs(skew) > CLOCK_TOLERANCE_S:
        side = "ahead of" if skew > 0 else "behind"
        return _fail(
            what,
            f"this machine's clock is {abs(skew):.0f} s {side} the authority's; certificates and round "
            "deadlines need the right time: turn on time synchronisation (NTP)",
        )
    return _ok(what, f"within {abs(skew):.1f} s of the authority's")


def run_checks(
    settings: FacilitySettings,
    *,
    timeout: float = TIMEOUT_S,
    now: Callable[[], float] = time.time,
) -> list[Finding]:
    """Every check, in order; later checks that need an earlier one's result say so instead of failing."""
    findings: list[Finding] = []
    root_finding, root = check_root(settings)
    findings.append(root_finding)
    if root is None:
        findings.append(_warn("the rest", "checked once the root certificate is in place"))
        findings.append(check_data(settings))
        return findings
    cert_finding, tls = check_certificate(settings, root, dt.datetime.fromtimestamp(now(), dt.UTC))
    findings.append(cert_finding)
    sent = now()
    authority_finding, answer = check_authority(settings, root, tls, timeout)
    received = now()
    findings.append(authority_finding)
    findings.extend(check_fogs(answer, tls, timeout))
    findings.append(check_data(settings))
    findings.append(check_clock(answer, sent, received))
    return findings


def main(settings: FacilitySettings, timeout: float = TIMEOUT_S) -> int:
    """Print one line per check and a verdict; 0 when nothing failed."""
    print(f"Checking this site ({settings.resolved_node_id()}) ...", flush=True)
    findings = run_checks(settings, timeout=timeout)
    for f in findings:
        print(f.line(), flush=True)
    failed = [f for f in findings if f.status == "FAIL"]
    if failed:
        print(f"{len(failed)} problem(s) to fix before this site can take part.")
        return 1
    print("This site is ready to join the federation.")
    return 0
