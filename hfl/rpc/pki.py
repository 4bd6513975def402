"""Certificates on disk and on the wire: the authority's CA store, enrolment tokens, each node's TLS
identity (enrolment, renewal, revocation list) and the gRPC credentials made from them.

Pure certificate logic is in hfl.crypto.x509; this module does the files, SQLite and RPCs.

Layout:
- authority: ``<state>/ca/ca.key`` (0600), ``<state>/ca/ca.pem`` (the trust root to hand out),
  ``<state>/ca/ca.db`` (issued certificates, used tokens, revocations; WAL, synchronous=FULL),
  ``<state>/enrol_tokens.json`` (SHA-256 hashes of one-time tokens with the role and node id each may
  enrol as; written by ``hfl demo`` or ``hfl enrol-token``), ``<state>/operator/`` (a client certificate
  for operator tools: ``hfl status``, the demo's progress display, tests).
- every node: ``<state>/tls/{key.pem,cert.pem,ca.pem}``.

Enrolment runs on a separate port of the authority with server-only TLS (a node has no certificate
yet); every other connection is mutual TLS with require_client_auth=True.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from hfl.crypto import x509
from hfl.errors import ConfigError, NotAllowed, Unauthenticated
from hfl.files import private_db
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.rpc.metrics import CERT_EXPIRY, CERT_LIFETIME
from hfl.rpc.settings import Settings

log = logging.getLogger("hfl.pki")

RENEW_WHEN_LEFT = 1 / 3  # renew once a third of the lifetime is left
OPERATOR_HOURS = 24.0 * 30
TOKENS_FILE = "enrol_tokens.json"


# ------------------------------------------------------------------------------------------ files
def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` through a fsynced temporary file and a rename (``mode`` before the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_secret(path: Path, data: bytes) -> None:
    """Atomically write a private file (0600), fsynced."""
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Atomically write a file anyone may read, fsynced."""
    _write_atomic(path, data, 0o666)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


ANY_NODE = "*"  # the node id of a shared role token: each use names its own (new) node id
SHARED_TOKEN_ROLES = frozenset({"facility"})  # only facilities may enrol with a shared token


def _expiry(hours: float | None) -> str:
    if hours is None:
        return ""
    if not 0 < hours <= 24 * 365:
        raise ConfigError("an enrolment token must expire after more than 0 and at most 8760 hours")
    return (x509.utcnow() + dt.timedelta(hours=hours)).isoformat()


def _append_token(authority_state: Path, entry: dict[str, Any]) -> None:
    path = authority_state / TOKENS_FILE
    doc: list[dict[str, Any]] = [dict(e) for e in read_tokens(path)]
    doc.append(entry)
    write_secret(path, json.dumps({"tokens": doc}, indent=1).encode())


def add_enrol_token(authority_state: Path, role: str, node_id: str, hours: float | None = None) -> str:
    """Make a one-time enrolment token for ``role``/``node_id`` and register its hash with the authority
    (the authority re-reads the file on every enrolment, so this works while it runs). ``hours``: expiry
    (default: none)."""
    x509.check_role(role)
    x509.check_node_id(node_id)
    if role in ("authority", "operator"):
        raise ConfigError(f"nodes of role {role!r} do not enrol")
    token = secrets.token_urlsafe(24)
    entry: dict[str, Any] = {"sha256": token_hash(token), "role": role, "node_id": node_id}
    if hours is not None:
        entry["expires"] = _expiry(hours)
    _append_token(authority_state, entry)
    return token


def add_role_token(authority_state: Path, role: str, max_uses: int, hours: float) -> str:
    """Make a shared enrolment token for new nodes of ``role`` (facilities only): at most ``max_uses``
    enrolments, each for a node id never enrolled before, until it expires after ``hours``.

    Trade-off (docs/security.md): whoever holds it can enrol as a NEW facility, which is why it is capped,
    expires, and every use is logged. Production sites should give each facility a one-time token."""
    if role not in SHARED_TOKEN_ROLES:
        raise ConfigError(
            f"a shared enrolment token cannot be made for role {role!r}: only facilities may share one; "
            "give every other node its own one-time token (hfl enrol-token)"
        )
    if not isinstance(max_uses, int) or not 1 <= max_uses <= 10_000:
        raise ConfigError("a shared enrolment token must allow between 1 and 10000 enrolments")
    token = secrets.token_urlsafe(32)
    _append_token(
        authority_state,
        {
            "sha256": token_hash(token),
            "role": role,
            "node_id": ANY_NODE,
            "max_uses": max_uses,
            "expires": _expiry(hours),
        },
    )
    return token


def read_tokens(path: Path) -> list[dict[str, Any]]:
    """Token entries: sha256, role, node_id (or "*" for a shared role token), and optionally max_uses
    (shared tokens) and expires (ISO time, UTC)."""
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
        entries = doc["tokens"]
        out: list[dict[str, Any]] = []
        for e in entries:
            entry: dict[str, Any] = {
                "sha256": str(e["sha256"]),
                "role": str(e["role"]),
                "node_id": str(e["node_id"]),
            }
            if "max_uses" in e:
                entry["max_uses"] = int(e["max_uses"])
            if e.get("expires"):
                entry["expires"] = dt.datetime.fromisoformat(str(e["expires"])).isoformat()
            out.append(entry)
        return out
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a valid enrolment token file") from None


# ------------------------------------------------------------------------------------------ the CA
ENROL_RETRY_WINDOW = dt.timedelta(minutes=10)
"""How long a node may repeat an enrolment whose answer it lost (same token, same key)."""


class CAStore:
    """The authority's certificate authority: key, root, issued certificates, tokens, revocations."""

    def __init__(self, state_dir: Path, *, cert_hours: float = 24.0) -> None:
        self.state_dir = state_dir
        self.dir = state_dir / "ca"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert_hours = cert_hours
        key_path, cert_path = self.dir / "ca.key", self.dir / "ca.pem"
        if key_path.exists() and cert_path.exists():
            self.key = x509.key_from_pem(key_path.read_bytes())
            self.cert = x509.cert_from_pem(cert_path.read_bytes())
        else:
            self.key, self.cert = x509.make_ca()
            write_secret(key_path, x509.key_to_pem(self.key))
            write_public(cert_path, x509.cert_to_pem(self.cert))
            log.info("created the federation's certificate authority (%s)", cert_path)
        self.cert_pem = x509.cert_to_pem(self.cert)
        self._db = sqlite3.connect(
            private_db(self.dir / "ca.db"), check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS certs (serial TEXT PRIMARY KEY, node_id TEXT NOT NULL,
                                              role TEXT NOT NULL,
                                              not_after TEXT NOT NULL, revoked_at TEXT);
            CREATE TABLE IF NOT EXISTS used_tokens (sha256 TEXT PRIMARY KEY, node_id TEXT NOT NULL,
                                                    used_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS shared_token_uses (node_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL,
                                                          role TEXT NOT NULL, used_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS enrol_keys (node_id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL,
                                                   key_sha256 TEXT NOT NULL, enrolled_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS releases (node_id TEXT NOT NULL, released_at TEXT NOT NULL,
                                                 reason TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS hosts (node_id TEXT PRIMARY KEY, names TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS revocations (node_id TEXT NOT NULL, revoked_at TEXT NOT NULL,
                                                    reason TEXT NOT NULL, by TEXT NOT NULL);
            """
        )
        try:  # ca.db files from before issue times were kept
            self._db.execute("ALTER TABLE certs ADD COLUMN issued_at TEXT")
        except sqlite3.OperationalError:
            pass
        self._lock = threading.Lock()
        self.on_revoke: list[Callable[[frozenset[int]], None]] = []

    def close(self) -> None:
        self._db.close()

    # ---- issuing
    def issue(
        self, csr_pem: bytes, role: str, node_id: str, hours: float | None = None, *, renewal: bool = False
    ) -> bytes:
        """Sign a certificate for ``role``/``node_id``. Its host names are the authority's record of the
        node: those its first certificate request named (minus other nodes' names), fixed from then on.
        A renewal never adds names, whatever its request asks for."""
        cert = x509.issue(
            self.key,
            self.cert,
            csr_pem,
            role=role,
            node_id=node_id,
            hours=hours or self.cert_hours,
            hosts=self._hosts_for(node_id, csr_pem, renewal),
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO certs(serial, node_id, role, not_after, issued_at) VALUES (?, ?, ?, ?, ?)",
                (
                    str(cert.serial_number),
                    node_id,
                    role,
                    cert.not_valid_after_utc.isoformat(),
                    x509.utcnow().isoformat(),
                ),
            )
        return x509.cert_to_pem(cert)

    def _hosts_for(self, node_id: str, csr_pem: bytes, renewal: bool) -> list[str]:
        row = self._db.execute("SELECT names FROM hosts WHERE node_id=?", (node_id,)).fetchone()
        if row is not None:
            return list(json.loads(row[0]))
        if renewal:  # a certificate from before the record existed: keep only the node's own names
            return []
        others = {
            str(r[0]).lower()
            for r in self._db.execute("SELECT DISTINCT node_id FROM certs WHERE node_id<>?", (node_id,))
        }
        reserved = others | {r for r in x509.CERT_ROLES}
        names = [h for h in x509.csr_host_names(csr_pem) if h.lower() not in reserved]
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO hosts(node_id, names) VALUES (?, ?)", (node_id, json.dumps(names))
            )
        return names

    def role_of(self, node_id: str) -> str | None:
        """The role of ``node_id``'s newest certificate (None if it never held one)."""
        row = self._db.execute(
            "SELECT role FROM certs WHERE node_id=? ORDER BY not_after DESC LIMIT 1", (node_id,)
        ).fetchone()
        return str(row[0]) if row else None

    def last_issued(self, node_id: str) -> dt.datetime | None:
        """When the newest certificate of ``node_id`` was issued (None: never, or before this was kept)."""
        row = self._db.execute("SELECT MAX(issued_at) FROM certs WHERE node_id=?", (node_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return dt.datetime.fromisoformat(row[0])

    def issue_local(
        self, role: str, node_id: str, hosts: list[str], hours: float | None = None
    ) -> tuple[bytes, bytes]:
        """Key and certificate made here (the authority's own, the operator's)."""
        key = x509.new_key()
        cert = self.issue(x509.make_csr(key, node_id, role, hosts), role, node_id, hours)
        return x509.key_to_pem(key), cert

    def write_operator(self) -> Path:
        """A client certificate for operator tools, renewed at every authority start."""
        out = self.state_dir / "operator"
        key_pem, cert_pem = self.issue_local("operator", "operator", [], OPERATOR_HOURS)
        write_secret(out / "key.pem", key_pem)
        write_public(out / "cert.pem", cert_pem)
        write_public(out / "ca.pem", self.cert_pem)
        return out

    # ---- enrolment tokens
    def _token_entry(self, token: str, *, retry: bool = False) -> dict[str, Any]:
        """The registered entry of ``token``, if it can still be used; raises Unauthenticated otherwise."""
        if not token or len(token) > 256:
            raise Unauthenticated("an enrolment token is required")
        digest = token_hash(token)
        for entry in read_tokens(self.state_dir / TOKENS_FILE):
            if not secrets.compare_digest(entry["sha256"], digest):
                continue
            if entry.get("expires") and dt.datetime.fromisoformat(entry["expires"]) <= x509.utcnow():
                raise Unauthenticated("this enrolment token has expired; ask the operator for a new one")
            if entry["node_id"] == ANY_NODE:
                if entry["role"] not in SHARED_TOKEN_ROLES:
                    raise Unauthenticated(
                        f"shared enrolment tokens are not accepted for {entry['role']} nodes; "
                        "they need their own one-time token"
                    )
                if not retry and self.shared_token_uses(token) >= int(entry.get("max_uses", 1)):
                    raise Unauthenticated(
                        "this shared enrolment token has been used the maximum number of times; "
                        "ask the operator for a new one"
                    )
                return entry
            used = self._db.execute("SELECT 1 FROM used_tokens WHERE sha256=?", (digest,)).fetchone()
            if used and not retry:
                raise Unauthenticated("this enrolment token was already used; ask the operator for a new one")
            return entry
        raise Unauthenticated("unknown enrolment token")

    def token_identity(self, token: str, node_id: str = "", key_id: str = "") -> tuple[str, str]:
        """(role, node id) a token was made for ("*" as node id for a shared role token); raises
        Unauthenticated if unknown, expired or used up (unless this is a retry of the same enrolment)."""
        entry = self._token_entry(token, retry=self.is_retry(token, node_id, key_id))
        return entry["role"], entry["node_id"]

    def shared_token_uses(self, token: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM shared_token_uses WHERE sha256=?", (token_hash(token),)
        ).fetchone()
        return int(row[0])

    def is_node_known(self, node_id: str) -> bool:
        """Whether ``node_id`` ever held a certificate or has a one-time token of its own."""
        if self._db.execute("SELECT 1 FROM certs WHERE node_id=? LIMIT 1", (node_id,)).fetchone():
            return True
        return any(e["node_id"] == node_id for e in read_tokens(self.state_dir / TOKENS_FILE))

    def is_retry(self, token: str, node_id: str, key_id: str) -> bool:
        """The same node asking again with the same token and the same key shortly after it enrolled:
        its first answer was lost (a timeout under load), so it gets its certificate again. A different
        key, node or token is never a retry."""
        if not key_id:
            return False
        row = self._db.execute(
            "SELECT token_sha256, key_sha256, enrolled_at FROM enrol_keys WHERE node_id=?", (node_id,)
        ).fetchone()
        if row is None or row[0] != token_hash(token) or not secrets.compare_digest(row[1], key_id):
            return False
        age = x509.utcnow() - dt.datetime.fromisoformat(row[2])
        return age <= ENROL_RETRY_WINDOW

    def _remember_key(self, token: str, node_id: str, key_id: str) -> None:
        if key_id:
            self._db.execute(
                "INSERT OR REPLACE INTO enrol_keys(node_id, token_sha256, key_sha256, enrolled_at) "
                "VALUES (?, ?, ?, ?)",
                (node_id, token_hash(token), key_id, x509.utcnow().isoformat()),
            )

    def consume_token(self, token: str, node_id: str, key_id: str = "") -> None:
        """Record one use of ``token`` by ``node_id`` for the key with fingerprint ``key_id``. A shared
        token only admits node ids that never enrolled before (node ids stay unique: it cannot take over
        an existing node's name). A retry of the same enrolment (same node, token and key, within
        ENROL_RETRY_WINDOW) is accepted without using the token again."""
        if self.is_retry(token, node_id, key_id):
            log.info("%s repeated its enrolment with the same key (its first answer was lost)", node_id)
            return
        entry = self._token_entry(token)
        with self._lock:
            if entry["node_id"] == ANY_NODE:
                if self.is_node_known(node_id):
                    raise NotAllowed(
                        f"{node_id} is already enrolled or reserved; a shared token only enrols new nodes"
                    )
                uses = self.shared_token_uses(token)
                if uses >= int(entry.get("max_uses", 1)):
                    raise Unauthenticated(
                        "this shared enrolment token has been used the maximum number of times; "
                        "ask the operator for a new one"
                    )
                try:
                    self._db.execute(
                        "INSERT INTO shared_token_uses(node_id, sha256, role, used_at) VALUES (?, ?, ?, ?)",
                        (node_id, token_hash(token), entry["role"], x509.utcnow().isoformat()),
                    )
                except sqlite3.IntegrityError:
                    raise NotAllowed(
                        f"{node_id} is already enrolled; a shared token only enrols new nodes"
                    ) from None
                self._remember_key(token, node_id, key_id)
                log.warning(
                    "NEW %s %s enrolled with the shared %s token (use %d of %d, token expires %s)",
                    entry["role"],
                    node_id,
                    entry["role"],
                    uses + 1,
                    int(entry.get("max_uses", 1)),
                    entry.get("expires", "never"),
                )
                return
            try:
                self._db.execute(
                    "INSERT INTO used_tokens(sha256, node_id, used_at) VALUES (?, ?, ?)",
                    (token_hash(token), node_id, x509.utcnow().isoformat()),
                )
            except sqlite3.IntegrityError:
                raise Unauthenticated(
                    "this enrolment token was already used; ask the operator for a new one"
                ) from None
            self._remember_key(token, node_id, key_id)

    def enrolments(self) -> list[dict[str, str]]:
        """Every enrolment made with a token (one-time and shared), oldest first: for operators and audits."""
        rows = self._db.execute(
            "SELECT node_id, 'one-time', used_at FROM used_tokens "
            "UNION ALL SELECT node_id, 'shared ' || role, used_at FROM shared_token_uses ORDER BY 3"
        ).fetchall()
        return [{"node_id": n, "token": k, "used_at": w} for n, k, w in rows]

    # ---- revocation
    def revoke_node(self, node_id: str, reason: str = "quarantined", by: str = "authority") -> frozenset[int]:
        """Revoke every unexpired certificate of ``node_id``; returns the serials revoked now. The reason
        and who asked are recorded (``revocations()``)."""
        now = x509.utcnow()
        with self._lock:
            self._db.execute(
                "INSERT INTO revocations(node_id, revoked_at, reason, by) VALUES (?, ?, ?, ?)",
                (node_id, now.isoformat(), reason, by),
            )
            rows = self._db.execute(
                "SELECT serial FROM certs WHERE node_id=? AND revoked_at IS NULL AND not_after>?",
                (node_id, now.isoformat()),
            ).fetchall()
            self._db.execute(
                "UPDATE certs SET revoked_at=? WHERE node_id=? AND revoked_at IS NULL",
                (now.isoformat(), node_id),
            )
        serials = frozenset(int(r[0]) for r in rows)
        if serials:
            log.warning("revoked %d certificate(s) of %s", len(serials), node_id)
            for hook in self.on_revoke:
                hook(serials)
        return serials

    def is_node_revoked(self, node_id: str) -> bool:
        """True if a certificate of ``node_id`` was revoked after its last release (if any): such a
        node may neither renew nor enrol again."""
        row = self._db.execute(
            "SELECT 1 FROM certs WHERE node_id=? AND revoked_at IS NOT NULL AND revoked_at > "
            "COALESCE((SELECT MAX(released_at) FROM releases WHERE node_id=?), '') LIMIT 1",
            (node_id, node_id),
        ).fetchone()
        return row is not None

    def release_node(self, node_id: str, reason: str) -> None:
        """Allow ``node_id`` to enrol again (with a new token). Its revoked certificates stay revoked."""
        with self._lock:
            self._db.execute(
                "INSERT INTO releases(node_id, released_at, reason) VALUES (?, ?, ?)",
                (node_id, x509.utcnow().isoformat(), reason),
            )

    def revocations(self) -> list[dict[str, str]]:
        rows = self._db.execute(
            "SELECT node_id, revoked_at, reason, by FROM revocations ORDER BY rowid"
        ).fetchall()
        return [{"node_id": n, "revoked_at": t, "reason": r, "by": b} for n, t, r, b in rows]

    def releases(self) -> list[dict[str, str]]:
        rows = self._db.execute("SELECT node_id, released_at, reason FROM releases ORDER BY rowid").fetchall()
        return [{"node_id": n, "released_at": t, "reason": r} for n, t, r in rows]

    def certificates(self) -> list[dict[str, Any]]:
        """Each node's newest certificate: node id, role, expiry (ISO, UTC) and whether it is revoked."""
        rows = self._db.execute(
            "SELECT node_id, role, not_after, revoked_at FROM certs c WHERE not_after = "
            "(SELECT MAX(not_after) FROM certs WHERE node_id = c.node_id) ORDER BY node_id"
        ).fetchall()
        return [{"node_id": n, "role": r, "expires": t, "revoked": w is not None} for n, r, t, w in rows]

    def shared_tokens(self) -> list[dict[str, Any]]:
        """Shared enrolment tokens (never the token itself): role, uses so far, allowed uses, expiry."""
        out = []
        for entry in read_tokens(self.state_dir / TOKENS_FILE):
            if entry["node_id"] != ANY_NODE:
                continue
            used = self._db.execute(
                "SELECT COUNT(*) FROM shared_token_uses WHERE sha256=?", (entry["sha256"],)
            ).fetchone()[0]
            out.append(
                {
                    "role": entry["role"],
                    "used": int(used),
                    "max_uses": int(entry.get("max_uses", 1)),
                    "expires": entry.get("expires", ""),
                }
            )
        return out

    def revoked(self) -> list[tuple[int, dt.datetime]]:
        now = x509.utcnow().isoformat()
        rows = self._db.execute(
            "SELECT serial, revoked_at FROM certs WHERE revoked_at IS NOT NULL AND not_after>?", (now,)
        ).fetchall()
        return [(int(s), dt.datetime.fromisoformat(w)) for s, w in rows]

    def crl_pem(self) -> bytes:
        return x509.make_crl(self.key, self.cert, self.revoked())


_CA_STORES: dict[Path, CAStore] = {}


def open_ca(state_dir: Path, cert_hours: float = 24.0) -> CAStore:
    """The process's CA store for ``state_dir`` (one object, shared by the server and the servicer)."""
    key = state_dir.resolve()
    if key not in _CA_STORES:
        _CA_STORES[key] = CAStore(state_dir, cert_hours=cert_hours)
    return _CA_STORES[key]


def close_ca(state_dir: Path) -> None:
    """Close and forget the CA store opened for ``state_dir`` (if any), e.g. before its files are handed
    to another process."""
    store = _CA_STORES.pop(state_dir.resolve(), None)
    if store is not None:
        store.close()


# ------------------------------------------------------------------------------------------ a node's TLS
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


def _set_default(tls: NodeTls) -> None:
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


# ------------------------------------------------------------------------------------------ setting up
def host_names(settings: Settings, role: str) -> list[str]:
    hosts = [settings.resolved_advertise_host(), "localhost", "127.0.0.1"]
    hosts += [h.strip() for h in settings.tls_hosts.split(",") if h.strip()]
    if role == "authority":
        hosts += ["authority", settings.authority.rpartition(":")[0]]
    return hosts


def enrol_address(settings: Settings) -> str:
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


def pinned_authority_key(settings: Settings) -> bytes | None:
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


async def ensure_identity(settings: Settings, role: str) -> NodeTls | None:
    """This node's TLS identity: made locally (authority), loaded from the state directory, or obtained by
    enrolling with HFL_ENROL_TOKEN. None when HFL_TLS=false."""
    if not settings.tls:
        return None
    node_id = settings.resolved_node_id()
    tls_dir = settings.state_dir / "tls"
    if role == "authority":
        ca = open_ca(settings.state_dir, settings.cert_hours)
        key_pem, cert_pem = ca.issue_local("authority", node_id, host_names(settings, role))
        tls = NodeTls(role, node_id, tls_dir, ca.cert_pem, key_pem, cert_pem)
        tls.save()
        write_public(tls_dir / "ca.pem", ca.cert_pem)
        tls.revoked.update(s for s, _ in ca.revoked())
        ca.on_revoke.append(tls.revoked.update)
        ca.write_operator()
        _set_default(tls)
        return tls
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
            _set_default(tls)
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
    _set_default(tls)
    return tls


def enrol_token_of(settings: Settings) -> str:
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


def _forget_used_token(settings: Settings) -> None:
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
    # authority by a public name or address that no certificate lists (pki.Peer).
    options = _peer_options(None, AUTHORITY)
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
async def maintain(tls: NodeTls, settings: Settings) -> None:
    """Background upkeep while a server runs: renew the certificate before it expires, refresh the
    revocation list (the authority itself is the only one that revokes: it learns its revocations at once
    through CAStore.on_revoke). Failures are logged and retried; they never stop the service."""
    next_crl = 0.0
    loop = asyncio.get_running_loop()
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
                    log.warning("revocation list: %d certificate(s) revoked", len(serials))
                tls.revoked.update(serials)
                next_crl = loop.time() + settings.crl_refresh_s
        except (grpc.aio.AioRpcError, x509.CertificateError, ConfigError, NotAllowed) as e:
            detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            log.info("certificate upkeep will retry: %s", detail)
        except Exception:
            log.exception("certificate upkeep failed; will retry")
        await asyncio.sleep(min(5.0, settings.crl_refresh_s))


async def renew(tls: NodeTls, settings: Settings) -> None:
    key = x509.new_key()
    csr = x509.make_csr(key, tls.node_id, tls.role, host_names(settings, tls.role))
    if tls.role == "authority":
        cert_pem = open_ca(settings.state_dir).issue(csr, "authority", tls.node_id)
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


# ------------------------------------------------------------------------------------------ client tools
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


def _peer_options(options: list[tuple[str, Any]] | None, peer: Peer | None) -> list[tuple[str, Any]]:
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
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=_peer_options(options, peer))


def sync_channel(
    address: str, tls: NodeTls | None, options: list[tuple[str, Any]] | None = None, peer: Peer | None = None
) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.channel_credentials(), options=_peer_options(options, peer))
