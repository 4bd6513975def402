"""`hfl site check` against a running federation: a ready site passes; each thing a hospital IT person can
get wrong (wrong authority address, no token, unreadable data, no fog reachable) fails with a plain
sentence that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hfl.demo import Federation, Proc
from hfl.pki.tokens import add_enrol_token
from hfl.rpc.settings import Settings
from hfl.site import run_checks
from tests.integration.helpers import start_federation, wait_for_round

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Federation, dict[str, Proc], Path]]:
    out = tmp_path_factory.mktemp("site")
    fed, procs = start_federation(out, facilities=3, fogs=1, validators=1, rounds=1)
    try:
        wait_for_round(procs["leader"].info["address"], 1)
        yield fed, procs, out
    finally:
        fed.stop_all()


def _csv(path: Path, rows: int = 60) -> Path:
    lines = ["age,blood_pressure,outcome"]
    lines += [f"{40 + i % 30},{110 + (i * 7) % 40},{i % 2}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _site_env(fed: Federation, out: Path, node: str, **extra: str) -> dict[str, str]:
    return {
        "HFL_NODE_ID": node,
        "HFL_STATE_DIR": str(out / "state" / node),
        "HFL_AUTHORITY": fed.common_env["HFL_AUTHORITY"],
        "HFL_ENROL": fed.common_env["HFL_ENROL"],
        "HFL_TLS_CA": fed.common_env["HFL_TLS_CA"],
        **extra,
    }


def _settings(env: dict[str, str]) -> Settings:
    return Settings(role="facility", **{k.removeprefix("HFL_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]


def _by_what(findings: list) -> dict[str, tuple[str, str]]:  # type: ignore[type-arg]
    return {f.what: (f.status, f.detail) for f in findings}


def test_a_ready_site_passes_every_check(
    federation: tuple[Federation, dict[str, Proc], Path], tmp_path: Path
) -> None:
    fed, _procs, out = federation
    data = _csv(tmp_path / "patients.csv")
    env = _site_env(fed, out, "facility-01", HFL_DATASET=f"csv:{data}", HFL_LABEL="outcome")
    found = _by_what(run_checks(_settings(env)))
    assert {k: v[0] for k, v in found.items()} == {
        "root certificate": "ok",
        "this site's certificate": "ok",
        "authority": "ok",
        "fog fog-1": "ok",
        "patient data": "ok",
        "clock": "ok",
    }, found
    train, _, rest = found["patient data"][1].partition(" training and ")
    assert int(train) + int(rest.split()[0]) == 60  # every row of the file, split into training and test
    # the command itself, as a hospital IT person runs it (same settings, from the environment)
    done = subprocess.run(
        [sys.executable, "-m", "hfl.cli", "site", "check"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "This site is ready to join the federation." in done.stdout


def test_a_new_site_with_its_token_is_ready_to_enrol_and_the_token_is_not_used(
    federation: tuple[Federation, dict[str, Proc], Path], tmp_path: Path
) -> None:
    fed, _procs, out = federation
    token = add_enrol_token(out / "state" / "authority", "facility", "site-new")
    env = _site_env(fed, tmp_path, "site-new", HFL_ENROL_TOKEN=token)
    found = _by_what(run_checks(_settings(env)))
    assert (
        found["this site's certificate"][0] == "ok"
        and "enrols as site-new" in found["this site's certificate"][1]
    )
    assert found["authority"][0] == "ok" and "enrolment port" in found["authority"][1]
    assert found["fogs"][0] == "warn" and found["clock"][0] == "warn"
    assert found["patient data"][0] == "warn"  # synthetic: not the hospital's own patients
    assert not (tmp_path / "state" / "site-new" / "tls" / "cert.pem").exists()  # nothing enrolled


@pytest.mark.parametrize(
    ("change", "what", "words"),
    [
        ({"HFL_AUTHORITY": "127.0.0.1:1"}, "authority", "did not answer"),
        (
            {"HFL_DATASET": "csv:/nonexistent/patients.csv", "HFL_LABEL": "outcome"},
            "patient data",
            "not found",
        ),
    ],
)
def test_what_a_site_gets_wrong_fails_in_plain_words(
    federation: tuple[Federation, dict[str, Proc], Path], change: dict[str, str], what: str, words: str
) -> None:
    fed, _procs, out = federation
    found = _by_what(run_checks(_settings(_site_env(fed, out, "facility-02", **change)), timeout=2))
    status, detail = found[what]
    assert status == "FAIL" and words in detail, detail


def test_no_certificate_and_no_token_fails(
    federation: tuple[Federation, dict[str, Proc], Path], tmp_path: Path
) -> None:
    fed, _procs, _out = federation
    found = _by_what(run_checks(_settings(_site_env(fed, tmp_path, "site-x"))))
    status, detail = found["this site's certificate"]
    assert status == "FAIL" and "HFL_ENROL_TOKEN" in detail


def test_an_unreachable_fog_fails(
    federation: tuple[Federation, dict[str, Proc], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the hospital firewall does not let the site connect out to a fog."""
    from hfl import site

    fed, _procs, out = federation
    real = site._reachable
    monkeypatch.setattr(
        site,
        "_reachable",
        lambda address, creds, peer, timeout: (
            real("127.0.0.1:1", creds, peer, 1.0)
            if peer.role == "fog"
            else real(address, creds, peer, timeout)
        ),
    )
    found = _by_what(run_checks(_settings(_site_env(fed, out, "facility-03"))))
    status, detail = found["fog fog-1"]
    assert status == "FAIL" and "connect out" in detail
