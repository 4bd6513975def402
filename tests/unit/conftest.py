"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hfl.oplog import OperatorLog
from hfl.pki.ca import close_ca
from hfl.rpc.settings import Settings
from services.authority.enrol import CertificateService


class EnrolAuthority(CertificateService):
    """The authority's enrolment service alone, with its CA in a temporary state folder."""

    def __init__(self, state: Path) -> None:
        self.settings = Settings(tls=True, state_dir=state)
        self.quarantined: frozenset[str] = frozenset()
        self.oplog = OperatorLog(state / "operator.db")


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[EnrolAuthority]:
    state = tmp_path / "authority"
    a = EnrolAuthority(state)
    yield a
    close_ca(state)
