"""The authority as certificate authority: enrolment with one-time tokens, renewal, revocation list.

Policy lives here; keys, files and the CA database are in hfl.pki, certificate logic in hfl.crypto.x509.
A quarantined facility's certificates are revoked, and it can neither renew nor enrol again.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

import grpc

from hfl.crypto import x509
from hfl.errors import InvalidInput, NotAllowed, NotFound, NotReady, RateLimited, Unauthenticated
from hfl.files import write_public
from hfl.oplog import OperatorLog
from hfl.pki.ca import CAStore, open_ca
from hfl.pki.tokens import ANY_NODE
from hfl.proto.v1 import authority_pb2
from hfl.rpc import authz
from hfl.rpc.enrolment import host_names
from hfl.rpc.settings import AuthoritySettings, NodeSettings
from hfl.rpc.tls import NodeTls

log = logging.getLogger("hfl.authority")

# A node renews when a third of its certificate's lifetime is left; more often than every quarter of the
# lifetime is not renewal but someone minting certificates (e.g. with a stolen key): refused.
RENEW_AT_MOST_EVERY = 0.25


def own_identity(settings: NodeSettings) -> NodeTls:
    """The authority's TLS identity, issued by its own CA at every start and renewed by it (``reissue``);
    also writes the root beside it, takes the CA's revocations, and renews the operator certificate."""
    ca = open_ca(settings.state_dir, settings.cert_hours)
    node_id = settings.resolved_node_id()
    tls_dir = settings.state_dir / "tls"
    key_pem, cert_pem = ca.issue_local("authority", node_id, host_names(settings, "authority"))
    tls = NodeTls("authority", node_id, tls_dir, ca.cert_pem, key_pem, cert_pem)
    tls.save()
    write_public(tls_dir / "ca.pem", ca.cert_pem)
    tls.revoked.update(s for s, _ in ca.revoked())
    ca.on_revoke.append(tls.revoked.update)
    ca.write_operator()
    tls.reissue = lambda csr: open_ca(settings.state_dir).issue(csr, "authority", node_id)
    return tls


class CertificateService:
    """Mixed into the Authority servicer (services/authority/service.py)."""

    settings: AuthoritySettings
    oplog: OperatorLog
    if TYPE_CHECKING:  # the facilities the authority has quarantined (a property of the servicer)

        @property
        def quarantined(self) -> frozenset[str]: ...

    def ca(self) -> CAStore:
        if not self.settings.tls:
            raise NotReady("this federation runs without TLS (HFL_TLS=false); there are no certificates")
        return open_ca(self.settings.state_dir, self.settings.cert_hours)

    def revoke_quarantined(self, facilities: list[str] | frozenset[str]) -> None:
        if not self.settings.tls:
            return
        ca = self.ca()
        for f in facilities:
            ca.revoke_node(f)

    async def Enroll(
        self, request: authority_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.EnrollResponse:
        ca = self.ca()
        try:
            role, node_id = x509.check_role(request.role), x509.check_node_id(request.node_id)
        except x509.CertificateError as e:
            raise InvalidInput(str(e)) from None
        if len(request.csr_pem) > x509.MAX_CSR_BYTES:
            raise InvalidInput("the certificate request is too large")
        csr = x509.load_csr(bytes(request.csr_pem))  # a bad CSR must not burn the token
        key_id = x509.key_fingerprint(csr.public_key())
        token_role, token_node = ca.token_identity(request.token, node_id, key_id)
        if token_role != role or token_node not in (node_id, ANY_NODE):
            whom = f"new {token_role} nodes" if token_node == ANY_NODE else f"{token_role} {token_node}"
            raise NotAllowed(f"this enrolment token is for {whom}, not {role} {node_id}")
        if node_id in self.quarantined or ca.is_node_revoked(node_id):
            raise NotAllowed(f"{node_id} is quarantined or revoked; it cannot enrol again")
        ca.consume_token(request.token, node_id, key_id=key_id)
        cert = ca.issue(bytes(request.csr_pem), role, node_id)
        log.info("enrolled %s %s (certificate for %.0f h)", role, node_id, self.settings.cert_hours)
        return authority_pb2.EnrollResponse(certificate_pem=cert, ca_certificate_pem=ca.cert_pem)

    async def RenewCertificate(
        self, request: authority_pb2.RenewCertificateRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.RenewCertificateResponse:
        who = authz.caller()
        if who is None:
            raise Unauthenticated("renewal needs a client certificate")
        ca = self.ca()
        if who.node_id in self.quarantined or ca.is_node_revoked(who.node_id):
            raise NotAllowed(f"{who.node_id} is quarantined or revoked; its certificate is not renewed")
        last = ca.last_issued(who.node_id)
        every = dt.timedelta(hours=self.settings.cert_hours * RENEW_AT_MOST_EVERY)
        if last is not None and x509.utcnow() - last < every:
            raise RateLimited(
                f"{who.node_id} got a certificate {(x509.utcnow() - last).total_seconds() / 60:.0f} minutes "
                f"ago; a node renews at most once every {every.total_seconds() / 60:.0f} minutes"
            )
        # The names come from the authority's record of the node, never from this request.
        cert = ca.issue(bytes(request.csr_pem), who.role, who.node_id, renewal=True)
        log.info("renewed the certificate of %s %s", who.role, who.node_id)
        return authority_pb2.RenewCertificateResponse(certificate_pem=cert)

    async def RevokeNode(
        self, request: authority_pb2.RevokeNodeRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.RevokeNodeResponse:
        """Operator only (hfl/rpc/authz.py): revoke any node's certificates, with a reason."""
        node_id, reason = request.node_id.strip(), " ".join(request.reason.split())
        if not reason or len(reason) > 500:
            raise InvalidInput("give the reason for the revocation in 1 to 500 characters")
        ca = self.ca()
        role = ca.role_of(node_id)
        if role is None:
            raise NotFound(f"no node {node_id[:80]!r} has ever held a certificate of this federation")
        if role in ("authority", "operator"):
            raise NotAllowed(
                f"the {role}'s own certificate cannot be revoked this way (it is re-made at each start "
                "of the authority)"
            )
        who = authz.caller()
        serials = ca.revoke_node(node_id, reason=reason, by=who.node_id if who else "operator")
        self.forget_node(node_id)
        self.oplog.record(
            who.node_id if who else "operator", "revoke", node_id, reason, f"{len(serials)} certificate(s)"
        )
        log.warning(
            "revoked %s %s on the operator's request (%d certificates): %s",
            role,
            node_id,
            len(serials),
            reason,
        )
        return authority_pb2.RevokeNodeResponse(
            role=role, certificates=len(serials), refresh_seconds=self.settings.crl_refresh_s
        )

    def forget_node(self, node_id: str) -> None:
        """Stop scheduling a revoked node (the servicer removes it from its registry)."""

    async def GetRevocations(
        self, request: authority_pb2.GetRevocationsRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.GetRevocationsResponse:
        return authority_pb2.GetRevocationsResponse(crl_pem=self.ca().crl_pem())
