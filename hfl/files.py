"""State on disk is private to the service: folders 0700, databases 0600.

A node's state folder holds its identity key, its certificates and SQLite databases (the ledger, the
registry, the privacy ledger, the certificate database). Other local users have no business reading
them: who took part in which round and how much privacy each site has spent are sensitive too.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("hfl.files")

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it readable by this user only."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _restrict(path, DIR_MODE)
    return path


def private_db(path: Path) -> str:
    """The path of a SQLite database, created empty with mode 0600 if missing (SQLite gives its journal
    and WAL files the database's mode) and narrowed to 0600 if it was wider. For sqlite3.connect."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.close(fd)
    _restrict(path, FILE_MODE)
    return str(path)


def _restrict(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        try:
            os.chmod(path, current & mode)
        except PermissionError:
            log.warning(
                "%s is readable by other users and is not ours to change (owner: uid %d)",
                path,
                path.stat().st_uid,
            )


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
