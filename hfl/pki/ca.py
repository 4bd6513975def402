"""The authority's certificate authority: ``<state>/ca/ca.key`` (0600), ``<state>/ca/ca.pem`` (the trust
root to hand out), ``<state>/ca/ca.db`` (issued certificates, used tokens, revocations; WAL,
synchronous=FULL) and ``<state>/operator/`` (a client certificate for operator tools: ``hfl status``, the
demo's progress display, tests).

Pure certificate logic is in hfl.crypto.x509, the token file in hfl.pki.tokens; the policy of who may
enrol or renew is the authority's (services/authority/enrol.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hfl.crypto import x509
from hfl.errors import NotAllowed, Unauthenticated
from hfl.files import private_db, write_public, write_secret
from hfl.pki.tokens import ANY_NODE, SHARED_TOKEN_ROLES, TOKENS_FILE, read_tokens, token_hash

log = logging.getLogger("hfl.pki")

OPERATOR_HOURS = 24.0 * 30
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
