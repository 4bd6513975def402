"""The authority's enrolment tokens: ``<authority state>/enrol_tokens.json`` holds the SHA-256 hash of each
token with the role and node id it may enrol as (written by ``hfl demo``, ``hfl provision`` or
``hfl enrol-token``; the authority re-reads it on every enrolment). The tokens themselves are never stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

from hfl.crypto import x509
from hfl.errors import ConfigError
from hfl.files import write_secret

TOKENS_FILE = "enrol_tokens.json"


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
