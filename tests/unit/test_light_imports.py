"""What a service imports at start: the fog and the validator never account privacy, so loading their
settings must not pull in dp-accounting and SciPy (about 70 MB and a second of start-up each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_a_fog_starts_without_the_privacy_accountant() -> None:
    loaded = _loaded_after("import services.fog.main")
    assert "hfl.rpc.settings" in loaded  # the check sees what a fog really imports
    assert not {"dp_accounting", "scipy", "hfl.privacy.accountant"} & loaded


def test_the_privacy_names_still_load_on_first_use() -> None:
    loaded = _loaded_after("from hfl.privacy import compute_epsilon")
    assert "dp_accounting" in loaded
