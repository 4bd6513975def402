"""X.509 certificates for node identities: the authority's CA, CSRs, issued certificates and CRLs.

Pure logic (no files, no network): hfl.rpc.tls stores keys and certificates, hfl.pki.ca and
services.authority issue them. A node certificate names its role and node id three times so any TLS
stack can read it: subject CN = node id, subject OU = role, and a SAN URI ``hfl://<role>/<node id>``
(the one we trust). Keys are ECDSA P-256 (fast to make, supported by gRPC's TLS stack).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateError", "Identity"]

CERT_ROLES = ("authority", "leader", "fog", "facility", "validator", "operator")
URI_PREFIX = "hfl://"
MAX_HOSTS = 8
MAX_CSR_BYTES = 16 * 1024
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DNS = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*$"
)
CLOCK_SKEW = dt.timedelta(minutes=5)


class CertificateError(ValueError):
    """A certificate, CSR or CRL is malformed, expired, from another CA, or names no hfl identity."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is."""

    role: str
    node_id: str
    serial: int
    not_after: dt.datetime

    @property
    def uri(self) -> str:
        return f"{URI_PREFIX}{self.role}/{self.node_id}"


IDENTITY_SUFFIX = ".hfl"


def identity_name(role: str, node_id: str | None = None) -> str:
    """The DNS name that proves an identity to TLS itself: ``n<hash of node id>.<role>.hfl`` for one node,
    ``<role>.hfl`` for any node of a role (clients that only know the role, e.g. of the authority). The
    authority writes both into every certificate it issues and never signs a requested name ending in
    ``.hfl``; clients set it as the TLS target name, so the handshake fails unless the server holds a
    certificate for exactly that identity (hfl.rpc.tls.Peer)."""
    check_role(role)
    if node_id is None:
        return f"{role}{IDENTITY_SUFFIX}"
    # The node id is hashed: ids may hold characters DNS names do not ('_') and differ only in case,
    # which host-name matching ignores.
    digest = hashlib.sha256(check_node_id(node_id).encode()).hexdigest()[:40]
    return f"n{digest}.{role}{IDENTITY_SUFFIX}"


def names_identity(cert: x509.Certificate, role: str, node_id: str) -> bool:
    """Whether ``cert`` carries the identity names of ``role``/``node_id`` (see identity_name)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = set(san.get_values_for_type(x509.DNSName))
    return {identity_name(role, node_id), identity_name(role)} <= dns


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_node_id(node_id: str) -> str:
    if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
        raise CertificateError(
            "a node id must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return node_id


def check_role(role: str) -> str:
    if role not in CERT_ROLES:
        raise CertificateError(f"unknown role {role!r}; one of {', '.join(CERT_ROLES)}")
    return role


# ------------------------------------------------------------------------------------------ keys
def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_from_pem(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"not a private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("expected an ECDSA private key")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"not a PEM certificate: {e}") from None


# ------------------------------------------------------------------------------------------ CA
def _key_usage(
    *,
    digital_signature: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A KeyUsage extension with only the named uses set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


CA_DAYS = 3650


def make_ca(name: str = "hfl authority root") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed root, valid for CA_DAYS, that may sign node certificates and CRLs, and nothing
    below them."""
    now = utcnow()
    key = new_key()
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hfl"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


# ------------------------------------------------------------------------------------------ CSR
def _host_names(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for h in hosts:
        if not h or h in seen:
            continue
        seen.add(h)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
            continue
        except ValueError:
            pass
        if _DNS.match(h):
            out.append(x509.DNSName(h))
    return out


def make_csr(key: ec.EllipticCurvePrivateKey, node_id: str, role: str, hosts: list[str]) -> bytes:
    """A request for a certificate; the authority decides role and node id (from the token), not the CSR."""
    check_node_id(node_id)
    check_role(role)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
    )
    names = _host_names(hosts)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """Parse and check a CSR: size, self-signature, an ECDSA P-256 key."""
    if not pem or len(pem) > MAX_CSR_BYTES:
        raise CertificateError(f"the certificate request must be 1 to {MAX_CSR_BYTES} bytes of PEM")
    try:
        csr = x509.load_pem_x509_csr(pem)
    except (ValueError, TypeError):
        raise CertificateError("the certificate request is not a PEM CSR") from None
    if not csr.is_signature_valid:
        raise CertificateError("the certificate request's signature does not check out")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CertificateError("the certificate request must carry an ECDSA P-256 key")
    return csr


def _reserved(name: x509.GeneralName) -> bool:
    return isinstance(name, x509.DNSName) and name.value.lower().rstrip(".").endswith(IDENTITY_SUFFIX)


def csr_host_names(csr_pem: bytes) -> list[str]:
    """The host names and addresses a CSR asks for, as text (for the authority's record of a node)."""
    return [str(n.value) for n in _csr_hosts(load_csr(csr_pem)) if not _reserved(n)]


def _csr_hosts(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[x509.GeneralName] = [n for n in san if isinstance(n, (x509.DNSName, x509.IPAddress))]
    if len(names) > MAX_HOSTS:
        raise CertificateError(f"the certificate request names more than {MAX_HOSTS} hosts")
    return names


# ------------------------------------------------------------------------------------------ issuing
def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    csr_pem: bytes,
    *,
    role: str,
    node_id: str,
    now: dt.datetime | None = None,
    hours: float = 24.0,
    hosts: list[str] | None = None,
) -> x509.Certificate:
    """Sign a node certificate for ``role``/``node_id`` with the CSR's key. Host names: ``hosts`` when
    given (the authority's record of the node), else the CSR's; never one ending in ``.hfl`` (those
    prove identities and are added here from ``role`` and ``node_id`` alone)."""
    check_role(role)
    check_node_id(node_id)
    if not 0 < hours <= 24 * 3650:
        raise CertificateError("a certificate's lifetime must be positive and at most ten years")
    csr = load_csr(csr_pem)
    now = now or utcnow()
    own = _host_names([node_id])
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(f"{URI_PREFIX}{role}/{node_id}"),
        x509.DNSName(identity_name(role, node_id)),
        x509.DNSName(identity_name(role)),
    ]
    asked = _csr_hosts(csr) if hosts is None else _host_names(list(hosts))
    names += own + [n for n in asked if n not in own and not _reserved(n)]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hfl"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(hours=hours))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def identity_of(cert: x509.Certificate) -> Identity:
    """The hfl identity named by a certificate's SAN URI (raises if it names none or several)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("the certificate names no hfl identity") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(URI_PREFIX)]
    if len(uris) != 1:
        raise CertificateError("the certificate must name exactly one hfl identity")
    role, sep, node_id = uris[0][len(URI_PREFIX) :].partition("/")
    if not sep:
        raise CertificateError("the certificate's hfl identity is malformed")
    check_role(role)
    check_node_id(node_id)
    return Identity(role, node_id, cert.serial_number, cert.not_valid_after_utc)


def verify_issued(
    cert: x509.Certificate, ca_cert: x509.Certificate, now: dt.datetime | None = None
) -> Identity:
    """Check that ``ca_cert`` signed ``cert`` and that it is valid now; return its identity."""
    now = now or utcnow()
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError("the certificate was not issued by this federation's authority") from None
    if now < cert.not_valid_before_utc:
        raise CertificateError("the certificate is not valid yet (check the clock)")
    if now > cert.not_valid_after_utc:
        raise CertificateError("the certificate has expired")
    return identity_of(cert)


def remaining_fraction(cert: x509.Certificate, now: dt.datetime | None = None) -> float:
    """How much of the certificate's lifetime is left (0 when expired, 1 when brand new)."""
    now = now or utcnow()
    total = (cert.not_valid_after_utc - cert.not_valid_before_utc - CLOCK_SKEW).total_seconds()
    left = (cert.not_valid_after_utc - now).total_seconds()
    return max(0.0, min(1.0, left / total)) if total > 0 else 0.0


# ------------------------------------------------------------------------------------------ CRL
def make_crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: list[tuple[int, dt.datetime]],
    *,
    now: dt.datetime | None = None,
    valid_for: dt.timedelta = dt.timedelta(hours=1),
) -> bytes:
    """A signed list of revoked serial numbers (PEM)."""
    now = now or utcnow()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + valid_for)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def revoked_serials(crl_pem: bytes, ca_cert: x509.Certificate) -> frozenset[int]:
    """The serials a CRL revokes, after checking the CA signed it."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except (ValueError, TypeError):
        raise CertificateError("the revocation list is not a PEM CRL") from None
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public):
        raise CertificateError("the revocation list was not signed by this federation's authority")
    return frozenset(r.serial_number for r in crl)


def key_fingerprint(public_key: CertificatePublicKeyTypes) -> str:
    """SHA-256 (hex) of a public key's SubjectPublicKeyInfo: names one key across requests."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()
