"""The console's login: one password, kept only as a salted scrypt hash, with a lock-out.

The password comes from HFL_CONSOLE_PASSWORD or from the file named by HFL_CONSOLE_PASSWORD_FILE; the
console refuses to start without one. Nothing here imports Streamlit, so it is tested on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PASSWORD_ENV = "HFL_CONSOLE_PASSWORD"
PASSWORD_FILE_ENV = "HFL_CONSOLE_PASSWORD_FILE"
MAX_FAILURES = 5
LOCKOUT_SECONDS = 300.0

# scrypt cost: n=2**14, r=8, p=1 (16 MiB, a few tens of milliseconds per try).
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32


class NoPassword(Exception):
    """The console was started without a password."""


def _derive(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)


@dataclass(frozen=True)
class PasswordHash:
    salt: bytes
    digest: bytes

    @classmethod
    def of(cls, password: str) -> PasswordHash:
        salt = secrets.token_bytes(16)
        return cls(salt=salt, digest=_derive(password, salt))

    def matches(self, password: str) -> bool:
        """Constant-time comparison of the derived key."""
        return hmac.compare_digest(_derive(password, self.salt), self.digest)


def password_from_env(env: Mapping[str, str] | None = None) -> PasswordHash:
    """Read the password once, hash it and forget the plain text; NoPassword (one sentence) if none."""
    env = os.environ if env is None else env
    plain = env.get(PASSWORD_ENV, "")
    path = env.get(PASSWORD_FILE_ENV, "")
    if not plain and path:
        try:
            plain = Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise NoPassword(f"The console could not read its password file {path} ({e.strerror}).") from e
    if not plain:
        raise NoPassword(
            f"The console needs a password: set {PASSWORD_ENV}, or {PASSWORD_FILE_ENV} to a file holding it."
        )
    return PasswordHash.of(plain)


def _minutes(n: int) -> str:
    return "1 minute" if n == 1 else f"{n} minutes"


@dataclass
class Login:
    """Checks passwords; after MAX_FAILURES wrong ones in a row, refuses every try for LOCKOUT_SECONDS."""

    expected: PasswordHash
    clock: Callable[[], float] = time.monotonic
    max_failures: int = MAX_FAILURES
    lockout_seconds: float = LOCKOUT_SECONDS
    _failures: int = 0
    _locked_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def locked_for(self) -> float:
        """Seconds left of the lock-out (0 when not locked)."""
        return max(0.0, self._locked_until - self.clock())

    def attempt(self, password: str) -> tuple[bool, str]:
        """(accepted, a plain sentence for the person at the screen)."""
        with self._lock:
            left = self.locked_for()
            if left > 0:
                return False, f"Too many wrong passwords. Try again in {_minutes(math.ceil(left / 60))}."
            if self.expected.matches(password):
                self._failures = 0
                return True, "Signed in."
            self._failures += 1
            if self._failures >= self.max_failures:
                self._failures = 0
                self._locked_until = self.clock() + self.lockout_seconds
                minutes = _minutes(math.ceil(self.lockout_seconds / 60))
                return False, f"Too many wrong passwords. The console is locked for {minutes}."
            return False, "Wrong password."
