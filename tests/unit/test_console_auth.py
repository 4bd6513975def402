"""The console's login: hashed password, constant-time check, lock-out, refusal without a password."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from hfl.console import auth
from hfl.console.auth import Login, NoPassword, PasswordHash, password_from_env


def test_password_is_kept_only_as_a_salted_hash() -> None:
    a, b = PasswordHash.of("s3cret"), PasswordHash.of("s3cret")
    assert a.salt != b.salt and a.digest != b.digest
    assert b"s3cret" not in a.digest and b"s3cret" not in a.salt
    assert a.matches("s3cret") and not a.matches("s3cret ") and not a.matches("")


def test_comparison_is_constant_time() -> None:
    h = PasswordHash.of("pw")
    with mock.patch.object(auth.hmac, "compare_digest", wraps=auth.hmac.compare_digest) as cmp:
        assert h.matches("pw")
        assert not h.matches("nope")
    assert cmp.call_count == 2


def test_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    with pytest.raises(NoPassword, match="HFL_CONSOLE_PASSWORD"):
        password_from_env({})
    with pytest.raises(NoPassword, match="could not read"):
        password_from_env({auth.PASSWORD_FILE_ENV: str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(NoPassword, match="HFL_CONSOLE_PASSWORD"):
        password_from_env({auth.PASSWORD_FILE_ENV: str(empty)})


def test_password_from_variable_or_file(tmp_path: Path) -> None:
    assert password_from_env({auth.PASSWORD_ENV: "one"}).matches("one")
    secret = tmp_path / "pw"
    secret.write_text("two\n")
    assert password_from_env({auth.PASSWORD_FILE_ENV: str(secret)}).matches("two")


def test_lock_out_after_five_failures_then_unlock() -> None:
    now = [1000.0]
    login = Login(PasswordHash.of("right"), clock=lambda: now[0], lockout_seconds=300)
    for _ in range(4):
        assert login.attempt("wrong") == (False, "Wrong password.")
    ok, msg = login.attempt("wrong")
    assert (ok, msg) == (False, "Too many wrong passwords. The console is locked for 5 minutes.")
    ok, msg = login.attempt("right")  # even the right password is refused while locked
    assert (ok, msg) == (False, "Too many wrong passwords. Try again in 5 minutes.")
    now[0] += 250
    assert login.attempt("right") == (False, "Too many wrong passwords. Try again in 1 minute.")
    now[0] -= 250
    now[0] += 301
    assert login.attempt("right") == (True, "Signed in.")


def test_success_resets_the_failure_count() -> None:
    login = Login(PasswordHash.of("right"))
    for _ in range(4):
        login.attempt("wrong")
    assert login.attempt("right")[0]
    for _ in range(4):
        assert login.attempt("wrong") == (False, "Wrong password.")
    assert login.locked_for() == 0
