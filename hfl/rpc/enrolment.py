"""How a node gets its certificate and keeps it valid: enrolment with a one-time token on the authority's
enrolment port (server-only TLS: the node has no certificate yet), renewal before expiry and the
revocation list (over mutual TLS), and the authority's signing key pinned at set-up.

The files are in hfl.rpc.tls; the authority's side (its CA, the token file) is hfl.pki.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from hfl.crypto import x509
from hfl.errors import ConfigError, NotAllowed
from hfl.files import write_public
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.repeats import Repeats
from hfl.rpc.settings import NodeSettings
from hfl.rpc.tls import AUTHORITY, NodeTls, aio_channel, peer_options, set_default

log = logging.getLogger("hfl.pki")


def host_names(settings: NodeSettings, role: str) -> list[str]:
    hosts = [settings.resolved_advertise_host(), "localhost", "127.0.0.1"]
    hosts += [h.strip() for h in settings.tls_hosts.split(",") if h.strip()]
    if role == "authority":
        hosts += ["authority", settings.authority.rpartition(":")[0]]
    return hosts


def enrol_address(settings: NodeSettings) -> str:
    if settings.enrol:
        return settings.enrol
    return f"{settings.authority.rpartition(':')[0]}:50052"


async def _wait_for_file(path: Path, what: str, timeout: float = 180.0) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    shown = False
    while not path.exists():
        if asyncio.get_running_loop().time() > deadline:
            raise ConfigError(f"{what} {path} does not exist; set HFL_TLS_CA to the federation's ca.pem")
        if not shown:
            log.info("waiting for %s at %s ...", what, path)
            shown = True
        await asyncio.sleep(0.2)
    return path.read_bytes()


AUTHORITY_KEY_FILE = "authority-key.pub"  # the authority's Ed25519 signing key, pinned at set-up


def pin_authority_key(folder: Path, public_key: bytes) -> None:
    """Write the authority's signing key next to a copy of the root certificate (set-up, not Register)."""
    write_public(folder / AUTHORITY_KEY_FILE, public_key.hex().encode() + b"\n")


def pinned_authority_key(settings: NodeSettings) -> bytes | None:
    """The authority's signing key as pinned at set-up: in this node's tls folder, or next to HFL_TLS_CA.
    None when the set-up predates pinning (the key is then taken from the authority's answer, over a
    channel that must end at the authority's certificate)."""
    places = [settings.state_dir / "tls" / AUTHORITY_KEY_FILE]
    if settings.tls_ca:
        places.append(Path(settings.tls_ca).parent / AUTHORITY_KEY_FILE)
    for path in places:
        if path.is_file():
            try:
                return bytes.fromhex(path.read_text().strip())
            except ValueError:
                raise ConfigError(f"{path} does not hold the authority's key (hex)") from None
    return None


def check_authority_key(answered: bytes, pinned: bytes | None) -> bytes:
    """The authority's signing key to trust: the one pinned at set-up; an answer naming another is refused."""
    if pinned is not None and answered != pinned:
        raise ConfigError(
            "the authority answered with a signing key different from the one pinned when this node was "
            f"set up ({AUTHORITY_KEY_FILE}); refusing to trust it"
        )
    return answered


OwnIdentity = Callable[[NodeSettings], NodeTls]
"""How a node that is its own certificate authority (the authority: services/authority/enrol.py) makes its
TLS identity at start; the identity's ``reissue`` then signs its renewals."""


async def ensure_identity(
    settings: NodeSettings, role: str, own: OwnIdentity | None = None
) -> NodeTls | None:
    """This node's TLS identity: made locally (``own``: the authority), loaded from the state directory, or
    obtained by enrolling with HFL_ENROL_TOKEN. None when HFL_TLS=false."""
    if not settings.tls:
        return None
    if own is not None:
        tls = own(settings)
        set_default(tls)
        return tls
    if role == "authority":
        raise ConfigError("the authority issues its own certificate (services.authority.enrol.own_identity)")
    node_id = settings.resolved_node_id()
    tls_dir = settings.state_dir / "tls"
    ca_path = Path(settings.tls_ca) if settings.tls_ca else tls_dir / "ca.pem"
    ca_pem = await _wait_for_file(ca_path, "the federation's root certificate")
    if ca_path != tls_dir / "ca.pem":
        write_public(tls_dir / "ca.pem", ca_pem)
        pin = ca_path.parent / AUTHORITY_KEY_FILE
        if pin.is_file():
            write_public(tls_dir / AUTHORITY_KEY_FILE, pin.read_bytes())
    key_path, cert_path = tls_dir / "key.pem", tls_dir / "cert.pem"
    if key_path.exists() and cert_path.exists():
        try:
            tls = NodeTls(role, node_id, tls_dir, ca_pem, key_path.read_bytes(), cert_path.read_bytes())
            log.info(
                "using the certificate in %s (valid until %s)",
                cert_path,
                tls.identity.not_after.strftime("%Y-%m-%d %H:%M UTC"),
            )
            set_default(tls)
            return tls
        except (x509.CertificateError, ConfigError) as e:
            log.warning("the stored certificate cannot be used (%s); enrolling again", e)
    token = enrol_token_of(settings)
    if not token:
        raise ConfigError(
            "this node has no valid certificate yet: set HFL_ENROL_TOKEN (or HFL_ENROL_TOKEN_FILE) to the "
            "enrolment token from the operator (or HFL_TLS=false to debug without TLS)"
        )
    key = x509.new_key()
    csr = x509.make_csr(key, node_id, role, host_names(settings, role))
    cert_pem = await enrol(enrol_address(settings), ca_pem, token, role, node_id, csr)
    tls = NodeTls(role, node_id, tls_dir, ca_pem, x509.key_to_pem(key), cert_pem)
    tls.save()
    log.info("enrolled with the authority as %s %s", role, node_id)
    _forget_used_token(settings)
    set_default(tls)
    return tls


def enrol_token_of(settings: NodeSettings) -> str:
    """HFL_ENROL_TOKEN, else the content of HFL_ENROL_TOKEN_FILE ("" if neither is set)."""
    if settings.enrol_token or not settings.enrol_token_file:
        return settings.enrol_token.strip()
    path = Path(settings.enrol_token_file)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"HFL_ENROL_TOKEN_FILE: {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"HFL_ENROL_TOKEN_FILE: cannot read {path} ({e.strerror})") from None


def _forget_used_token(settings: NodeSettings) -> None:
    """Delete a one-time token file kept in this node's own state folder once it has been used (a shared
    token on a read-only trust volume stays where it is)."""
    if settings.enrol_token or not settings.enrol_token_file:
        return
    path = Path(settings.enrol_token_file)
    try:
        if path.resolve().is_relative_to(settings.state_dir.resolve()):
            path.unlink()
    except OSError as e:
        log.info("could not delete the used enrolment token file %s (%s)", path, e.strerror)


async def enrol(
    address: str, ca_pem: bytes, token: str, role: str, node_id: str, csr_pem: bytes, attempts: int = 150
) -> bytes:
    """Ask the authority's enrolment port for a certificate, retrying while it starts."""
    delay = 0.2
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    # The authority's certificate names its role, not a host: a site enrolling from outside dials the
    # authority by a public name or address that no certificate lists (hfl.rpc.tls.Peer).
    options = peer_options(None, AUTHORITY)
    for i in range(attempts):
        try:
            async with grpc.aio.secure_channel(address, creds, options=options) as ch:
                resp = await authority_pb2_grpc.AuthorityServiceStub(ch).Enroll(
                    authority_pb2.EnrollRequest(token=token, role=role, node_id=node_id, csr_pem=csr_pem),
                    timeout=10,
                )
            return bytes(resp.certificate_pem)
        except grpc.aio.AioRpcError as e:
            if e.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                raise ConfigError(f"enrolment refused by the authority: {e.details()}") from None
            if i % 10 == 0:
                log.info("waiting for the authority's enrolment service at %s ...", address)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)
    raise ConfigError(f"the authority's enrolment service at {address} did not answer; is it running?")


# ------------------------------------------------------------------------------------------ upkeep
async def maintain(tls: NodeTls, settings: NodeSettings) -> None:
    """Background upkeep while a server runs: renew the certificate before it expires, refresh the
    revocation list (the authority itself is the only one that revokes: it learns its revocations at once
    through CAStore.on_revoke). Failures are logged and retried; they never stop the service."""
    next_crl = 0.0
    loop = asyncio.get_running_loop()
    said = Repeats(log)
    while True:
        try:
            if tls.needs_renewal():
                await renew(tls, settings)
            if tls.role != "authority" and loop.time() >= next_crl:
                async with aio_channel(settings.authority, tls, peer=AUTHORITY) as ch:
                    resp = await authority_pb2_grpc.AuthorityServiceStub(ch).GetRevocations(
                        authority_pb2.GetRevocationsRequest(), timeout=10
                    )
                serials = x509.revoked_serials(bytes(resp.crl_pem), tls.ca_cert)
                if serials - tls.revoked:
                    log.warning(
                        "revocation list: %d certificate(s) revoked in all; this service now refuses them",
                        len(serials),
                    )
                tls.revoked.update(serials)
                next_crl = loop.time() + settings.crl_refresh_s
            said.clear()
        except (grpc.aio.AioRpcError, x509.CertificateError, ConfigError, NotAllowed) as e:
            said.say(*upkeep_problem(e))
        except Exception:
            log.exception("certificate upkeep failed; will retry")
        await asyncio.sleep(min(5.0, settings.crl_refresh_s))


def upkeep_problem(e: Exception) -> tuple[int, str]:
    """How bad a failed certificate upkeep is, and what to say about it. A refused certificate (revoked by
    an operator, or its facility quarantined) will not come right by retrying; anything else may."""
    if isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.UNAUTHENTICATED:
        return logging.WARNING, (
            f"the authority no longer accepts this node's certificate ({e.details()}): it takes no part "
            "until an operator releases it (a quarantined facility) and it enrols again with a new one-time "
            "token; this is said once"
        )
    detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
    return logging.INFO, f"certificate upkeep will retry: {detail}"


async def renew(tls: NodeTls, settings: NodeSettings) -> None:
    key = x509.new_key()
    csr = x509.make_csr(key, tls.node_id, tls.role, host_names(settings, tls.role))
    if tls.reissue is not None:  # the authority signs its own
        cert_pem = tls.reissue(csr)
    else:
        async with aio_channel(settings.authority, tls, peer=AUTHORITY) as ch:
            resp = await authority_pb2_grpc.AuthorityServiceStub(ch).RenewCertificate(
                authority_pb2.RenewCertificateRequest(csr_pem=csr), timeout=10
            )
        cert_pem = bytes(resp.certificate_pem)
    tls.install(x509.key_to_pem(key), cert_pem)
    log.info(
        "renewed this node's certificate (valid until %s)", tls.identity.not_after.strftime("%Y-%m-%d %H:%M")
    )
