"""The authority's signing key is pinned at set-up, beside the root certificate, not learnt from whoever
answers Register: provisioning writes it for every node, the demo's authority beside the root it hands
out, and a node refuses an answer naming another key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfl.crypto.signing import SigningKey
from hfl.errors import ConfigError
from hfl.provision import FixedNode, provision
from hfl.rpc.enrolment import AUTHORITY_KEY_FILE, check_authority_key, pinned_authority_key
from hfl.rpc.node import load_identity
from hfl.rpc.settings import Settings


def test_a_register_answer_with_another_key_is_refused() -> None:
    real, fake = SigningKey.generate().public_bytes, SigningKey.generate().public_bytes
    assert check_authority_key(real, real) == real
    assert check_authority_key(fake, None) == fake  # a set-up from before pinning
    with pytest.raises(ConfigError, match="different from the one pinned"):
        check_authority_key(fake, real)


def test_provisioning_pins_the_key_the_authority_will_use(tmp_path: Path) -> None:
    auth, trust = tmp_path / "authority", tmp_path / "trust"
    nodes = [
        FixedNode("leader", "leader", tmp_path / "leader"),
        FixedNode("fog", "fog-1", tmp_path / "fog-1"),
    ]
    provision(auth, nodes, trust)
    key = load_identity(auth).public_bytes  # what `hfl serve authority` loads from its state folder
    for node in nodes:
        s = Settings(state_dir=node.state_dir)
        assert pinned_authority_key(s) == key
    facility = Settings(state_dir=tmp_path / "f1", tls_ca=str(trust / "ca.pem"))  # read beside HFL_TLS_CA
    assert pinned_authority_key(facility) == key
    assert pinned_authority_key(Settings(state_dir=tmp_path / "nothing")) is None


def test_a_damaged_pin_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / AUTHORITY_KEY_FILE).write_text("not hex")
    with pytest.raises(ConfigError, match="does not hold the authority's key"):
        pinned_authority_key(Settings(state_dir=tmp_path))
