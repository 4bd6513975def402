"""`hfl provision`: hand out the trust root and enrolment tokens of a federation deployed in containers.

Run once before the authority starts (the compose file's one-shot ``provision`` service, which re-runs
harmlessly on every ``up``). With the volumes of the authority and of each fixed node mounted, it

* makes the federation's certificate authority in the authority's state folder (if it does not exist);
* gives every fixed node (leader, fogs, validators) the root certificate ``<state>/tls/ca.pem`` and a
  one-time enrolment token bound to its role and node id in ``<state>/tls/enrol-token`` (0600). The node
  reads it with ``HFL_ENROL_TOKEN_FILE`` and deletes it once enrolled. Nodes that already hold a
  certificate, or still have an unused token, are left alone;
* writes the root certificate and one *shared facility token* to a trust folder that only facility
  containers mount (read-only): ``ca.pem`` and ``facility-token``. The shared token enrols new facilities
  only (each use needs a node id never seen before), at most ``--facility-uses`` times, until it expires
  after ``--facility-hours``; a fresh one is made when the old one has expired or is used up.

The authority's own folder (with ``ca.key``) is never given to any other container. Idempotent.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hfl.crypto import x509
from hfl.errors import ConfigError, Unauthenticated
from hfl.files import private_dir, write_public, write_secret
from hfl.pki.ca import CAStore, close_ca, open_ca
from hfl.pki.tokens import TOKENS_FILE, add_enrol_token, add_role_token
from hfl.rpc.enrolment import pin_authority_key
from hfl.rpc.node import load_identity

log = logging.getLogger("hfl.provision")

TOKEN_FILE = "enrol-token"
FACILITY_TOKEN_FILE = "facility-token"
FIXED_ROLES = ("leader", "fog", "validator")


@dataclass(frozen=True)
class FixedNode:
    role: str
    node_id: str
    state_dir: Path


def parse_node(text: str) -> FixedNode:
    """ROLE:NODE_ID=STATE_DIR, e.g. ``fog:fog-1=/provision/fog-1``."""
    who, sep, folder = text.partition("=")
    role, sep2, node_id = who.partition(":")
    if not sep or not sep2 or not folder:
        raise ConfigError(
            f"--node must look like ROLE:NODE_ID=STATE_DIR (e.g. fog:fog-1=/provision/fog-1), got {text!r}"
        )
    if role not in FIXED_ROLES:
        raise ConfigError(f"--node {text!r}: the role must be one of {', '.join(FIXED_ROLES)}")
    try:
        x509.check_node_id(node_id)
    except x509.CertificateError as e:
        raise ConfigError(f"--node {text!r}: {e}") from None
    return FixedNode(role, node_id, Path(folder))


def parse_owner(text: str) -> tuple[int, int]:
    uid, sep, gid = text.partition(":")
    if not uid.isdigit() or (sep and not gid.isdigit()):
        raise ConfigError(f"--owner must look like UID:GID with numbers (e.g. 10001:10001), got {text!r}")
    return int(uid), int(gid or uid)


def _usable(ca: CAStore, token_path: Path) -> bool:
    """Whether the token in ``token_path`` can still enrol someone."""
    if not token_path.is_file():
        return False
    try:
        ca.token_identity(token_path.read_text().strip())
    except Unauthenticated:
        return False
    return True


def _chown_tree(folder: Path, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    for root, dirs, files in os.walk(folder):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, *owner, follow_symlinks=False)


def provision(
    authority_state: Path,
    nodes: list[FixedNode],
    facility_trust: Path | None,
    *,
    facility_uses: int = 25,
    facility_hours: float = 24.0,
    owner: tuple[int, int] | None = None,
) -> dict[str, str]:
    """Do the provisioning; returns what was done per node id / "facilities", in plain words."""
    authority_state.mkdir(parents=True, exist_ok=True)
    # The authority's signing key is made here, before anyone can ask for it, so every node gets it
    # pinned at set-up beside the root certificate (the authority loads the same key when it starts).
    authority_key = load_identity(authority_state).public_bytes
    ca = open_ca(authority_state)
    done: dict[str, str] = {}
    try:
        for node in nodes:
            tls_dir = node.state_dir / "tls"
            write_public(tls_dir / "ca.pem", ca.cert_pem)
            pin_authority_key(tls_dir, authority_key)
            token_path = tls_dir / TOKEN_FILE
            if (tls_dir / "cert.pem").exists():
                done[node.node_id] = "has a certificate"
            elif _usable(ca, token_path):
                done[node.node_id] = "has an unused one-time token"
            else:
                token = add_enrol_token(authority_state, node.role, node.node_id)
                write_secret(token_path, token.encode())
                done[node.node_id] = "new one-time token"
            _chown_tree(node.state_dir, owner)
        if facility_trust is not None:
            write_public(facility_trust / "ca.pem", ca.cert_pem)
            pin_authority_key(facility_trust, authority_key)
            token_path = facility_trust / FACILITY_TOKEN_FILE
            if _usable(ca, token_path):
                done["facilities"] = "shared facility token still valid"
            else:
                token = add_role_token(authority_state, "facility", facility_uses, facility_hours)
                write_secret(token_path, token.encode())
                done["facilities"] = (
                    f"new shared facility token ({facility_uses} enrolments, expires in {facility_hours:g} h)"
                )
            os.chmod(facility_trust, 0o755)
            _chown_tree(facility_trust, owner)
        _chown_tree(authority_state, owner)
        os.chmod(authority_state, 0o750)
    finally:
        close_ca(authority_state)
    return done


def cmd_provision(args: argparse.Namespace) -> int:
    nodes = [parse_node(n) for n in args.node]
    if len({n.node_id for n in nodes}) != len(nodes):
        raise ConfigError("each --node must have its own node id")
    owner = parse_owner(args.owner) if args.owner else None
    done = provision(
        Path(args.authority_state),
        nodes,
        Path(args.facility_trust) if args.facility_trust else None,
        facility_uses=args.facility_uses,
        facility_hours=args.facility_hours,
        owner=owner,
    )
    for who, what in done.items():
        print(f"{who}: {what}")
    return 0


# Where each file of a provisioned authority lives: its name in an HFL_CA_FROM folder (flat, as Docker
# mounts secrets in /run/secrets) and its place in the authority's state folder.
CA_FROM_FILES = {
    "ca.pem": Path("ca") / "ca.pem",
    "ca.key": Path("ca") / "ca.key",
    "identity.key": Path("identity.key"),
    "enrol_tokens.json": Path(TOKENS_FILE),
}


def install_authority_state(source: Path, state_dir: Path) -> str:
    """Start the authority from a certificate authority provisioned elsewhere (HFL_CA_FROM).

    On the first start (no ``ca/ca.pem`` in the state folder) the files are copied in (0600). Later starts
    copy nothing (the tokens file has grown since) but refuse a state folder that holds another root:
    secrets of one federation deployed over the volume of another. Returns what was done, in plain words.
    """
    installed = state_dir / CA_FROM_FILES["ca.pem"]
    given = source / "ca.pem"
    if installed.is_file():
        if given.is_file() and given.read_bytes() != installed.read_bytes():
            raise ConfigError(
                f"HFL_CA_FROM: the root certificate in {source} is not the one this authority's state folder "
                f"({state_dir}) already holds; it belongs to another federation. Deploy the secrets made for "
                "this one, or start with an empty state volume"
            )
        return f"the certificate authority in {state_dir} is the one in {source}"
    missing = [name for name in CA_FROM_FILES if not (source / name).is_file()]
    if missing:
        raise ConfigError(
            f"HFL_CA_FROM: {source} lacks {', '.join(missing)} (made by `hfl provision`, "
            "deploy/central/swarm-secrets.sh); the authority cannot start without its certificate authority"
        )
    private_dir(state_dir / "ca")
    for name, place in CA_FROM_FILES.items():
        if name != "ca.pem":  # written last: its presence marks a complete installation
            write_secret(state_dir / place, (source / name).read_bytes())
    write_public(installed, given.read_bytes())
    return f"installed the federation's certificate authority from {source} into {state_dir}"
