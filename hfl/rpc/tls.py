"""A node's TLS identity and the gRPC credentials made from it: ``<state>/tls/{key.pem,cert.pem,ca.pem}``
on every node, the revocation list it holds, and client channels made for one Peer (the identity the
server must hold). Every connection but enrolment is mutual TLS with require_client_auth=True.

How a node gets and renews its certificate is hfl.rpc.enrolment; the authority's CA is hfl.pki.ca.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from hfl.crypto import x509
from hfl.errors import ConfigError, Unauthenticated
from hfl.files import write_public, write_secret
from hfl.rpc.metrics import CERT_EXPIRY, CERT_LIFETIME

RENEW_WHEN_LEFT = 1 / 3  # renew once a third of the lifetime is left


_IDENTITIES: weakref.WeakSet[NodeTls] = weakref.WeakSet()  # every identity this process holds


def _publish_expiry() -> None:
    """The metrics show the certificate of this process that expires first (a host runs many)."""
    first = min((t.cert for t in _IDENTITIES), key=lambda c: c.not_valid_after_utc, default=None)
    if first is not None:
        CERT_EXPIRY.set(first.not_valid_after_utc.timestamp())
        CERT_LIFETIME.set((first.not_valid_after_utc - first.not_valid_before_utc).total_seconds())


class NodeTls:
    """One node's TLS identity and the credentials made from it (renewable while the server runs)."""

    def __init__(
        self, role: str, node_id: str, directory: Path | None, ca_pem: bytes, key_pem: bytes, cert_pem: bytes
    ) -> None:
        self.role = role
        self.node_id = node_id
        self.dir = directory
        self.ca_pem = ca_pem
        self.ca_cert = x509.cert_from_pem(ca_pem)
        self.revoked: set[int] = set()
        self.generation = 0
        self.reissue: Callable[[bytes], bytes] | None = None
        """Signs a renewal's certificate request here instead of asking the authority (the authority's own
        identity, with its CA)."""
        self._channel_creds: grpc.ChannelCredentials | None = None
        self._set(key_pem, cert_pem)

    def _set(self, key_pem: bytes, cert_pem: bytes) -> None:
        cert = x509.cert_from_pem(cert_pem)
        identity = x509.verify_issued(cert, self.ca_cert)
        if (identity.role, identity.node_id) != (self.role, self.node_id):
            raise ConfigError(f"the certificate names {identity.uri}, not {self.role} {self.node_id}")
        self.key_pem, self.cert_pem, self.cert, self.identity = key_pem, cert_pem, cert, identity
        self._channel_creds = None
        self.generation += 1
        _IDENTITIES.add(self)
        _publish_expiry()

    def install(self, key_pem: bytes, cert_pem: bytes) -> None:
        """Use a new key and certificate from now on (and keep them in the state directory)."""
        self._set(key_pem, cert_pem)
        self.save()

    def save(self) -> None:
        """Keep the current key and certificate in the state directory (if this identity has one)."""
        if self.dir is not None:
            write_secret(self.dir / "key.pem", self.key_pem)
            write_public(self.dir / "cert.pem", self.cert_pem)

    def needs_renewal(self) -> bool:
        """A third of the lifetime left, or a certificate from before identity names (x509.identity_name)
        were written into every certificate: clients would not accept it as this node's."""
        return x509.remaining_fraction(self.cert) < RENEW_WHEN_LEFT or not x509.names_identity(
            self.cert, self.role, self.node_id
        )

    # ---- gRPC credentials
    def _server_config(self, require_client_auth: bool) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem if require_client_auth else None
        )

    def server_credentials(self, require_client_auth: bool = True) -> grpc.ServerCredentials:
        """Server credentials with this node's certificate: mutual TLS, or server-only TLS with
        ``require_client_auth=False`` (the authority's enrolment port). A renewed certificate is picked
        up at the next handshake. Each credentials object remembers on its own which certificate it
        serves, so several ports may share one identity."""
        served = self.generation

        def fetch() -> Any:
            nonlocal served
            if served == self.generation:
                return None
            served = self.generation
            return self._server_config(require_client_auth)

        return grpc.dynamic_ssl_server_credentials(
            self._server_config(require_client_auth),
            fetch,
            require_client_authentication=require_client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if self._channel_creds is None:
            self._channel_creds = grpc.ssl_channel_credentials(
                root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
            )
        return self._channel_creds

    def check_peer(self, cert_pem: bytes) -> x509.Identity:
        """The identity of a peer whose certificate the TLS layer accepted, re-checked now: issued by our CA,
        not expired since the connection started, not revoked."""
        identity = _peer_identity(cert_pem, self.ca_pem)
        if identity.not_after < x509.utcnow():
            raise Unauthenticated("your certificate has expired; renew it")
        if identity.serial in self.revoked:
            raise Unauthenticated(f"the certificate of {identity.node_id} has been revoked")
        return identity


_PEER_CACHE: dict[tuple[bytes, bytes], x509.Identity] = {}


def _peer_identity(cert_pem: bytes, ca_pem: bytes) -> x509.Identity:
    key = (cert_pem, ca_pem)
    found = _PEER_CACHE.get(key)
    if found is None:
        try:
            found = x509.verify_issued(x509.cert_from_pem(cert_pem), x509.cert_from_pem(ca_pem))
        except x509.CertificateError as e:
            raise Unauthenticated(f"certificate refused: {e}") from None
        if len(_PEER_CACHE) > 4096:
            _PEER_CACHE.clear()
        _PEER_CACHE[key] = found
    return found


_DEFAULT: NodeTls | None = None


def default() -> NodeTls | None:
    """The first TLS identity set up in this process (what Channels use unless told otherwise)."""
    return _DEFAULT


def set_default(tls: NodeTls) -> None:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = tls


def load_client(directory: Path) -> NodeTls:
    """Client credentials from a folder with key.pem, cert.pem and ca.pem (e.g. <authority>/operator)."""
    try:
        key_pem = (directory / "key.pem").read_bytes()
        cert_pem = (directory / "cert.pem").read_bytes()
        ca_pem = (directory / "ca.pem").read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"no certificate in {directory} ({e.filename} is missing)") from None
    identity = x509.identity_of(x509.cert_from_pem(cert_pem))
    return NodeTls(identity.role, identity.node_id, None, ca_pem, key_pem, cert_pem)


def operator_for_run(run: Path) -> NodeTls | None:
    """The operator certificate of a demo run folder (None if the run has none: HFL_TLS=false)."""
    directory = run / "state" / "authority" / "operator"
    return load_client(directory) if (directory / "cert.pem").exists() else None


@dataclass(frozen=True)
class Peer:
    """Whom a client means to reach: a role, and the node id when it is known.

    Every hfl client channel is made for one Peer, and the TLS handshake itself checks it: the channel's
    TLS target name is the peer's identity name (x509.identity_name), which only a certificate the
    authority issued for exactly that role (and node) carries. A facility certificate that also lists
    the host name "authority" or 127.0.0.1 is therefore refused by a client that wants the authority.
    (gRPC Python has no hook to inspect the server certificate after the handshake; the target name is
    the check its TLS stack already enforces, before any request is sent.)"""

    role: str
    node_id: str | None = None

    @property
    def name(self) -> str:
        return x509.identity_name(self.role, self.node_id)


AUTHORITY = Peer("authority")
LEADER = Peer("leader")


def peer_options(options: list[tuple[str, Any]] | None, peer: Peer | None) -> list[tuple[str, Any]]:
    out = list(options or [])
    if peer is not None:
        out.append(("grpc.ssl_target_name_override", peer.name))
    return out


def aio_channel(
    address: str, tls: NodeTls | None, options: list[tuple[str, Any]] | None = None, peer: Peer | None = None
) -> grpc.aio.Channel:
    """A client channel; with TLS and ``peer``, only a server holding that identity is accepted."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=peer_options(options, peer))


def sync_channel(
    address: str, tls: NodeTls | None, options: list[tuple[str, Any]] | None = None, peer: Peer | None = None
) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.channel_credentials(), options=peer_options(options, peer))
